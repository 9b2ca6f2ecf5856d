"""The dataset handed from the driver to client processes through memory-mapped files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fedbarrier.data.federation as fedmod
from fedbarrier.config import load_config
from fedbarrier.data.datasets import load_dataset
from fedbarrier.data.federation import federation, share_data, use_shared_data
from fedbarrier.data.shared import read_splits, write_splits
from tests.conftest import TINY


@pytest.fixture
def fresh_federation():
    """No cached federation or shared folder leaks into or out of a test."""
    federation.cache_clear()
    yield
    use_shared_data(None)
    federation.cache_clear()


def test_written_splits_read_back_identical(tmp_path: Path) -> None:
    splits = load_dataset("digits")
    write_splits(splits, tmp_path, {"dataset": "digits"})
    back = read_splits(tmp_path, {"dataset": "digits"})
    assert back is not None
    assert (back.name, back.classes) == (splits.name, splits.classes)
    for split in ("train", "test"):
        mine, theirs = getattr(back, split), getattr(splits, split)
        assert mine.num_classes == theirs.num_classes
        assert mine.x.dtype == torch.float32 and mine.y.dtype == torch.int64
        assert torch.equal(mine.x, theirs.x) and torch.equal(mine.y, theirs.y)


def test_another_key_or_no_folder_reads_nothing(tmp_path: Path) -> None:
    write_splits(load_dataset("digits"), tmp_path, {"dataset": "digits", "seed": 0})
    assert read_splits(tmp_path, {"dataset": "digits", "seed": 1}) is None
    assert read_splits(tmp_path / "absent", {"dataset": "digits", "seed": 0}) is None


def shared_and_mapped(cfg, folder: Path, monkeypatch: pytest.MonkeyPatch, forbidden: str,
                      message: str):
    """(this process's federation, the one rebuilt from its share in ``folder``), with
    ``fedbarrier.data.federation.<forbidden>`` raising ``message`` from the share on."""
    expected = federation(cfg.data, cfg.seed)
    share_data(cfg.data, cfg.seed, folder)
    federation.cache_clear()

    def must_not_be_called(*args: object, **kwargs: object) -> None:
        raise AssertionError(message)

    monkeypatch.setattr(fedmod, forbidden, must_not_be_called)
    use_shared_data(folder)
    return expected, federation(cfg.data, cfg.seed)


def test_federation_maps_the_shared_data_instead_of_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_federation: None) -> None:
    cfg = load_config(None, TINY)
    expected, mapped = shared_and_mapped(cfg, tmp_path, monkeypatch, "load_dataset",
                                         "loaded the dataset although it was shared")
    assert mapped is not expected
    assert torch.equal(mapped.splits.train.x, expected.splits.train.x)
    assert [p.tolist() for p in mapped.train_parts] == [p.tolist() for p in expected.train_parts]
    assert torch.equal(mapped.client_train(1).x, expected.client_train(1).x)


def test_the_shared_partition_is_used_and_equals_the_computed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_federation: None) -> None:
    """Workers take the driver's partition instead of partitioning again (which imports
    flwr-datasets, ~2 s a process); a config it was not made for partitions itself."""
    cfg = load_config(None, [*TINY, "data.train_size=200", "data.test_size=50"])
    expected, mapped = shared_and_mapped(cfg, tmp_path, monkeypatch, "partition_labels",
                                         "partitioned again although the partition was shared")
    for mine, theirs in ((mapped.train_parts, expected.train_parts),
                         (mapped.test_parts, expected.test_parts)):
        assert len(mine) == len(theirs) == cfg.data.num_clients
        assert all(a.dtype == b.dtype and a.tolist() == b.tolist() for a, b in zip(mine, theirs))
    assert torch.equal(mapped.client_test(2).x, expected.client_test(2).x)  # the same subset

    other = load_config(None, [*TINY, "data.train_size=200", "data.test_size=50", "data.alpha=2"])
    with pytest.raises(AssertionError, match="partitioned again"):
        federation(other.data, other.seed)


def test_a_worker_with_the_share_never_imports_flwr_datasets(tmp_path: Path,
                                                             fresh_federation: None) -> None:
    cfg = load_config(None, TINY)
    share_data(cfg.data, cfg.seed, tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from fedbarrier.config import load_config
        from fedbarrier.data.federation import federation, use_shared_data
        from tests.conftest import TINY
        use_shared_data(Path({str(tmp_path)!r}))
        cfg = load_config(None, TINY)
        federation(cfg.data, cfg.seed).client_train(0)
        print("flwr_datasets" in sys.modules)
    """)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_federation_loads_itself_when_the_share_is_another_dataset(
        tmp_path: Path, fresh_federation: None) -> None:
    cfg = load_config(None, TINY)
    other = load_config(None, [*TINY, "data.synthetic_noise=1.0"])
    share_data(other.data, other.seed, tmp_path)
    expected = federation(cfg.data, cfg.seed)
    federation.cache_clear()
    use_shared_data(tmp_path)
    assert torch.equal(federation(cfg.data, cfg.seed).splits.train.x, expected.splits.train.x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_in_training() -> None:
    """In a fresh process, a local epoch of the small CNN page-faults its activations in anew on
    every batch unless freed blocks are kept (2,500-15,000 faults per epoch here without)."""
    script = textwrap.dedent("""
        import resource, sys, torch
        from fedbarrier.learn.models import build_model
        from fedbarrier.runtime.process_tuning import keep_freed_memory
        from fedbarrier.learn.local import train
        if sys.argv[1] == "on":
            keep_freed_memory()
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = build_model("cnn", (3, 32, 32), 10)
        x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
        def epoch():
            train(model, x, y, epochs=1, batch_size=32, lr=lambda step, total: 0.01,
                  momentum=0.9, weight_decay=0.0, seed=0, device=torch.device("cpu"))
        epoch()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            epoch()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    # Both at once (faults are counted per process): the wait is one torch start-up, not two.
    procs = {mode: subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE,
                                    text=True) for mode in ("on", "off")}
    outputs = {mode: proc.communicate(timeout=300)[0] for mode, proc in procs.items()}
    assert all(proc.returncode == 0 for proc in procs.values()), outputs
    faults = {mode: int(out) for mode, out in outputs.items()}
    # Not zero with the setting: the kernel's own memory daemons cause a few faults (0-1,536
    # seen); without it every epoch re-faults its activations.
    assert faults["on"] * 4 < faults["off"], faults


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux's /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and not line.startswith(("Rss", "Size")):
            inside = head[-1] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's smaps")
def test_reading_rows_of_a_mapped_dataset_leaves_none_of_its_pages_mapped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated client reads ~20 rows of a file of millions; before, each read row kept
    ~2 MiB of the file mapped in the process (large page-cache folios), so 10,000 clients'
    reads made every worker hold the whole file. Files above RELEASE_ABOVE only."""
    from fedbarrier.data import shared
    from fedbarrier.data.datasets import DatasetSplits, ImageDataset

    monkeypatch.setattr(shared, "RELEASE_ABOVE", 8 * 2**20)  # the train images, not the rest

    x = torch.randn(4000, 1, 32, 32)  # 16 MiB
    y = torch.arange(4000) % 10
    data = ImageDataset(x, y, 10)
    write_splits(DatasetSplits("synthetic", data, data.subset(torch.arange(5)), tuple("0123456789")),
                 tmp_path, {"k": 1})
    back = read_splits(tmp_path, {"k": 1})
    rows = torch.tensor([3, 1000, 2500, 3999])
    images, labels = back.train.rows(rows)
    assert torch.equal(images, x[rows]) and torch.equal(labels, y[rows])
    assert _mapped_kib(tmp_path / "train_x.bin") == 0
    assert torch.equal(back.train.subset(rows).x, x[rows])  # mapped again on the next read
    assert _mapped_kib(tmp_path / "train_x.bin") == 0
    back.train.x[rows].sum()  # a read that bypasses rows() keeps its pages: the check can fail
    assert _mapped_kib(tmp_path / "train_x.bin") > 0
    back.test.rows(torch.tensor([0, 4]))
    assert _mapped_kib(tmp_path / "test_x.bin") > 0  # small: stays mapped


def test_the_driver_maps_the_shared_files_during_a_run_and_loads_as_before_after(
        tmp_path: Path, fresh_federation, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedbarrier.data import shared
    from fedbarrier.data.federation import reading_shared_data

    monkeypatch.setattr(shared, "RELEASE_ABOVE", 0)  # every mapped tensor says so

    cfg = load_config(None, TINY)
    before = federation(cfg.data, cfg.seed)
    share_data(cfg.data, cfg.seed, tmp_path)
    with reading_shared_data(tmp_path):
        inside = federation(cfg.data, cfg.seed)
        assert inside is not before and inside.splits.train.release is not None  # mapped
        assert torch.equal(inside.splits.train.x, before.splits.train.x)
        assert all((a == b).all() for a, b in zip(inside.train_parts, before.train_parts))
    after = federation(cfg.data, cfg.seed)
    assert after is not inside and after.splits.train.release is None  # its own copy again
