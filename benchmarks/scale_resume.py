"""Determinism and resume at scale: the scale benchmark's workload run twice, and once killed
with SIGKILL after round 2 and resumed; every record of metrics.jsonl and barriers.jsonl
(timings aside) and every saved client state must be equal.

    python -m benchmarks.scale_resume [--clients 10000] [--rounds 4]

The test suite checks the same at 400 clients (tests/test_resume.py, "cross-device").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.scale import workload
from fedbarrier.config import load_config, to_toml
from fedbarrier.fl.simulation import resume_experiment, run_experiment
from fedbarrier.runtime.rundir import without_timings


def records(run: Path, name: str) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (run / name).read_text().splitlines()]


def client_states(run: Path) -> dict[str, dict]:
    """Every client's saved state files, by path relative to the run."""
    return {str(f.relative_to(run)): torch.load(f, weights_only=True)
            for f in sorted((run / "clients").rglob("*.pt"))}


def same_states(a: dict[str, dict], b: dict[str, dict]) -> bool:
    """Whether two runs saved the same state files with bit-equal tensors."""
    def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    if a.keys() != b.keys():
        return False
    for name in a:
        mine, theirs = flat(a[name]), flat(b[name])
        if mine.keys() != theirs.keys() or not all(torch.equal(v, theirs[k])
                                                   for k, v in mine.items()):
            return False
    return True


def killed_and_resumed(cfg, folder: Path, after_round: int) -> tuple[Path, float]:
    """A `fedbarrier run` SIGKILLed (its whole process group, Ray included) once round
    ``after_round`` is recorded, then resumed here; the run folder and the resume's seconds."""
    config = folder / "exp.toml"
    config.write_text(to_toml(cfg))
    run, scratch = folder / "killed", Path(tempfile.mkdtemp(prefix="fbs-"))
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "fedbarrier", "run", str(config), "--quiet",
                             "--out", str(run)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > after_round:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-9", "-f", str(scratch)], check=False)  # Ray's own processes
    recorded = len(metrics.read_text().splitlines()) - 1 if metrics.exists() else 0
    if not 0 < recorded < cfg.train.rounds:
        raise SystemExit(f"the kill landed after {recorded} rounds, not mid-run")
    start = time.perf_counter()
    resume_experiment(run, progress=False)
    return run, time.perf_counter() - start


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    cfg = load_config(None, workload(args.clients, args.rounds))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = []
        for name in ("first", "second"):
            start = time.perf_counter()
            run_experiment(cfg, folder / name, progress=False)
            runs.append(folder / name)
            print(f"{name} uninterrupted run: {time.perf_counter() - start:.1f} s")
        killed, seconds = killed_and_resumed(cfg, folder, after_round=2)
        print(f"killed after round 2, resumed in {seconds:.1f} s")
        reference = client_states(runs[0])
        print(f"comparing {len(reference)} client state files")
        ok = True
        for label, run in (("second run", runs[1]), ("killed + resumed", killed)):
            same = all(records(run, f) == records(runs[0], f)
                       for f in ("metrics.jsonl", "barriers.jsonl"))
            states = bool(reference) and same_states(client_states(run), reference)
            print(f"{label} vs first, {args.clients} clients: records "
                  f"{'identical' if same else 'DIFFER'}, client states "
                  f"{'bit-equal' if states else 'DIFFER'}")
            ok = ok and same and states
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
