"""Hand a loaded dataset to the simulated clients' processes through memory-mapped files.

Without this, every Ray worker reads and normalizes the whole dataset itself before its first
round (1 s for the benchmarks' generated set, more for CIFAR-10) and keeps a private copy of it
(0.7 GiB for CIFAR-10, per worker). The driver writes the normalized tensors once as raw files;
a worker maps them, which takes milliseconds, and all workers share the same pages; each read
(:meth:`~fedbarrier.data.datasets.ImageDataset.rows`) unmaps what it touched, so a process
holds only what it copied out.

A manifest records which dataset the files hold (a key the caller chooses) and the tensors'
shapes. A request with another key, or a folder that does not exist (a worker on another machine
of a Ray cluster), gets ``None``: the caller then loads the dataset itself, as before.

The partition travels the same way (:func:`write_parts`): computing it again imports
flwr-datasets, ~2 s of CPU in every worker of every run.
"""

from __future__ import annotations

import json
import math
import mmap
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.data.datasets import DatasetSplits, ImageDataset

MANIFEST = "dataset.json"
#: Files up to this size stay mapped after a read: a process holding all of one costs less than
#: mapping its pages again on every read (2.5 % of a worker's round on the round-overhead
#: benchmark's 75 MiB file); larger ones are released after each read (see :func:`_release`).
RELEASE_ABOVE = 256 * 2**20
PARTS = "partition.npz"


def write_splits(splits: DatasetSplits, folder: Path, key: dict[str, Any]) -> None:
    """Write ``splits`` under ``folder`` as raw tensors plus a manifest naming ``key``.

    The manifest is written last, so a reader never sees a manifest without its files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, dict[str, Any]] = {}
    for split in ("train", "test"):
        part: ImageDataset = getattr(splits, split)
        for name, tensor in (("x", part.x), ("y", part.y)):
            file = f"{split}_{name}.bin"
            tensor.contiguous().numpy().tofile(folder / file)
            tensors[f"{split}_{name}"] = {"file": file, "shape": list(tensor.shape),
                                          "dtype": str(tensor.dtype).removeprefix("torch.")}
    manifest = {"key": _canonical(key), "name": splits.name, "classes": list(splits.classes),
                "num_classes": splits.train.num_classes, "tensors": tensors}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def read_splits(folder: Path, key: dict[str, Any]) -> DatasetSplits | None:
    """The splits written under ``folder`` for ``key``, memory-mapped; None if there are none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != _canonical(key):
        return None
    mapped = {name: _map(folder / entry["file"], entry["shape"], entry["dtype"])
              for name, entry in manifest["tensors"].items()}
    k = int(manifest["num_classes"])

    def dataset(split: str) -> ImageDataset:
        (x, x_map), (y, y_map) = mapped[f"{split}_x"], mapped[f"{split}_y"]
        large = [m for m in (x_map, y_map) if m is not None and len(m) > RELEASE_ABOVE]
        return ImageDataset(x, y, k, release=partial(_release, large) if large else None)

    return DatasetSplits(name=manifest["name"], train=dataset("train"), test=dataset("test"),
                         classes=tuple(manifest["classes"]))


def write_parts(train_parts: list[np.ndarray], test_parts: list[np.ndarray], folder: Path,
                key: dict[str, Any]) -> None:
    """Write each client's train and test indices under ``folder``, for :func:`read_parts`."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(_canonical(key))}
    for name, parts in (("train", train_parts), ("test", test_parts)):
        arrays[f"{name}_sizes"] = np.array([len(p) for p in parts], dtype=np.int64)
        arrays[f"{name}_dtype"] = np.array(str(parts[0].dtype) if parts else "int64")
        arrays[f"{name}_indices"] = (np.concatenate(parts) if parts else np.zeros(0)).astype(np.int64)
    with open(folder / f".{PARTS}.tmp", "wb") as f:  # renamed when whole
        np.savez(f, **arrays)
    (folder / f".{PARTS}.tmp").replace(folder / PARTS)


def read_parts(folder: Path, key: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """The (train, test) parts written under ``folder`` for ``key``; None if there are none."""
    try:
        with np.load(folder / PARTS, allow_pickle=False) as data:
            if str(data["key"]) != _canonical(key):
                return None
            out = []
            for name in ("train", "test"):
                ends = np.cumsum(data[f"{name}_sizes"])
                flat = data[f"{name}_indices"].astype(str(data[f"{name}_dtype"]))
                out.append([flat[end - size:end].copy()
                            for end, size in zip(ends, data[f"{name}_sizes"])])
    except (OSError, ValueError, KeyError):
        return None
    return out[0], out[1]


def _map(path: Path, shape: list[int], dtype: str) -> tuple[torch.Tensor, mmap.mmap | None]:
    """The file's tensor, mapped (its pages are the page cache's, shared by every process that
    maps it), and the mapping (None for an empty tensor)."""
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(shape, dtype=getattr(torch, dtype)), None
    with open(path, "rb") as file:
        # ACCESS_COPY (MAP_PRIVATE): read-only in effect, writable for torch; nothing writes.
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    flat = torch.frombuffer(mapping, dtype=getattr(torch, dtype), count=numel)
    return flat.view(*shape), mapping


def _release(mappings: list[mmap.mmap]) -> None:
    """Unmap every page of ``mappings`` from this process (the data stays in the file and in
    the page cache; a later read maps it again). A file system that keeps written files in
    large folios maps ~2 MiB around each row read: a client's 20 random rows cost ~50 MiB of
    RSS, and 10,000 clients' worth the whole file, in every process, without this."""
    for mapping in mappings:
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (AttributeError, OSError, ValueError):  # a platform without it: RSS only
            pass


def _canonical(key: dict[str, Any]) -> str:
    """The key as JSON with sorted fields (tuples and lists compare equal)."""
    return json.dumps(key, sort_keys=True, default=str)
