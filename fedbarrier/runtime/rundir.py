"""The run directory: everything a run did, written so that a killed run never leaves half a file.

Layout::

    RUN_DIR/
      config.toml        fully resolved config
      run.json           versions, git revision, command line, start time (and each resume's)
      partition.json     per-client sample and class counts
      metrics.jsonl      one JSON object per round
      barriers.jsonl     one JSON object per barrier measurement (round x split)
      state/global-NNNN.pt, strategy-NNNN.*           the server's state of the last two rounds
      clients/client-K/round-NNNN.pt                  a client's own state of its last two rounds
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
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbarrier.errors import RunAborted, UserError

METRICS_FILE = "metrics.jsonl"
BARRIERS_FILE = "barriers.jsonl"
#: Top-level fields of metrics.jsonl and barriers.jsonl that are wall-clock measurements: the
#: only ones that differ between two runs of one config and seed (or a run and its resume).
TIMING_FIELDS = frozenset({"wall_seconds", "seconds", "barrier_seconds_train",
                           "barrier_seconds_test", "measure_seconds", "measure_share"})
RUN_MARKERS = ("config.toml", METRICS_FILE, "summary.md")  # what --force may replace
CLIENTS_DIR = "clients"  # the clients' own state folders (client-K/round-NNNN.pt)
ROUND_FILE = re.compile(r"round-(\d{4,})\.pt$")  # a client's state of one round


def client_folder(root: Path, client: int) -> Path:
    """Client ``client``'s state folder under ``root`` (a run's ``clients/``)."""
    return Path(root) / f"client-{client}"


def state_file(folder: Path, server_round: int) -> Path:
    """A client's state file of ``server_round`` in its folder (matches :data:`ROUND_FILE`)."""
    return folder / f"round-{server_round:04d}.pt"


def state_rounds(folder: Path) -> list[int]:
    """The rounds of the ``round-NNNN.pt`` state files in ``folder``, sorted."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := ROUND_FILE.match(p.name)))


def json_ready(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (the reader sees 'not a number' explicitly)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def cannot_write(path: Path, exc: OSError) -> RunAborted:
    """The one-line error for a write that failed mid-run (a full disk, a folder that went
    read-only): the path and the cause; the run can be resumed once that is fixed."""
    return RunAborted(f"cannot write {path}: {exc.strerror or exc}")


def write_atomic(path: Path, data: bytes | memoryview | str) -> None:
    """Write to a temporary sibling, fsync, then rename over ``path`` (on failure ``path`` is
    as it was and :func:`cannot_write`'s error is raised)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, exc) from exc


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one complete line in a single write; fsync so a crash keeps whole lines only.

    A write that fails (a full disk) is undone: the file is cut back to its size before it.
    """
    line = json.dumps(json_ready(record), allow_nan=False, separators=(",", ":")) + "\n"
    try:
        with open(path, "ab") as fh:
            size = fh.tell()
            try:
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            except OSError:
                fh.truncate(size)  # shrinking needs no space
                raise
    except OSError as exc:
        raise cannot_write(path, exc) from exc


def without_timings(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without its :data:`TIMING_FIELDS`: what must repeat exactly."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete lines of a JSON-lines file (a torn last line, if any, is ignored)."""
    return read_jsonl_checked(path)[0]


def read_jsonl_checked(path: Path) -> tuple[list[dict[str, Any]], bytes | None]:
    """The records up to the first damaged line (a torn or cut line, bytes that are not UTF-8
    text or not a JSON object), and that line (None when there is none)."""
    if not path.exists():
        return [], None
    out = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return out, line
        if not isinstance(record, dict):
            return out, line
        out.append(record)
    return out, None


_ROUND_PREFIX = re.compile(rb'^\{"round":(\d+)[,}]')  # how every record of a run starts


def save_state_dict(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """torch.save through :func:`write_atomic`: a checkpoint is either complete or absent, and a
    full disk gives :func:`cannot_write`'s one line (torch.save writing to a file reports it as
    "unexpected pos 704 vs 598")."""
    save_torch(path, {k: v.detach().cpu() for k, v in state.items()})


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer())


def _loads(path: Path) -> bool:
    """Whether ``path`` is a whole torch file (saved state is written whole or not at all; a
    copy cut short or a damaged disk can still leave less)."""
    try:
        torch.load(path, weights_only=True)
    except Exception:  # missing, cut short, not a torch file
        return False
    return True


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
        try:
            return cls._create(Path(path), force)
        except OSError as exc:  # a parent that is a file, no permission, a read-only disk
            raise UserError(f"cannot create run directory {str(path)!r}: {exc.strerror or exc}"
                            ) from None

    @classmethod
    def _create(cls, p: Path, force: bool) -> RunDir:
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
            save_torch(as_torch, _loadable(strategy_state, "state_dict()"))
            as_json.unlink(missing_ok=True)  # an earlier attempt's, of the other kind
        elif strategy_state is not None:
            write_atomic(as_json, json.dumps(json_ready(strategy_state)))
            as_torch.unlink(missing_ok=True)
        for old, r in self._server_state_files():
            if r < server_round - 1:
                old.unlink(missing_ok=True)

    def _server_state_files(self) -> Iterator[tuple[Path, int]]:
        """Each file in ``state/`` with the round it holds (``global-NNNN.pt`` and the like)."""
        for path in sorted((self.path / "state").glob("*-*.*")):
            number = path.stem.rsplit("-", 1)[-1]
            if number.isdigit():
                yield path, int(number)

    def load_server_state(self, server_round: int) -> tuple[dict[str, torch.Tensor],
                                                            dict[str, Any] | None]:
        global_state = torch.load(self.state_path(server_round, "global"), weights_only=True)
        as_torch = self.state_path(server_round, "strategy")
        if as_torch.exists():
            return global_state, torch.load(as_torch, weights_only=True)
        as_json = as_torch.with_suffix(".json")
        return global_state, json.loads(as_json.read_text()) if as_json.exists() else None

    def last_complete_round(self) -> int:
        """The last round to resume from (see :meth:`resume_point`); -1 when there is none."""
        return self.resume_point()[0]

    def resume_point(self) -> tuple[int, str | None]:
        """The last round on which the records, the server state and the clients' state agree,
        and why it is earlier than the last recorded round (None when it is not).

        A round r qualifies when ``metrics.jsonl`` holds whole records of rounds 0..r in order;
        the server's state of r loads (r > 0); ``barriers.jsonl`` is whole up to r (its records
        of a round are written before that round's metrics record, so a damaged line there may
        belong to any round from the last whole record's on); and every client that trained in
        rounds 1..r still has a state file of a round <= r, where clients keep state at all
        (they keep their last two rounds, so records cut short after the run went on can leave
        them without the state of r). Round 0 always qualifies: resuming there runs the run
        again from its start. -1: nothing was recorded.
        """
        records, damaged = read_jsonl_checked(self.metrics_path)
        metrics_damaged = damaged is not None
        rounds: list[int] = []
        for record in records:  # the whole prefix 0, 1, 2, ...
            if record.get("round") != len(rounds):
                metrics_damaged = True
                break
            rounds.append(len(rounds))
        if not rounds:
            return -1, None
        last = rounds[-1]
        why = [f"{METRICS_FILE} is damaged after round {last}"] if metrics_damaged else []
        barrier_records, damaged = read_jsonl_checked(self.barriers_path)
        if damaged is not None:
            # The damaged line's round, where its start survived; else it may belong to the
            # round of the last whole record (a round has several) or any later one.
            whole = [b.get("round") for b in barrier_records if isinstance(b.get("round"), int)]
            said = _ROUND_PREFIX.match(damaged)
            first_doubtful = int(said.group(1)) if said else max(whole, default=1)
            if first_doubtful <= last:
                last = first_doubtful - 1
                why.append(f"{BARRIERS_FILE} is damaged from round {first_doubtful} on")
        trained: dict[int, int] = {}  # client -> its first training round
        for record in records[1:last + 1]:
            for client in record.get("clients", []):
                trained.setdefault(int(client), int(record["round"]))
        folders = dict(self._client_folders())
        client_rounds = {c: state_rounds(folder) for c, folder in folders.items()}
        keeps_state = any(client_rounds.values())
        for r in range(last, 0, -1):
            if not self._server_state_loads(r):
                why.append(f"the server's state of round {r} is missing or damaged")
                continue
            lost = [c for c, first in sorted(trained.items()) if keeps_state and first <= r
                    and not any(x <= r for x in client_rounds.get(c, []))]
            if lost:
                why.append(f"client {lost[0]}'s state of round {r} or earlier is gone "
                           f"(it holds rounds {client_rounds.get(lost[0], [])})")
                continue
            # The file each client would read next must load (not cut short, a torch file).
            reads = {c: max(x for x in held if x <= r) for c, held in sorted(client_rounds.items())
                     if any(x <= r for x in held)}
            unreadable = [(c, x) for c, x in reads.items() if not _loads(state_file(folders[c], x))]
            if unreadable:
                c, x = unreadable[0]
                why.append(f"client {c}'s state of round {x} is damaged")
                continue
            return r, "; ".join(why) or None
        return 0, "; ".join(why) or None

    def _server_state_loads(self, server_round: int) -> bool:
        """The global model and strategy state of ``server_round`` load."""
        try:
            self.load_server_state(server_round)
        except Exception:  # missing, cut short or not a torch file: not a state to resume from
            return False
        return True

    def truncate_after(self, server_round: int) -> None:
        """Drop every record, checkpoint and state (server and clients) of rounds after
        ``server_round``, and damaged lines: a resumed run must not meet a later round's files
        (clients read their newest earlier state and keep their two newest rounds)."""
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
        for old, r in self._server_state_files():
            if r > server_round:
                old.unlink()
        for _, folder in self._client_folders():
            for r in state_rounds(folder):
                if r > server_round:
                    state_file(folder, r).unlink()

    def _client_folders(self) -> Iterator[tuple[int, Path]]:
        """Each client's state folder (``clients/client-K``) with its client id."""
        for folder in sorted((self.path / CLIENTS_DIR).glob("client-*")):
            if folder.name.removeprefix("client-").isdigit():
                yield int(folder.name.removeprefix("client-")), folder

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def barriers(self) -> Iterator[dict[str, Any]]:
        yield from read_jsonl(self.barriers_path)
