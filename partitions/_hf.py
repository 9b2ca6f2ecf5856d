"""Bridge between numpy label arrays and flwr-datasets partitioners.

flwr-datasets partitioners consume a Hugging Face ``datasets.Dataset`` and hand back row
subsets; an ``idx`` column carried through ``select`` recovers the original example indices
through the public API only. Imports are deferred because ``flwr_datasets`` takes ~2 s to
import and most callers (CLI start-up, iid/full partitions) never need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

LABEL_COLUMN = "label"
INDEX_COLUMN = "idx"


def labels_dataset(labels: np.ndarray) -> datasets.Dataset:
    """Wrap labels in an in-memory Dataset with an ``idx`` column holding each row's position."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            LABEL_COLUMN: np.asarray(labels, dtype=np.int64),
            INDEX_COLUMN: np.arange(len(labels), dtype=np.int64),
        }
    )


def partition_indices(
    partitioner: Partitioner, dataset: datasets.Dataset, num_clients: int
) -> list[np.ndarray]:
    """Assign ``dataset`` to a fresh ``partitioner`` and return each partition's sorted indices.

    The arrow format is used to read the column because the numpy formatter is ~15x slower.
    """
    partitioner.dataset = dataset
    parts = []
    for client in range(num_clients):
        column = partitioner.load_partition(client).with_format("arrow")[INDEX_COLUMN]
        parts.append(np.sort(np.asarray(column, dtype=np.int64)))
    return parts
