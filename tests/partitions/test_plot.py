"""Partition plot writes a real PNG."""

from pathlib import Path

import numpy as np

from fedbarrier.plots.partitions import plot_partition_counts
from partitions import partition_stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_non_empty_png(tmp_path: Path) -> None:
    labels = np.array([0, 1, 1, 2, 2, 2], dtype=np.int64)
    stats = partition_stats(labels, [np.array([0, 1]), np.array([3, 4])], [np.array([2])] * 2, 3)

    out = plot_partition_counts(stats, tmp_path / "sub" / "parts.png", title="toy")

    assert out == tmp_path / "sub" / "parts.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
