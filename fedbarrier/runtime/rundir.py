"""The run directory: everything a run did, written so that a killed run never leaves half a file.

Layout::

    RUN_DIR/
      config.toml        fully resolved config
      run.json           versions, git revision, command line, start time (and each resume's)
      partition.json     per-client sample and class counts
      metrics.jsonl      one JSON object per round
      barriers.jsonl     one JSON object per barrier measurement (round x split)
      checkpoints/round-NNNN/client-K.pt, global.pt   (when output.save_client_models)
      plots/*.png

JSON lines are appended with a single ``write`` of a complete line followed by ``fsync``; other
files are written to a temporary name and renamed into place (atomic on POSIX).
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.errors import UserError

METRICS_FILE = "metrics.jsonl"
BARRIERS_FILE = "barriers.jsonl"
RUN_MARKERS = ("config.toml", METRICS_FILE, "summary.md")  # what --force may replace


def json_ready(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (the reader sees 'not a number' explicitly)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one complete line in a single write; fsync so a crash keeps whole lines only."""
    line = json.dumps(json_ready(record), allow_nan=False, separators=(",", ":")) + "\n"
    with open(path, "ab") as fh:
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines file (a torn last line, if any, is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def save_state_dict(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """torch.save through a temporary file, so a checkpoint is either complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    return False


def _loadable(value: Any, where: str) -> Any:
    """``value`` with numpy numbers and arrays as Python numbers and tensors, so that
    ``torch.load(weights_only=True)`` can read it back on resume; a TypeError naming the place
    of anything else it could not read (failing at save, not at resume)."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, Mapping):
        return {k: _loadable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_loadable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"strategy {where} holds a {type(value).__name__}; a strategy state may hold "
                    "tensors, numbers, strings, None, lists and dicts")


def git_revision() -> str | None:
    """The fedbarrier source's git revision (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info() -> dict[str, Any]:
    """Versions and revision recorded with every run, so results carry what produced them."""
    import flwr
    import numpy

    import fedbarrier

    return {
        "fedbarrier": fedbarrier.__version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        # Under flwr's Deployment Engine the process gets an access token on its command line.
        "command": ["<redacted>" if i and sys.argv[i - 1] == "--token" else a
                    for i, a in enumerate(sys.argv)],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunDir:
    """A run directory. Creating one refuses to overwrite an existing run unless ``force``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> RunDir:
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise UserError(f"run directory {str(p)!r} exists and is not a directory")
        if p.exists() and any(p.iterdir()) and not force:
            raise UserError(f"run directory {str(p)!r} already holds a run; pass --force to "
                            "overwrite it or --out to choose another")
        if p.exists() and force and any(p.iterdir()):
            if not any((p / name).exists() for name in RUN_MARKERS):
                raise UserError(f"{str(p)!r} is not empty and holds no run; --force only replaces "
                                "a previous run directory")
            # Everything of the previous run goes: stale client state or server state would
            # silently feed the new run (clients read their newest earlier state).
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def barriers_path(self) -> Path:
        return self.path / BARRIERS_FILE

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def write_json(self, name: str, data: Any) -> None:
        write_atomic(self.path / name, json.dumps(json_ready(data), indent=1) + "\n")

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)

    def append_barriers(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.barriers_path, record)

    def checkpoint_path(self, server_round: int, name: str) -> Path:
        return self.path / "checkpoints" / f"round-{server_round:04d}" / f"{name}.pt"

    # -- resumable server state ----------------------------------------------------------------
    def state_path(self, server_round: int, name: str) -> Path:
        return self.path / "state" / f"{name}-{server_round:04d}.pt"

    def save_server_state(self, server_round: int, global_state: Mapping[str, torch.Tensor],
                          strategy_state: Mapping[str, Any] | None) -> None:
        """The global model (and strategy state) after ``server_round``; older rounds dropped.

        A strategy state is JSON (readable), or a torch file where it holds tensors (e.g. the
        models FedDC hands over in the next round).
        """
        save_state_dict(self.state_path(server_round, "global"), global_state)
        as_torch = self.state_path(server_round, "strategy")
        as_json = as_torch.with_suffix(".json")
        if strategy_state is not None and _holds_tensors(strategy_state):
            buffer = io.BytesIO()
            torch.save(_loadable(strategy_state, "state_dict()"), buffer)
            write_atomic(as_torch, buffer.getvalue())
            as_json.unlink(missing_ok=True)  # an earlier attempt's, of the other kind
        elif strategy_state is not None:
            write_atomic(as_json, json.dumps(json_ready(strategy_state)))
            as_torch.unlink(missing_ok=True)
        for old in sorted((self.path / "state").glob("*-*.*")):
            number = old.stem.rsplit("-", 1)[-1]
            if number.isdigit() and int(number) < server_round - 1:
                old.unlink(missing_ok=True)

    def load_server_state(self, server_round: int) -> tuple[dict[str, torch.Tensor],
                                                            dict[str, Any] | None]:
        global_state = torch.load(self.state_path(server_round, "global"), weights_only=True)
        as_torch = self.state_path(server_round, "strategy")
        if as_torch.exists():
            return global_state, torch.load(as_torch, weights_only=True)
        as_json = as_torch.with_suffix(".json")
        return global_state, json.loads(as_json.read_text()) if as_json.exists() else None

    def last_complete_round(self) -> int:
        """The last round with both a metrics record and the server state to resume from."""
        done = [m["round"] for m in self.metrics() if isinstance(m.get("round"), int)]
        done = [r for r in done if r == 0 or self.state_path(r, "global").exists()]
        return max(done) if done else -1

    def truncate_after(self, server_round: int) -> None:
        """Drop every record and checkpoint of rounds after ``server_round`` (and torn lines)."""
        for path in (self.metrics_path, self.barriers_path):
            keep = [r for r in read_jsonl(path) if r.get("round", 0) <= server_round]
            write_atomic(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep))
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir():
            for folder in checkpoints.glob("round-*"):
                if int(folder.name.split("-")[1]) > server_round:
                    for f in folder.iterdir():
                        f.unlink()
                    folder.rmdir()

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def barriers(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.barriers_path)
