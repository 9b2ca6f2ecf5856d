"""Datasets as normalized in-memory tensors, loaded once per process.

Every dataset is converted once to float32 images of shape ``(N, C, H, W)``, normalized per channel
with the fixed constants in :data:`NORMALIZATION`, plus int64 labels. Simulated clients call
:func:`load_dataset` many times in one process, so results are cached: the returned tensors are
shared and callers must never modify them in place (use :meth:`ImageDataset.subset`, which copies).

Files are looked up before anything is downloaded, so everything works offline once the files are
in place:

* ``cifar10`` / ``cifar100``: the extracted ``cifar-10-batches-py/`` / ``cifar-100-python/`` folder
  inside ``data_dir``. The pickle batches are read by a small reader here, not by torchvision,
  because torchvision's ``CIFAR10`` verifies a hard-coded md5 of every batch file and so refuses
  any other file in the same format (e.g. the tiny files the tests generate). Downloading still
  goes through torchvision (URL, checksum, extraction).
* ``fashion-mnist``: the four IDX ``.gz`` files in ``data_dir`` (or its torchvision layout
  ``FashionMNIST/raw/``); without ``data_dir``, Debian's ``/usr/share/datasets/fashion-mnist`` is
  used when present. The IDX files are parsed directly with numpy.
* ``digits``: scikit-learn's bundled 8x8 digits, always offline; ``data_dir`` is ignored.
* ``synthetic``: generated from a :class:`SyntheticSpec`; ``data_dir`` is ignored.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.errors import UserError

__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "DatasetSplits",
    "ImageDataset",
    "SyntheticSpec",
    "clear_dataset_cache",
    "default_data_dir",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion-mnist", "digits", "synthetic")

#: Per-channel (mean, std) applied after scaling pixels to [0, 1]. CIFAR and Fashion-MNIST use the
#: usual published training-set statistics; digits uses the mean/std of all 1797 images / 16.
#: Synthetic data is generated already standardized and is not in this table.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3053,), (0.3760,)),
}

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
FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Fraction of the 1797 digits held out for the test split, and the split's fixed seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

_CACHE_SIZE = 8
#: Seconds any single connect/read of a download may stall before it counts as failed.
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """In-memory labelled images: float32 x of shape (N, C, H, W), already normalized; int64 y (N,).

    Instances from :func:`load_dataset` are cached and shared: never modify ``x`` or ``y`` in
    place. ``eq=False`` because comparing tensors element-wise is not a boolean.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != torch.float32:
            raise ValueError(
                f"x must be float32 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.ndim != 1 or self.y.dtype != torch.int64 or len(self.y) != len(self.x):
            raise ValueError(
                f"y must be int64 of shape ({len(self.x)},), "
                f"got {self.y.dtype} {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one image, which models need to size their first layers."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageDataset:
        """Copy out the given samples (integer indices or a boolean mask), e.g. one client's share.

        Indexing copies, so the subset is safe to modify without touching the cached dataset.
        """
        if isinstance(indices, np.ndarray):  # copy: torch cannot wrap negative-stride views
            indices = np.ascontiguousarray(indices)
        idx = torch.as_tensor(indices)
        if idx.dtype != torch.bool:
            idx = idx.long()
        return ImageDataset(self.x[idx], self.y[idx], self.num_classes)


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset's train and test splits with its class names (index i names label i)."""

    name: str
    train: ImageDataset
    test: ImageDataset
    classes: tuple[str, ...]


@dataclass(frozen=True)
class SyntheticSpec:
    """Recipe for the ``synthetic`` dataset; equal specs give bit-identical data.

    Attributes
    ----------
    num_classes : int
        Number of classes (default 10, like CIFAR-10, so models are interchangeable).
    input_shape : tuple of int
        (C, H, W) of each image (default (3, 32, 32), CIFAR's shape).
    train_size, test_size : int
        Number of samples (defaults 2000 / 500: big enough to learn, small enough to be instant).
    seed : int
        Seed of the generator (default 0); the only source of randomness.
    noise : float
        Std of the per-pixel Gaussian noise relative to the unit-std class means (default 1.0:
        clearly noisy yet learnable in a few epochs). Larger values make the task harder: a
        nearest-class-mean classifier stays near 100% up to noise ~10 and drops to ~50% at 20.
    """

    num_classes: int = 10
    input_shape: tuple[int, int, int] = (3, 32, 32)
    train_size: int = 2000
    test_size: int = 500
    seed: int = 0
    noise: float = 1.0

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape) if isinstance(self.input_shape, (tuple, list)) else ()
        _require(
            len(shape) == 3 and all(_is_int(d, 1) for d in shape),
            f"synthetic input_shape {self.input_shape!r} is invalid; "
            "use three positive integers (C, H, W)",
        )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in shape))
        for field, low in (("num_classes", 2), ("train_size", 1), ("test_size", 1), ("seed", 0)):
            value = getattr(self, field)
            _require(
                _is_int(value, low),
                f"synthetic {field} {value!r} is invalid; use an integer >= {low}",
            )
        _require(
            isinstance(self.noise, (int, float))
            and not isinstance(self.noise, bool)
            and self.noise >= 0,
            f"synthetic noise {self.noise!r} is invalid; use a number >= 0",
        )


def _is_int(value: object, low: int) -> bool:
    """True for a (non-bool) integer >= low; config files can deliver floats or strings."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


def _require(ok: bool, message: str) -> None:
    """Raise a one-line UserError unless ``ok``."""
    if not ok:
        raise UserError(message)


def default_data_dir() -> Path:
    """Where downloadable datasets live: ``$FEDBARRIER_DATA`` or ``~/.cache/fedbarrier/data``."""
    env = os.environ.get("FEDBARRIER_DATA", "").strip()
    return Path(env or "~/.cache/fedbarrier/data").expanduser().resolve()


def clear_dataset_cache() -> None:
    """Forget every cached dataset, e.g. in tests or to free memory."""
    _read_cached.cache_clear()


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    synthetic: SyntheticSpec | None = None,
) -> DatasetSplits:
    """Load a dataset's normalized train/test splits, cached per process.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or Path, optional
        Folder holding (or receiving) the files of cifar10/cifar100/fashion-mnist; it must exist
        when given. Default: :func:`default_data_dir` (fashion-mnist first tries Debian's copy).
    download : bool
        Whether missing files may be downloaded; if false, missing files are a UserError.
    synthetic : SyntheticSpec, optional
        Recipe for ``synthetic`` (default ``SyntheticSpec()``); ignored for other datasets.

    Returns
    -------
    DatasetSplits
        Shared, cached tensors: do not modify them in place.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "synthetic":
        return _read_cached(name, None, synthetic or SyntheticSpec())
    if name == "digits":
        return _read_cached(name, None, None)
    folder = _locate_files(name, _resolve_data_dir(data_dir, name), download)
    return _read_cached(name, str(folder), None)


def _resolve_data_dir(data_dir: str | Path | None, name: str) -> Path:
    """Pick the folder to search: the user's (must exist), Debian's Fashion-MNIST, or default."""
    if data_dir is not None:
        path = Path(data_dir).expanduser().resolve()
        if not path.is_dir():
            raise UserError(
                f"data_dir {str(path)!r} does not exist; create it or point data_dir "
                "at the folder holding the dataset files"
            )
        return path
    if name == "fashion-mnist" and _find_fashion_mnist(DEBIAN_FASHION_MNIST_DIR) is not None:
        return DEBIAN_FASHION_MNIST_DIR
    return default_data_dir()


def _locate_files(name: str, root: Path, download: bool) -> Path:
    """Return the folder holding the dataset's files, downloading them first if allowed."""
    found = _find_files(name, root)
    if found is not None:
        return found
    if not download:
        raise UserError(f"{name} not found and download is off; {_placement_hint(name, root)}")
    try:
        _torchvision_download(name, root)
    except Exception as exc:  # network, checksum or extraction: all mean "put the files there"
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UserError(
            f"downloading {name} failed ({reason}); {_placement_hint(name, root)}"
        ) from exc
    found = _find_files(name, root)
    if found is None:
        raise UserError(
            f"downloaded {name} but its files are missing; {_placement_hint(name, root)}"
        )
    return found


def _find_files(name: str, root: Path) -> Path | None:
    """Return the folder with the dataset's files under ``root``, or None if there is none."""
    if name == "fashion-mnist":
        return _find_fashion_mnist(root)
    folder = root / _cifar_class(name).base_folder
    return folder if folder.is_dir() else None


def _find_fashion_mnist(root: Path) -> Path | None:
    """Find the four IDX .gz files directly in ``root`` or in torchvision's FashionMNIST/raw."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        if all((folder / f).is_file() for f in FASHION_MNIST_FILES):
            return folder
    return None


def _placement_hint(name: str, root: Path) -> str:
    """One sentence telling the user exactly which files to put where, and where to get them."""
    if name == "fashion-mnist":
        from torchvision.datasets import FashionMNIST

        return (
            f"put {', '.join(FASHION_MNIST_FILES)} (from {FashionMNIST.mirrors[0]}) in "
            f"{str(root)!r}, or install Debian's dataset-fashion-mnist"
        )
    cls = _cifar_class(name)
    return (
        f"download {cls.url} and extract it so that the folder {cls.base_folder!r} "
        f"is inside {str(root)!r}"
    )


def _cifar_class(name: str) -> Any:
    """torchvision's dataset class, the source of truth for URLs and folder names."""
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _torchvision_download(name: str, root: Path) -> None:
    """Download and extract through torchvision (it verifies the official checksums)."""
    from torchvision.datasets import FashionMNIST

    root.mkdir(parents=True, exist_ok=True)
    cls = FashionMNIST if name == "fashion-mnist" else _cifar_class(name)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        cls(str(root), train=False, download=True)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound each network wait: torchvision's urlopen has no timeout and can hang offline."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _read_cached(name: str, folder: str | None, spec: SyntheticSpec | None) -> DatasetSplits:
    """Read and convert once per (dataset, files folder, synthetic spec) in this process."""
    if name == "synthetic":
        assert spec is not None
        return _make_synthetic(spec)
    if name == "digits":
        return _load_digits()
    assert folder is not None
    if name == "fashion-mnist":
        return _load_fashion_mnist(Path(folder))
    return _load_cifar(name, Path(folder))


def _normalize(images: np.ndarray, name: str) -> torch.Tensor:
    """Scale uint8 (N, C, H, W) images to [0, 1] and standardize each channel (float32)."""
    mean, std = NORMALIZATION[name]
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)  # astype: writable copy
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


def _image_dataset(images: np.ndarray, labels: np.ndarray, name: str, k: int) -> ImageDataset:
    """Build a normalized ImageDataset from uint8 images and integer labels."""
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
    return ImageDataset(_normalize(images, name), y, k)


# --- CIFAR -------------------------------------------------------------------------------------


def _load_cifar(name: str, folder: Path) -> DatasetSplits:
    """Read the extracted CIFAR-10/100 python batches from ``folder``."""
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
    return DatasetSplits(
        name,
        _image_dataset(train_x, train_y, name, k),
        _image_dataset(test_x, test_y, name, k),
        classes,
    )


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


def _load_fashion_mnist(folder: Path) -> DatasetSplits:
    """Parse the four IDX .gz files in ``folder``."""
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
        splits.append(_image_dataset(images[:, None], labels, "fashion-mnist", 10))
    return DatasetSplits("fashion-mnist", splits[0], splits[1], FASHION_MNIST_CLASSES)


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


def _load_digits() -> DatasetSplits:
    """scikit-learn's 1797 8x8 digits, split 80/20 stratified by class with seed 0."""
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
    (mean,), (std,) = NORMALIZATION["digits"]
    x = torch.from_numpy((images - np.float32(mean)) / np.float32(std))
    y = torch.from_numpy(labels)
    parts = [ImageDataset(x[idx], y[idx], 10) for idx in (train_idx, test_idx)]
    return DatasetSplits("digits", parts[0], parts[1], tuple(str(d) for d in range(10)))


# --- synthetic ---------------------------------------------------------------------------------


def _make_synthetic(spec: SyntheticSpec) -> DatasetSplits:
    """Gaussian classes around smooth random mean images; exactly reproducible from the spec.

    Each class mean is a random low-resolution (at most 4x4) image upsampled bilinearly, so the
    signal is spatially smooth and a small CNN picks it up in a few epochs. Samples are
    ``mean[y] + noise * N(0, 1)`` divided by ``sqrt(1 + noise**2)`` so pixels have unit variance.
    Means, train and test come from independent child seeds: changing ``train_size`` leaves the
    test set unchanged.
    """
    mean_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3)
    )
    means = _smooth_means(mean_rng, spec.num_classes, spec.input_shape)
    train = _synthetic_split(train_rng, means, spec.train_size, spec.noise)
    test = _synthetic_split(test_rng, means, spec.test_size, spec.noise)
    classes = tuple(f"class_{i}" for i in range(spec.num_classes))
    return DatasetSplits("synthetic", train, test, classes)


def _smooth_means(rng: np.random.Generator, k: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Draw k random coarse images and upsample them to ``shape``; scaled to unit overall std."""
    c, h, w = shape
    coarse = rng.standard_normal((k, c, min(h, 4), min(w, 4)))
    means = np.einsum(
        "hi,kcij,wj->kchw",
        _upsample_matrix(h, coarse.shape[2]),
        coarse,
        _upsample_matrix(w, coarse.shape[3]),
    )
    std = means.std()
    return means / std if std > 0 else means


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, half-pixel centres (like align_corners=False)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def _synthetic_split(
    rng: np.random.Generator, means: np.ndarray, n: int, noise: float
) -> ImageDataset:
    """Sample n images with balanced, shuffled labels around the class means."""
    k = means.shape[0]
    labels = rng.permutation(np.arange(n) % k)
    noise_draw = rng.standard_normal((n, *means.shape[1:]), dtype=np.float32)
    x = means[labels].astype(np.float32) + np.float32(noise) * noise_draw
    x /= np.float32(np.sqrt(1.0 + noise**2))
    return ImageDataset(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)), k)
