"""Who holds which data: the dataset, its partition over clients, and the server's data access.

Every process (the server and each simulated client) rebuilds the same partition from the config
and seed, so no data is ever shipped between processes. Results are cached per process.

Privacy boundary
----------------
A client reads only its own part (:meth:`Federation.client_train`, :meth:`Federation.client_test`).
The server reads client data through exactly one path, :func:`server_sample`, and only to measure
barriers (``split = "train"``: the union of the participating clients' local training data, the
global task of BARRIERS.md) and to evaluate on the global test set (``split = "test"``). Under
Flower's Deployment Engine no client data exists on the server; there the barrier data must be a
server-side validation set (``split = "test"``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.config import DataConfig
from fedbarrier.data.datasets import (
    DatasetSplits,
    ImageDataset,
    SyntheticSpec,
    clear_dataset_cache,
    load_dataset,
)
from fedbarrier.data.shared import read_parts, read_splits, write_parts, write_splits
from fedbarrier.errors import UserError
from fedbarrier.seeds import Stream, derive_seed
from partitions import PartitionStats, partition_labels, partition_stats, split_train_test


@dataclass(frozen=True)
class Federation:
    """The dataset and each client's local train/test indices into its training split."""

    splits: DatasetSplits
    train_parts: list[np.ndarray]
    test_parts: list[np.ndarray]

    @property
    def num_clients(self) -> int:
        return len(self.train_parts)

    @property
    def num_classes(self) -> int:
        return self.splits.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.splits.train.input_shape

    def client_train(self, client: int) -> ImageDataset:
        return self.splits.train.subset(self.train_parts[client])

    def client_test(self, client: int) -> ImageDataset:
        return self.splits.train.subset(self.test_parts[client])

    def stats(self) -> PartitionStats:
        labels = self.splits.train.y.numpy()
        return partition_stats(labels, self.train_parts, self.test_parts, self.num_classes)


def synthetic_spec(cfg: DataConfig, seed: int) -> SyntheticSpec:
    c, h, w = cfg.synthetic_shape
    return SyntheticSpec(num_classes=cfg.synthetic_classes, input_shape=(c, h, w),
                         train_size=cfg.synthetic_train_size, test_size=cfg.synthetic_test_size,
                         seed=seed, noise=cfg.synthetic_noise)


_shared_folder: Path | None = None


def use_shared_data(folder: Path | None) -> None:
    """Let this process map the dataset another process wrote to ``folder`` with
    :func:`share_data` instead of loading it (see :mod:`fedbarrier.data.shared`); None: load.

    Only where the data comes from changes, never what it is: the folder's manifest must name the
    same dataset, or the process loads it itself.
    """
    global _shared_folder
    _shared_folder = folder


@contextmanager
def reading_shared_data(folder: Path) -> Iterator[None]:
    """Inside the block this process maps the dataset written to ``folder`` too, and drops its
    own in-memory copy: the driver of a simulation then holds only the pages it reads (the
    server's samples), not the whole set (2 million generated images at 100,000 clients, 6 GiB).
    After the block it loads as before (the folder is a run's scratch, removed with it)."""
    global _shared_folder
    previous = _shared_folder
    _shared_folder = folder
    _forget_loaded()
    try:
        yield
    finally:
        _shared_folder = previous
        _forget_loaded()


def _forget_loaded() -> None:
    federation.cache_clear()
    clear_dataset_cache()


def share_data(cfg: DataConfig, seed: int, folder: Path) -> None:
    """Write this process's copy of the dataset and its partition to ``folder`` for
    :func:`use_shared_data`."""
    fed = federation(cfg, seed)
    write_splits(fed.splits, folder, _dataset_key(cfg, seed))
    write_parts(fed.train_parts, fed.test_parts, folder, _federation_key(cfg, seed))


def _federation_key(cfg: DataConfig, seed: int) -> dict[str, Any]:
    """Everything the partition depends on: the whole data config and the seed."""
    return {"data": asdict(cfg), "seed": seed}


def _spec(cfg: DataConfig, seed: int) -> SyntheticSpec | None:
    return synthetic_spec(cfg, seed) if cfg.dataset == "synthetic" else None


def _dataset_key(cfg: DataConfig, seed: int) -> dict[str, Any]:
    """Everything the loaded (unpartitioned) dataset depends on."""
    spec = _spec(cfg, seed)
    return {"dataset": cfg.dataset, "data_dir": cfg.data_dir,
            "synthetic": asdict(spec) if spec is not None else None}


def _load(cfg: DataConfig, seed: int) -> DatasetSplits:
    if _shared_folder is not None:
        splits = read_splits(_shared_folder, _dataset_key(cfg, seed))
        if splits is not None:
            return splits
    return load_dataset(cfg.dataset, cfg.data_dir or None, download=cfg.download,
                        synthetic=_spec(cfg, seed))


def _subset(data: ImageDataset, size: int, seed: int, kind: int) -> ImageDataset:
    """A seeded subset of ``size`` examples (in their original order); all for 0 or more."""
    if size == 0 or size >= len(data):
        return data
    rng = np.random.default_rng(derive_seed(seed, Stream.SUBSET, kind))
    return data.subset(np.sort(rng.choice(len(data), size=size, replace=False)))


@lru_cache(maxsize=4)
def federation(cfg: DataConfig, seed: int) -> Federation:
    """Load the dataset and partition it; the same (cfg, seed) gives the same partition anywhere."""
    splits = _load(cfg, seed)
    if cfg.train_size or cfg.test_size:
        splits = replace(splits, train=_subset(splits.train, cfg.train_size, seed, 0),
                         test=_subset(splits.test, cfg.test_size, seed, 1))
    shared = read_parts(_shared_folder, _federation_key(cfg, seed)) if _shared_folder else None
    if shared is not None:  # the driver's partition, checked when it was made
        return Federation(splits=splits, train_parts=shared[0], test_parts=shared[1])
    labels = splits.train.y.numpy()
    if cfg.num_clients > len(labels):
        raise UserError(f"data.num_clients = {cfg.num_clients} exceeds the {len(labels)} training "
                        f"examples of {cfg.dataset}")
    parts = partition_labels(labels, cfg.num_clients, cfg.partition,
                             seed=derive_seed(seed, Stream.PARTITION), alpha=cfg.alpha,
                             min_partition_size=cfg.min_partition_size,
                             classes_per_client=cfg.classes_per_client)
    train_parts, test_parts = split_train_test(parts, cfg.test_fraction,
                                               seed=derive_seed(seed, Stream.SPLIT))
    empty = [k for k, part in enumerate(train_parts) if len(part) == 0]
    if empty:
        raise UserError(f"client {empty[0]} gets no training examples with data.partition = "
                        f"{cfg.partition!r} and data.num_clients = {cfg.num_clients}; use fewer "
                        "clients or raise data.min_partition_size")
    return Federation(splits=splits, train_parts=train_parts, test_parts=test_parts)


def server_sample(
    fed: Federation, split: str, clients: Sequence[int], n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's only access to data: a fixed sample of ``n`` examples (0 = all).

    ``split = "train"``: the union of ``clients``' local training data; ``"test"``: the global
    test set. The sample depends only on (seed, split, clients), so every model of a measurement
    sees the same examples, and so does every round with the same participants.
    """
    if split == "train":
        pool = np.unique(np.concatenate([fed.train_parts[c] for c in clients]))
        source = fed.splits.train
    elif split == "test":
        pool = np.arange(len(fed.splits.test))
        source = fed.splits.test
    else:
        raise ValueError(f"unknown split {split!r}")
    if 0 < n < len(pool):
        rng = np.random.default_rng(derive_seed(seed, Stream.BARRIER_SAMPLE,
                                                0 if split == "train" else 1))
        pool = np.sort(rng.choice(pool, size=n, replace=False))
    return source.rows(torch.as_tensor(pool, dtype=torch.long))


def client_sample(fed: Federation, client: int, split: str, n: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's own data for its local barriers: ``"local-train"`` its training part,
    ``"local-test"`` its local test part, as a seeded sample of ``n`` examples (0 = all), fixed
    per (seed, client, split) so that every round measures on the same examples."""
    if split == "local-train":
        pool, kind = fed.train_parts[client], 0
    elif split == "local-test":
        pool, kind = fed.test_parts[client], 1
    else:
        raise ValueError(f"unknown local split {split!r}")
    pool = np.asarray(pool)
    if 0 < n < len(pool):
        rng = np.random.default_rng(derive_seed(seed, Stream.LOCAL_SAMPLE, client, kind))
        pool = np.sort(rng.choice(pool, size=n, replace=False))
    return fed.splits.train.rows(torch.as_tensor(pool, dtype=torch.long))
