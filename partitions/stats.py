"""Per-client sample and class counts, for logs, JSON reports and plots."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedbarrier.errors import UserError

MAX_TABLE_CLASSES = 20
_HEAD_CLASSES = 10


@dataclass(frozen=True, eq=False)
class PartitionStats:
    """Per-client class counts of the local train and test splits.

    ``eq=False`` because the fields are arrays, which the generated ``__eq__`` cannot compare.
    """

    num_classes: int
    train_counts: np.ndarray  # (num_clients, num_classes) int64
    test_counts: np.ndarray  # (num_clients, num_classes) int64

    def to_dict(self) -> dict:
        """Return plain Python types only, so ``json.dumps`` works on the result."""
        clients = [
            {
                "id": client,
                "train_size": int(self.train_counts[client].sum()),
                "test_size": int(self.test_counts[client].sum()),
                "train_class_counts": self.train_counts[client].tolist(),
                "test_class_counts": self.test_counts[client].tolist(),
            }
            for client in range(self.train_counts.shape[0])
        ]
        return {"num_classes": int(self.num_classes), "clients": clients}

    def format_table(self) -> str:
        """Render an aligned plain-text table with a totals row.

        Columns: client id, train size, test size, then per-class train counts. Beyond
        ``MAX_TABLE_CLASSES`` classes only the first 10 and last 9 are shown around a ``...``
        column, to keep lines readable in a terminal.
        """
        shown = _shown_classes(self.num_classes)
        header = ["client", "train", "test"] + [_class_header(c) for c in shown]
        rows = [
            _row(str(client), self.train_counts[client], self.test_counts[client], shown)
            for client in range(self.train_counts.shape[0])
        ]
        totals = _row("total", self.train_counts.sum(axis=0), self.test_counts.sum(axis=0), shown)
        return _align([header, *rows, totals])


def _shown_classes(num_classes: int) -> list[int | None]:
    """Pick the class columns to show; ``None`` marks the elided middle."""
    if num_classes <= MAX_TABLE_CLASSES:
        return list(range(num_classes))
    tail = MAX_TABLE_CLASSES - 1 - _HEAD_CLASSES
    return [*range(_HEAD_CLASSES), None, *range(num_classes - tail, num_classes)]


def _class_header(cls: int | None) -> str:
    """Name a class column ``c<id>``; the elision column is ``...``."""
    return "..." if cls is None else f"c{cls}"


def _row(name: str, train: np.ndarray, test: np.ndarray, shown: list[int | None]) -> list[str]:
    """Format one table row from a client's (or the total's) class count vectors."""
    cells = ["..." if cls is None else str(int(train[cls])) for cls in shown]
    return [name, str(int(train.sum())), str(int(test.sum())), *cells]


def _align(table: list[list[str]]) -> str:
    """Right-align every column to its widest cell, two spaces apart."""
    widths = [max(len(row[col]) for row in table) for col in range(len(table[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def partition_stats(
    labels: np.ndarray,
    train_idx: list[np.ndarray],
    test_idx: list[np.ndarray],
    num_classes: int,
) -> PartitionStats:
    """Count each client's train and test examples per class.

    Returns
    -------
    PartitionStats
        With read-only ``(num_clients, num_classes)`` int64 count arrays.

    Raises
    ------
    UserError
        If a label is not below ``num_classes``.
    ValueError
        If ``train_idx`` and ``test_idx`` list a different number of clients (a caller bug).
    """
    if len(train_idx) != len(test_idx):
        raise ValueError(f"{len(train_idx)} train index arrays but {len(test_idx)} test ones")
    arr = np.asarray(labels)
    if arr.size and int(arr.max()) >= num_classes:
        raise UserError(
            f"label {int(arr.max())} is not allowed with num_classes={num_classes}; "
            f"labels must be in [0, {num_classes})"
        )
    return PartitionStats(
        num_classes=int(num_classes),
        train_counts=_class_counts(arr, train_idx, num_classes),
        test_counts=_class_counts(arr, test_idx, num_classes),
    )


def _class_counts(labels: np.ndarray, indices: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Stack per-client ``bincount``s into a read-only (num_clients, num_classes) array."""
    counts = np.zeros((len(indices), num_classes), dtype=np.int64)
    for client, idx in enumerate(indices):
        counts[client] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    counts.setflags(write=False)
    return counts
