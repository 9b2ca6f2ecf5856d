"""TensorBoard event files of a run, ``RUN_DIR/tensorboard/``, derived from its records.

Each round's ``metrics.jsonl`` line and ``barriers.jsonl`` records become scalars at step =
round (:func:`round_scalars`, a pure function); the resolved config is a text summary, the final
heatmaps images. Tags are grouped so that TensorBoard shows one section per family:

- ``accuracy/*``, ``loss/*``, ``communication/*``, ``time/*``, ``round_barrier/*``, ``strategy/*``:
  every numeric key of a round's record (``accuracy/global_test_accuracy``,
  ``communication/bytes_sent``, ``round_barrier/barrier_full_test_loss``, ...);
- ``barrier_full/<split>_<metric>`` (and ``barrier_full_se/...``): the server-side full barrier;
  with ``barriers.align`` the aligned values have split ``<split>-aligned`` in every tag;
- ``barrier_<family>_<split>_<metric>/<NN>_<layer set>``: per-layer and cumulative barriers, the mean
  over default clients, one tag per layer set (``barrier_per_layer_test_loss/02_fc1``,
  ``barrier_shallow_test_loss/03_+fc1``: the first 3 layers, fc1 the last to join);
- ``local_barrier_full_<split>_<metric>/{mean,q10,q50,q90,max}`` and
  ``local_barrier_<family>_<split>_<metric>/<NN>_<layer set>`` (means over clients), for the local
  splits measured by the clients.

The Custom Scalars dashboard gets a layout with one chart per family and split, one line per
layer set (:func:`layout`).

A resumed run opens a new event file with ``purge_step = 0``: TensorBoard (its own
``EventAccumulator`` too) then drops every earlier event and the rounds up to the resume point
are written again from the records. The events are therefore always those of the records, with no
step twice, whatever a kill left behind in the old files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedbarrier.plots.records import aligned_record, is_local, layer_order, num

FOLDER = "tensorboard"
SERVER_FAMILIES = ("per_layer", "shallow", "deep")
LOCAL_STATS = ("mean", "q10", "q50", "q90", "max")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")

Record = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Records -> scalars (pure)
# ---------------------------------------------------------------------------------------------
def metric_tag(key: str) -> str:
    """The tag of a ``metrics.jsonl`` key: its section, then the key."""
    if "seconds" in key or key.endswith("_share"):
        section = "time"
    elif key.startswith("barrier_"):  # the round's summary of the barrier records
        section = "round_barrier"
    elif "accuracy" in key:
        section = "accuracy"
    elif "loss" in key:
        section = "loss"
    elif key.startswith("bytes_"):
        section = "communication"
    else:
        section = "strategy"
    return f"{section}/{_safe(key)}"


def round_scalars(metrics: Record | None, barriers: Iterable[Record]) -> dict[str, float]:
    """Every scalar of one round: tag -> value (NaN where a record holds null)."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if key != "round" and (isinstance(value, (int, float)) and not isinstance(value, bool)
                               or value is None):
            out[metric_tag(key)] = num(value)
    for rec in barriers:
        if "skipped" in rec:
            continue
        out.update(_local_scalars(rec) if is_local(rec) else _server_scalars(rec))
        if isinstance(rec.get("aligned"), Mapping):  # tags of split "<split>-aligned"
            aligned = aligned_record(rec)
            out.update(_local_scalars(aligned) if is_local(rec) else _server_scalars(aligned))
    return out


def _server_scalars(rec: Record) -> dict[str, float]:
    out: dict[str, float] = {}
    split = _safe(str(rec["split"]))
    for metric, value in (rec.get("full") or {}).items():
        out[f"barrier_full/{split}_{metric}"] = num(value)
        se = rec.get("full_se")
        if isinstance(se, Mapping) and metric in se:
            out[f"barrier_full_se/{split}_{metric}"] = num(se[metric])
    return out | _layer_set_means(rec, "barrier")


def _local_scalars(rec: Record) -> dict[str, float]:
    out: dict[str, float] = {}
    split = _safe(str(rec["split"]))
    for metric, summary in (rec.get("full") or {}).items():
        if isinstance(summary, Mapping):
            for stat in LOCAL_STATS:
                if stat in summary:
                    out[f"local_barrier_full_{split}_{metric}/{stat}"] = num(summary[stat])
    return out | _layer_set_means(rec, "local_barrier")


def _layer_set_means(rec: Record, prefix: str) -> dict[str, float]:
    """``<prefix>_<family>_<split>_<metric>/<layer set>``: the mean of each per-layer and
    cumulative entry (over default clients server-side, over clients locally)."""
    out: dict[str, float] = {}
    split = _safe(str(rec["split"]))
    for family, names in _layer_sets(rec).items():
        for metric, entries in (rec.get(family) or {}).items():
            values = entries.values() if isinstance(entries, Mapping) else entries
            for name, entry in zip(names, values):
                if isinstance(entry, Mapping):
                    out[f"{prefix}_{family}_{split}_{metric}/{name}"] = num(entry.get("mean"))
    return out


def _layer_sets(rec: Record) -> dict[str, list[str]]:
    """Tag names of the per-layer and cumulative entries, numbered so they sort in model order."""
    layers = layer_order([dict(rec)])
    return {"per_layer": [f"{i:02d}_{_safe(layer)}" for i, layer in enumerate(layers, 1)],
            "shallow": [f"{k:02d}_+{_safe(layer)}" for k, layer in enumerate(layers, 1)],
            "deep": [f"{k:02d}_+{_safe(layer)}" for k, layer in enumerate(reversed(layers), 1)]}


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def layout(splits: Sequence[str], metrics: Sequence[str] = ("loss", "error")) -> dict[str, Any]:
    """The Custom Scalars layout: per family, one chart per (split, metric), a line per layer set."""
    server = [s for s in splits if not is_local(s)]
    local = [s for s in splits if is_local(s)]
    charts: dict[str, Any] = {
        "accuracy and loss": {
            "accuracy": ["Multiline", [r"^accuracy/(global|local)_test_accuracy$"]],
            "loss": ["Multiline", [r"^loss/(train_loss|global_test_loss|local_test_loss)$"]]},
        "full barrier": {f"{metric}": ["Multiline", [rf"^(local_)?barrier_full/.*_{metric}$",
                                                     rf"^local_barrier_full_.*_{metric}/mean$"]]
                         for metric in metrics},
    }
    for family in SERVER_FAMILIES:
        charts[f"{family.replace('_', '-')} barrier (server)"] = {
            f"{split}, {metric}": ["Multiline", [rf"^barrier_{family}_{_safe(split)}_{metric}/"]]
            for split in server for metric in metrics}
        charts[f"{family.replace('_', '-')} barrier (local, mean over clients)"] = {
            f"{split}, {metric}": ["Multiline", [rf"^local_barrier_{family}_{_safe(split)}_{metric}/"]]
            for split in local for metric in metrics}
    charts["local full barrier, spread over clients"] = {
        f"{split}, {metric}": ["Multiline", [rf"^local_barrier_full_{_safe(split)}_{metric}/"]]
        for split in local for metric in metrics}
    return {category: chart for category, chart in charts.items() if chart}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class EventLog:
    """The writer of ``RUN_DIR/tensorboard``: rounds as they end, images at the end."""

    def __init__(self, run_path: Path, *, config_text: str, splits: Sequence[str]) -> None:
        folder = Path(run_path) / FOLDER
        earlier = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
        # purge_step=0: readers drop what earlier files hold (a killed or resumed run's events)
        self.writer = _writer(folder, purge_step=0 if earlier else None)
        self.writer.add_custom_scalars(layout(splits))
        indented = "\n".join("    " + line for line in config_text.splitlines())
        self.writer.add_text("config", indented, global_step=0)

    def write_round(self, server_round: int, metrics: Record | None, barriers: Iterable[Record]) -> None:
        for tag, value in round_scalars(metrics, barriers).items():
            self.writer.add_scalar(tag, value, global_step=server_round)
        self.writer.flush()

    def replay(self, metrics: Sequence[Record], barriers: Sequence[Record], upto: int) -> None:
        """Write rounds 0 .. ``upto`` again from the records (a resumed run's first step)."""
        by_round: dict[int, list[Record]] = {}
        for rec in barriers:
            by_round.setdefault(int(rec["round"]), []).append(rec)
        for rec in metrics:
            if int(rec["round"]) <= upto:
                self.write_round(int(rec["round"]), rec, by_round.get(int(rec["round"]), []))

    def close(self) -> None:
        self.writer.close()


def write_images(run_path: Path, paths: Iterable[Path], step: int) -> None:
    """A finished run's plots (PNG files) as images ``plots/<name>`` at ``step`` (its last round).

    The PNG bytes go into the event file as they are (TensorBoard stores images PNG-encoded):
    decoding and encoding them again took ~0.1 s a plot, 3 s of the quickstart's run.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    writer = _writer(Path(run_path) / FOLDER, purge_step=None)
    try:
        for path in paths:
            data = Path(path).read_bytes()
            width, height = png_size(data)
            image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
            summary = Summary(value=[Summary.Value(tag=f"plots/{Path(path).stem}", image=image)])
            writer._get_file_writer().add_summary(summary, step)
    finally:
        writer.close()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _writer(folder: Path, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=purge_step, flush_secs=10)
