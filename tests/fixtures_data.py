"""Tiny dataset files in the real on-disk formats, so tests load them through the real code path.

``write_fake_cifar10`` / ``write_fake_cifar100`` write the python-pickle batches exactly as the
official archives lay them out; ``write_fake_fashion_mnist`` writes the four gzipped IDX files.
Each returns the raw uint8 arrays it wrote so tests can check exact pixels and labels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class FakeImages:
    """What a writer put on disk: uint8 images in (N, C, H, W) and int64 labels per split."""

    root: Path
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _random_split(
    rng: np.random.Generator, n: int, shape: tuple[int, ...], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and labels for one split."""
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, k, n)


def _dump(path: Path, entry: dict[bytes, object], bytes_keys: bool) -> None:
    """Pickle a batch; bytes keys are what Python 3 sees, str keys mimic other writers."""
    if not bytes_keys:
        entry = {key.decode(): value for key, value in entry.items()}
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def _batch(x: np.ndarray, y: np.ndarray, label_key: bytes, tag: bytes) -> dict[bytes, object]:
    """One CIFAR batch dict: b'data' is uint8 (N, 3072), each row R, G, B planes row-major."""
    return {
        b"batch_label": tag,
        label_key: [int(v) for v in y],
        b"data": x.reshape(len(x), -1),
        b"filenames": [b"img_%d.png" % i for i in range(len(x))],
    }


def write_fake_cifar10(
    root: Path, n_train: int = 10, n_test: int = 4, seed: int = 0, bytes_keys: bool = True
) -> FakeImages:
    """Write ``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _random_split(rng, n_train, (3, 32, 32), 10)
    test_x, test_y = _random_split(rng, n_test, (3, 32, 32), 10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        batch = _batch(train_x[part], train_y[part], b"labels", b"training batch %d of 5" % i)
        _dump(folder / f"data_batch_{i}", batch, bytes_keys)
    _dump(
        folder / "test_batch",
        _batch(test_x, test_y, b"labels", b"testing batch 1 of 1"),
        bytes_keys,
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    _dump(folder / "batches.meta", meta, bytes_keys)
    return FakeImages(root, train_x, train_y, test_x, test_y)


def _cifar100_batch(x: np.ndarray, y: np.ndarray, tag: bytes) -> dict[bytes, object]:
    """A CIFAR-100 split dict: fine and coarse labels (coarse is just fine // 5 here)."""
    batch = _batch(x, y, b"fine_labels", tag)
    batch[b"coarse_labels"] = [int(v) // 5 for v in y]
    return batch


def write_fake_cifar100(
    root: Path, n_train: int = 10, n_test: int = 4, seed: int = 0, bytes_keys: bool = True
) -> FakeImages:
    """Write ``root/cifar-100-python`` with train, test and meta."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _random_split(rng, n_train, (3, 32, 32), 100)
    test_x, test_y = _random_split(rng, n_test, (3, 32, 32), 100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(folder / "train", _cifar100_batch(train_x, train_y, b"training"), bytes_keys)
    _dump(folder / "test", _cifar100_batch(test_x, test_y, b"testing"), bytes_keys)
    meta = {
        b"fine_label_names": [b"fine_%d" % i for i in range(100)],
        b"coarse_label_names": [b"coarse_%d" % i for i in range(20)],
    }
    _dump(folder / "meta", meta, bytes_keys)
    return FakeImages(root, train_x, train_y, test_x, test_y)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as gzipped IDX: 0x0000, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_fashion_mnist(
    root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0
) -> FakeImages:
    """Write the four Fashion-MNIST IDX .gz files directly into ``root``."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _random_split(rng, n_train, (28, 28), 10)
    test_x, test_y = _random_split(rng, n_test, (28, 28), 10)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        write_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    return FakeImages(root, train_x[:, None], train_y, test_x[:, None], test_y)


def block_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's CIFAR/Fashion-MNIST downloads fail offline; returns the attempts made."""
    from urllib.error import URLError

    from torchvision.datasets import CIFAR10, FashionMNIST

    attempts: list[str] = []

    def fail(self: object) -> None:
        attempts.append(type(self).__name__)
        raise URLError("[Errno -3] Temporary failure in name resolution (blocked by test)")

    monkeypatch.setattr(CIFAR10, "download", fail)  # CIFAR100 inherits it
    monkeypatch.setattr(FashionMNIST, "download", fail)
    return attempts
