"""Round hooks that record and show a run: saved client models, ``metrics.jsonl``, TensorBoard
events, progress."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from fedbarrier.fl.round import RoundRecord
from fedbarrier.measure.hook import ClientModels
from fedbarrier.outputs.progress import Display, active_display, latest_text
from fedbarrier.runtime.rundir import RunDir, save_state_dict


class CheckpointHook:
    """Saves each client's returned model (``client-K.pt``, K = partition id) every round."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def before_aggregation(self, models: ClientModels) -> None:
        for cid, state in zip(models.client_ids, models.states):
            save_state_dict(self.run_dir.checkpoint_path(models.server_round, f"client-{cid}"),
                            state)

    def on_round_end(self, record: RoundRecord) -> None:
        return None


class MetricsRecorder:
    """Appends each round's record to ``metrics.jsonl``."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def before_aggregation(self, models: ClientModels) -> None:
        return None

    def on_round_end(self, record: RoundRecord) -> None:
        self.run_dir.append_metrics(record.to_json())


class TensorBoardRecorder:
    """Writes each round's scalars to ``RUN_DIR/tensorboard`` as the round ends.

    The round's barrier records reach it through :meth:`barrier_written` (called beside each
    append to ``barriers.jsonl``); all are written before the round's ``on_round_end``. A resumed
    run first writes the rounds it keeps again from the records (see
    :mod:`fedbarrier.outputs.tensorboard`).
    """

    def __init__(self, run_dir: RunDir, *, config_text: str, splits: Sequence[str],
                 completed_rounds: int) -> None:
        from fedbarrier.outputs.tensorboard import EventLog

        self.log = EventLog(run_dir.path, config_text=config_text, splits=splits)
        if completed_rounds > 0:
            self.log.replay(run_dir.metrics(), list(run_dir.barriers()), completed_rounds)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def barrier_written(self, record: dict[str, Any]) -> None:
        with self._lock:  # the server-side measurement writes from the compute thread
            self._pending.append(record)

    def before_aggregation(self, models: ClientModels) -> None:
        return None

    def on_round_end(self, record: RoundRecord) -> None:
        with self._lock:
            mine = [r for r in self._pending if r.get("round") == record.round]
            self._pending = [r for r in self._pending if r.get("round") != record.round]
        self.log.write_round(record.round, record.to_json(), mine)

    def close(self) -> None:
        self.log.close()


class ProgressPrinter:
    """One line per round: losses, accuracies, the full barrier, time and ETA."""

    FORMATS = {"train_loss": "train loss {:.3f}", "global_test_accuracy": "global acc {:.1f}%",
               "local_test_accuracy": "local acc {:.1f}%",
               "barrier_full_test_loss": "barrier test loss {:+.3f}",
               "barrier_full_test_error": "err {:+.1f}pp",
               "barrier_local_full_local-train_error": "| local-train err {:+.1f}pp",
               "barrier_local_full_local-test_error": "local-test err {:+.1f}pp"}

    def __init__(self, num_rounds: int, stream: TextIO = sys.stderr, first_round: int = 1) -> None:
        self.num_rounds = num_rounds
        self.stream = stream
        self.first_round = first_round
        self.start = time.perf_counter()

    def before_aggregation(self, models: ClientModels) -> None:
        return None

    def on_round_end(self, record: RoundRecord) -> None:
        print(self.line(record.to_json()), file=self.stream, flush=True)

    def line(self, values: dict[str, Any]) -> str:
        r = values["round"]
        parts = [f"round {r:>3}/{self.num_rounds}"]
        for key, pattern in self.FORMATS.items():
            value = values.get(key)
            if isinstance(value, (int, float)):
                parts.append(pattern.format(value))
        elapsed = time.perf_counter() - self.start
        if r >= self.first_round:
            eta = elapsed / (r - self.first_round + 1) * (self.num_rounds - r)
            parts.append(f"{values.get('wall_seconds', 0.0):.1f}s  ETA {eta:.0f}s")
        return "  ".join(parts)


class LiveRounds:
    """The run's bar in the live display: round n/N, ETA, the latest accuracy and barrier."""

    def __init__(self, display: Display, num_rounds: int, first_round: int = 1, label: str = "") -> None:
        self.display = display
        self.label = label or "rounds"
        self.task = display.add(self.label, total=num_rounds, completed=first_round - 1)

    def before_aggregation(self, models: ClientModels) -> None:
        return None

    def on_round_end(self, record: RoundRecord) -> None:
        self.display.update(self.task, completed=record.round, latest=latest_text(record.to_json()))

    def close(self) -> None:
        self.display.finish(self.task)


def progress_hook(num_rounds: int, first_round: int, label: str = "") -> LiveRounds | ProgressPrinter:
    """A bar in the open live display (on a terminal), else one plain line per round."""
    display = active_display()
    if display is None:
        return ProgressPrinter(num_rounds, first_round=first_round)
    return LiveRounds(display, num_rounds, first_round, label)
