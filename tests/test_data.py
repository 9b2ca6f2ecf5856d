"""Tests for fedbarrier.data.datasets: every loader, the file formats, caching and the one-line errors."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedbarrier.data import datasets as data
from fedbarrier.data.datasets import (
    DATASETS,
    NORMALIZATION,
    DatasetSplits,
    ImageDataset,
    SyntheticSpec,
    load_dataset,
)
from fedbarrier.errors import UserError
from tests.fixtures_data import (
    FakeImages,
    block_downloads,
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_fashion_mnist,
    write_idx_gz,
)


@pytest.fixture(autouse=True)
def _offline_and_fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """No test may reach the network, and none may see another test's cached data."""
    data.clear_dataset_cache()
    yield block_downloads(monkeypatch)
    data.clear_dataset_cache()


def _expected(images: np.ndarray, name: str) -> torch.Tensor:
    """Normalize uint8 images independently of the loader (float64, then cast)."""
    mean, std = (np.array(v).reshape(1, -1, 1, 1) for v in NORMALIZATION[name])
    return torch.from_numpy(((images / 255.0 - mean) / std).astype(np.float32))


def _check_split(ds: ImageDataset, n: int, shape: tuple[int, int, int], k: int) -> None:
    """Common shape/dtype/class-count contract of every split."""
    assert len(ds) == n and ds.input_shape == shape and ds.num_classes == k
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert tuple(ds.x.shape) == (n, *shape) and tuple(ds.y.shape) == (n,)
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < k


def _check_against_files(splits: DatasetSplits, fake: FakeImages, name: str) -> None:
    """Loaded tensors equal the written uint8 files, normalized, in file order."""
    for ds, x, y in (
        (splits.train, fake.train_x, fake.train_y),
        (splits.test, fake.test_x, fake.test_y),
    ):
        assert torch.equal(ds.y, torch.from_numpy(y.astype(np.int64)))
        torch.testing.assert_close(ds.x, _expected(x, name), rtol=0, atol=1e-6)


# --- CIFAR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_generated_pickles_load(tmp_path: Path, bytes_keys: bool) -> None:
    fake = write_fake_cifar10(tmp_path, n_train=11, n_test=3, bytes_keys=bytes_keys)
    splits = load_dataset("cifar10", tmp_path, download=False)
    assert splits.name == "cifar10" and splits.classes[0] == "airplane"
    assert len(splits.classes) == 10 and splits.classes[9] == "truck"
    _check_split(splits.train, 11, (3, 32, 32), 10)
    _check_split(splits.test, 3, (3, 32, 32), 10)
    _check_against_files(splits, fake, "cifar10")


def test_cifar10_known_pixel_is_channel_first_and_normalized(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path, n_train=5, n_test=2)  # one image per data_batch_i
    batch_path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(batch_path.read_bytes())
    entry[b"data"][0, 1 * 1024 + 5 * 32 + 7] = 200  # on disk: R, G, B planes, each row-major
    batch_path.write_bytes(pickle.dumps(entry, protocol=2))
    x = load_dataset("cifar10", tmp_path).train.x
    # third image, green channel, row 5, column 7
    assert x[2, 1, 5, 7].item() == pytest.approx((200 / 255 - 0.4822) / 0.2435, abs=1e-6)


def test_cifar100_generated_pickles_load(tmp_path: Path) -> None:
    fake = write_fake_cifar100(tmp_path, n_train=9, n_test=4)
    splits = load_dataset("cifar100", tmp_path, download=False)
    assert len(splits.classes) == 100 and splits.classes[42] == "fine_42"
    _check_split(splits.train, 9, (3, 32, 32), 100)
    _check_split(splits.test, 4, (3, 32, 32), 100)
    _check_against_files(splits, fake, "cifar100")


def test_generated_cifar_is_rejected_by_torchvision_integrity_check(tmp_path: Path) -> None:
    """Why data.py has its own pickle reader: torchvision md5-checks every batch file."""
    from torchvision.datasets import CIFAR10

    write_fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        CIFAR10(str(tmp_path), train=True, download=False)


@pytest.mark.parametrize(
    ("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_download_failure_says_where_to_put_files(
    tmp_path: Path, name: str, folder: str, _offline_and_fresh: list[str]
) -> None:
    with pytest.raises(UserError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "failed" in message and "URLError" in message
    assert (
        str(tmp_path) in message and folder in message and "https://www.cs.toronto.edu" in message
    )
    assert _offline_and_fresh == [{"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]]


def test_download_bounds_socket_waits_and_restores_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import CIFAR10

    seen: list[float | None] = []

    def record(self: object) -> None:
        seen.append(socket.getdefaulttimeout())
        raise OSError("offline")

    monkeypatch.setattr(CIFAR10, "download", record)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError, match="OSError: offline"):
        load_dataset("cifar10", tmp_path)
    assert seen == [data.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before


def test_cifar_missing_with_download_off_does_not_download(
    tmp_path: Path, _offline_and_fresh: list[str]
) -> None:
    with pytest.raises(UserError, match="download is off") as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(tmp_path) in str(info.value) and "cifar-10-batches-py" in str(info.value)
    assert _offline_and_fresh == []


def test_default_data_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDBARRIER_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path.resolve()
    fake = write_fake_cifar10(tmp_path, n_train=5, n_test=2)
    splits = load_dataset("cifar10")
    assert torch.equal(splits.test.y, torch.from_numpy(fake.test_y))
    monkeypatch.setenv("FEDBARRIER_DATA", "")
    assert data.default_data_dir() == (Path.home() / ".cache/fedbarrier/data").resolve()


def test_corrupt_cifar_batch_is_a_user_error(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_4"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_batch_names_the_file(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


# --- Fashion-MNIST -------------------------------------------------------------------------------


def test_fashion_mnist_idx_files_parse_exactly(tmp_path: Path) -> None:
    fake = write_fake_fashion_mnist(tmp_path, n_train=12, n_test=5)
    splits = load_dataset("fashion-mnist", tmp_path, download=False)
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    _check_split(splits.train, 12, (1, 28, 28), 10)
    _check_split(splits.test, 5, (1, 28, 28), 10)
    _check_against_files(splits, fake, "fashion-mnist")
    pixel = int(fake.train_x[3, 0, 27, 0])
    expected = (pixel / 255 - 0.2860) / 0.3530
    assert splits.train.x[3, 0, 27, 0].item() == pytest.approx(expected, abs=1e-6)


def test_fashion_mnist_torchvision_layout_is_found(tmp_path: Path) -> None:
    fake = write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=4, n_test=3)
    splits = load_dataset("fashion-mnist", tmp_path, download=False)
    assert torch.equal(splits.train.y, torch.from_numpy(fake.train_y))


def test_bad_idx_header_is_a_user_error(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 2), dtype=np.uint8))
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_download_failure_names_files_and_folder(
    tmp_path: Path, _offline_and_fresh: list[str]
) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert _offline_and_fresh == ["FashionMNIST"]


@pytest.mark.skipif(
    data._find_fashion_mnist(data.DEBIAN_FASHION_MNIST_DIR) is None,
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist() -> None:
    splits = load_dataset("fashion-mnist", download=False)
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.train.input_shape == (1, 28, 28) and splits.train.num_classes == 10
    assert torch.equal(torch.bincount(splits.test.y), torch.full((10,), 1000))
    assert abs(splits.train.x.mean().item()) < 0.01  # the published constants fit the real data
    assert abs(splits.train.x.std().item() - 1) < 0.01


# --- digits --------------------------------------------------------------------------------------


def test_digits_shapes_and_stratified_split() -> None:
    splits = load_dataset("digits")
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == 360 and splits.classes == tuple("0123456789")
    _check_split(splits.train, 1437, (1, 8, 8), 10)
    test_share = torch.bincount(splits.test.y) / torch.bincount(
        torch.cat([splits.train.y, splits.test.y])
    )
    assert torch.all((test_share - 0.2).abs() < 0.02)
    assert abs(splits.train.x.mean().item()) < 0.05 and abs(splits.train.x.std().item() - 1) < 0.05


def test_digits_split_is_deterministic_and_matches_sklearn() -> None:
    from sklearn.datasets import load_digits

    first = load_dataset("digits")
    data.clear_dataset_cache()
    second = load_dataset("digits")
    assert first is not second
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    raw = load_digits()
    i = int(np.flatnonzero((raw.images.reshape(1797, -1) == 16).any(axis=1))[0])
    flat = torch.cat([first.train.x, first.test.x]).reshape(-1, 64)
    expected = torch.tensor((raw.images[i].reshape(-1) / 16 - 0.3053) / 0.3760, dtype=torch.float32)
    assert ((flat - expected).abs().amax(dim=1) < 1e-5).any()


# --- synthetic -----------------------------------------------------------------------------------


def _nearest_mean_accuracy(splits: DatasetSplits) -> float:
    """Test accuracy of a nearest-class-mean classifier fit on the train split."""
    train, test = splits.train, splits.test
    means = torch.stack([train.x[train.y == c].mean(0) for c in range(train.num_classes)])
    distances = torch.cdist(test.x.flatten(1), means.flatten(1))
    return (distances.argmin(1) == test.y).float().mean().item()


def test_synthetic_default_shapes() -> None:
    splits = load_dataset("synthetic")
    _check_split(splits.train, 2000, (3, 32, 32), 10)
    _check_split(splits.test, 500, (3, 32, 32), 10)
    assert torch.equal(torch.bincount(splits.train.y), torch.full((10,), 200))
    assert abs(splits.train.x.std().item() - 1) < 0.1


def test_synthetic_is_deterministic_and_seeded() -> None:
    spec = SyntheticSpec(num_classes=4, input_shape=(1, 6, 5), train_size=40, test_size=8, seed=3)
    first = load_dataset("synthetic", synthetic=spec)
    data.clear_dataset_cache()
    again = load_dataset("synthetic", synthetic=SyntheticSpec(4, (1, 6, 5), 40, 8, 3))
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    other = load_dataset("synthetic", synthetic=SyntheticSpec(4, (1, 6, 5), 40, 8, seed=4))
    assert not torch.equal(first.train.x, other.train.x)
    bigger = load_dataset("synthetic", synthetic=SyntheticSpec(4, (1, 6, 5), 80, 8, 3))
    assert torch.equal(first.test.x, bigger.test.x)  # test set independent of train_size


@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
def test_synthetic_images_do_not_depend_on_the_generation_chunk(chunk: int) -> None:
    """Chunks bound the generator's memory (2 million images at 100,000 clients); the images are
    those of one whole-array expression, bit for bit, whatever the chunk."""
    from fedbarrier.data.synthetic import _synthetic_split

    means = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    x, y = _synthetic_split(np.random.default_rng(5), means, 40, 0.7, chunk=chunk)
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.arange(40) % 4)
    draw = rng.standard_normal((40, 2, 3, 3), dtype=np.float32)
    expected = means[labels].astype(np.float32) + np.float32(0.7) * draw
    expected /= np.float32(np.sqrt(1.0 + 0.7**2))
    assert np.array_equal(y, labels) and x.dtype == np.float32
    assert np.array_equal(x, expected)


@pytest.mark.parametrize(("noise", "min_accuracy"), [(1.0, 0.95), (20.0, 0.3)])
def test_synthetic_is_learnable(noise: float, min_accuracy: float) -> None:
    splits = load_dataset("synthetic", synthetic=SyntheticSpec(noise=noise))
    assert _nearest_mean_accuracy(splits) >= min_accuracy  # chance is 0.1


def test_synthetic_spec_validation() -> None:
    with pytest.raises(UserError, match=r"input_shape \(3, 32\) is invalid"):
        SyntheticSpec(input_shape=(3, 32))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="num_classes 1 is invalid; use an integer >= 2"):
        SyntheticSpec(num_classes=1)
    with pytest.raises(UserError, match="noise -1.0 is invalid"):
        SyntheticSpec(noise=-1.0)
    assert SyntheticSpec(input_shape=[1, 4, 4]).input_shape == (1, 4, 4)  # type: ignore[arg-type]


# --- API contract --------------------------------------------------------------------------------


def test_unknown_name_lists_datasets() -> None:
    with pytest.raises(UserError) as info:
        load_dataset("mnist")
    assert "'mnist'" in str(info.value) and all(name in str(info.value) for name in DATASETS)


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as info:
        load_dataset("cifar10", missing)
    assert str(missing) in str(info.value)


def test_results_are_cached_per_key(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)
    assert load_dataset("cifar10", tmp_path) is load_dataset("cifar10", str(tmp_path) + "/")
    assert load_dataset("synthetic") is load_dataset("synthetic", synthetic=SyntheticSpec())
    assert load_dataset("synthetic") is not load_dataset(
        "synthetic", synthetic=SyntheticSpec(seed=1)
    )


def test_subset_copies_and_accepts_numpy_and_torch() -> None:
    ds = load_dataset("digits").train
    picked = ds.subset(np.array([5, 0, 5], dtype=np.int32)[::-1])
    assert torch.equal(picked.y, ds.y[[5, 0, 5]]) and picked.num_classes == 10
    picked.x.zero_()
    assert ds.x[5].abs().sum() > 0  # the cached dataset was not touched
    mask = ds.y == 3
    assert torch.equal(ds.subset(mask).y, ds.y[mask]) and len(ds.subset(torch.tensor([1]))) == 1
