"""File-format readers: CIFAR pickle batches, gzipped IDX files and scikit-learn's digits, as numpy.

Readers parse and check, nothing more: they return raw pixels and labels, and
:mod:`fedbarrier.data.datasets` (which finds the files and caches the result) normalizes them into
tensors. A malformed file raises a one-line ``UserError`` naming the file and what to do.

The CIFAR pickle batches are read here, not by torchvision, because torchvision's ``CIFAR10``
verifies a hard-coded md5 of every batch file and so refuses any other file in the same format
(e.g. the tiny files the tests generate). The Fashion-MNIST IDX files are parsed directly with numpy.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedbarrier.errors import UserError

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Fraction of the 1797 digits held out for the test split, and the split's fixed seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class RawSplits(NamedTuple):
    """A dataset's train and test ``(images, labels)`` as read, and its class names."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]


def _require(ok: bool, message: str) -> None:
    """Raise a one-line UserError unless ``ok``."""
    if not ok:
        raise UserError(message)


def _cifar_class(name: str) -> Any:
    """torchvision's dataset class, the source of truth for URLs and folder names."""
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


# --- CIFAR -------------------------------------------------------------------------------------


def read_cifar(name: str, folder: Path) -> RawSplits:
    """Read the extracted CIFAR-10/100 python batches from ``folder``: uint8 (N, 3, 32, 32) images."""
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key, k = (
            "test_batch",
            "batches.meta",
            "labels",
            "label_names",
            10,
        )
    else:
        train_files = ["train"]
        test_file, meta_file, label_key, names_key, k = (
            "test",
            "meta",
            "fine_labels",
            "fine_label_names",
            100,
        )
    classes = tuple(_as_str(c) for c in _read_pickle(folder / meta_file)[names_key])
    _require(
        len(classes) == k,
        f"{folder / meta_file} lists {len(classes)} classes, expected {k};"
        f" re-extract {folder.name} from {_cifar_class(name).url}",
    )
    batches = [_read_cifar_batch(folder / f, label_key, k) for f in train_files]
    train_x = np.concatenate([b[0] for b in batches])
    train_y = np.concatenate([b[1] for b in batches])
    test_x, test_y = _read_cifar_batch(folder / test_file, label_key, k)
    return RawSplits((train_x, train_y), (test_x, test_y), classes)


def _read_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle; keys come back as str whether pickled as bytes or (Python 2) str."""
    if not path.is_file():
        raise UserError(
            f"CIFAR file {str(path)!r} is missing; re-extract the official archive "
            f"into {str(path.parent.parent)!r}"
        )
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")  # latin1: how Python-2 numpy pickles load
    except Exception as exc:  # truncated or not a pickle at all
        raise UserError(
            f"CIFAR file {str(path)!r} is unreadable ({type(exc).__name__}); "
            "re-extract the official archive"
        ) from exc
    if not isinstance(entry, dict):
        raise UserError(f"CIFAR file {str(path)!r} is not a CIFAR batch; re-extract the archive")
    return {_as_str(key): value for key, value in entry.items()}


def _as_str(value: str | bytes) -> str:
    """Decode bytes keys/names (how Python 3 sees the Python-2 pickles) to str."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_cifar_batch(path: Path, label_key: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return uint8 images (N, 3, 32, 32) and labels from one batch (rows are R, G, B planes)."""
    entry = _read_pickle(path)
    _require(
        "data" in entry and label_key in entry,
        f"CIFAR file {str(path)!r} lacks 'data' or {label_key!r}; re-extract the archive",
    )
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    _require(
        data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
        and len(labels) == len(data),
        f"CIFAR file {str(path)!r} has data {data.dtype} {data.shape} and {len(labels)} "
        "labels, expected uint8 (N, 3072) and N labels; re-extract the archive",
    )
    _check_labels(labels, k, path)
    return data.reshape(-1, 3, 32, 32), labels


def _check_labels(labels: np.ndarray, k: int, path: Path) -> None:
    """Reject labels outside 0..k-1, which would crash training far from the cause."""
    bad = labels[(labels < 0) | (labels >= k)]
    _require(
        bad.size == 0,
        f"{str(path)!r} has label {bad[:1].tolist()} outside 0..{k - 1}; "
        "replace the file with the official one",
    )


# --- Fashion-MNIST -----------------------------------------------------------------------------


def read_fashion_mnist(folder: Path) -> RawSplits:
    """Parse the four IDX .gz files in ``folder``: uint8 (N, 1, 28, 28) images."""
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", ndim=3)
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", ndim=1).astype(np.int64)
        _require(
            len(images) == len(labels),
            f"{prefix} files in {str(folder)!r} hold "
            f"{len(images)} images but {len(labels)} labels; replace them",
        )
        _check_labels(labels, 10, folder / f"{prefix}-labels-idx1-ubyte.gz")
        splits.append((images[:, None], labels))
    return RawSplits(splits[0], splits[1], FASHION_MNIST_CLASSES)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of bytes: magic 0x0000 0x08 <ndim>, big-endian uint32 dims, data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{str(path)!r} is not a readable .gz file ({exc}); replace it") from exc
    header = 4 + 4 * ndim
    _require(
        len(raw) >= header and raw[:4] == bytes((0, 0, 0x08, ndim)),
        f"{str(path)!r} is not an IDX file of {ndim}-d unsigned bytes; replace it",
    )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    _require(
        len(raw) - header == int(np.prod(dims)),
        f"{str(path)!r} holds {len(raw) - header} data bytes, header says {dims}; replace it",
    )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# --- digits ------------------------------------------------------------------------------------


def read_digits() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 8x8 digits and their 80/20 split, stratified by class with seed 0.

    Returns float32 images (N, 1, 8, 8) scaled to [0, 1], int64 labels, and the (train, test)
    indices into them.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None] / 16.0  # pixels are 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return images, labels, (train_idx, test_idx)
