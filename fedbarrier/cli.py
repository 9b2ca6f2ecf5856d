"""The ``fedbarrier`` command line.

    fedbarrier run CONFIG [--set section.key=value ...] [--out RUN_DIR] [--force] [--dry-run]
    fedbarrier partitions CONFIG [--set ...] [--out DIR]
    fedbarrier plot RUN_DIR
    fedbarrier barriers MODEL_A.pt MODEL_B.pt [more.pt] --config CONFIG [--json]
    fedbarrier compare CONFIG --strategies fedavg,fedper,... [--seeds 0,1,2] [--grid KEY=V1,V2 ...]
    fedbarrier export RUN_DIR [--format csv|parquet] [--out DIR]
    fedbarrier analyze robustness|subspace RUN_DIR [--round N] [--clients 0,1] [--split test] ...
    fedbarrier analyze deep-linear [--out DIR]
    fedbarrier keys

Bad input prints one line ``error: ...`` and exits with status 2 (no traceback). Ctrl-C (SIGINT)
exits with status 130, wherever it lands; SIGTERM during a run with 143. During a simulation the
first of either drops the round in progress and stops cleanly (a second stops at once); the run
can then be resumed (:mod:`fedbarrier.runtime.stopping`).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from fedbarrier.config import describe, load_config
from fedbarrier.errors import RunAborted, RunInterrupted, UserError
from fedbarrier.runtime.process_tuning import freeze_heap


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment TOML file (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.alpha=0.5 (repeatable)")


def cmd_run(args: argparse.Namespace) -> int:
    with interrupts_deferred():  # torch, Flower and Ray load C extensions
        from fedbarrier.fl.simulation import resume_experiment, run_experiment

    if args.resume:
        check = load_config(args.config, args.overrides) if args.config else None
        run_dir = resume_experiment(args.resume, check, progress=not args.quiet,
                                    verbose=args.verbose)
    else:
        if not args.config:
            raise UserError("fedbarrier run needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            from fedbarrier.fl.simulation import off_main_thread, preflight

            off_main_thread(lambda: preflight(cfg))
            print(f"config {args.config} is valid: data, partition, model and strategy build; "
                  "nothing written")
            return 0
        out = Path(args.out) if args.out else Path("runs") / (cfg.name or "run")
        run_dir = run_experiment(cfg, out, force=args.force, progress=not args.quiet,
                                 verbose=args.verbose)
    print(f"run written to {run_dir.path}")
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from fedbarrier.data.federation import federation
    from fedbarrier.plots.partitions import plot_partition_counts

    cfg = load_config(args.config, args.overrides)
    stats = federation(cfg.data, cfg.seed).stats()
    print(stats.format_table())
    out = Path(args.out) if args.out else Path("runs") / (cfg.name or "run")
    path = plot_partition_counts(stats, out / "partitions.png",
                                 title=f"{cfg.data.dataset}, {cfg.data.partition}"
                                 + (f" alpha={cfg.data.alpha}" if cfg.data.partition == "dirichlet"
                                    else ""))
    print(f"bar chart written to {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fedbarrier.plots import plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl)")
    for path in plot_run(run_dir):
        print(path)
    return 0


def cmd_barriers(args: argparse.Namespace) -> int:
    from fedbarrier.offline import measure_checkpoints

    cfg = load_config(args.config, args.overrides)
    measure_checkpoints(cfg, [Path(p) for p in args.models], split=args.split,
                        as_json=args.json, weights=args.weights)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedbarrier.compare import compare, parse_grid, parse_list

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name or 'run'}-compare"
    compare(cfg, parse_list(args.strategies), parse_list(args.seeds, int), out, force=args.force,
            progress=not args.quiet, grid=parse_grid(args.grid))
    print(f"table and plots written to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedbarrier.api import load_run

    for path in load_run(args.run_dir).export(args.out, fmt=args.format):
        print(path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """The paper's robustness and subspace analyses of a run's saved clients, and the deep linear example."""
    if args.analysis == "deep-linear":
        from fedbarrier.analysis.deep_linear import analyze

        analyze(args.out, points=args.points, as_json=args.json)
        return 0
    from fedbarrier.analysis import parse_clients

    common = {"server_round": args.round, "clients": parse_clients(args.clients), "split": args.split,
              "draws": args.draws, "n": args.n, "seed": args.seed, "out": args.out, "as_json": args.json}
    if args.analysis == "robustness":
        from fedbarrier.analysis.robustness import analyze_run

        analyze_run(args.run_dir, **common)
    else:
        from fedbarrier.analysis.subspace import analyze_run as analyze_subspace
        from fedbarrier.analysis.subspace import parse_sigmas

        analyze_subspace(args.run_dir, sigmas=parse_sigmas(args.sigmas), scale=args.scale, **common)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    print(describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedbarrier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a federated simulation with barrier measurement")
    p.add_argument("config", nargs="?", help="experiment TOML file (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.alpha=0.5 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last completed round")
    p.add_argument("--out", help="run directory (default: runs/<experiment name>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config (data, partition, model, strategy, device) and exit; "
                        "writes nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("partitions", help="print per-client sample/class counts, save a chart")
    _add_config_args(p)
    p.add_argument("--out", help="folder for partitions.png (default: runs/<experiment name>)")
    p.set_defaults(func=cmd_partitions)

    p = sub.add_parser("plot", help="draw the plots of a run into RUN_DIR/plots")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("barriers", help="measure barriers between saved models")
    p.add_argument("models", nargs="+", help="two or more state-dict files (.pt)")
    p.add_argument("--config", required=True, help="experiment TOML giving model and data")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="data to measure on (train = union of all clients' training data)")
    p.add_argument("--weights", help="comma-separated aggregation weights (default: equal)")
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.set_defaults(func=cmd_barriers)

    p = sub.add_parser("compare", help="run several strategies on identical partitions and seeds")
    _add_config_args(p)
    p.add_argument("--strategies", required=True,
                   help="comma-separated names, e.g. fedavg,fedper,lg-fedavg,barrier-aware,local")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--out", help="folder (default: runs/<experiment name>-compare)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a config key over values, e.g. --grid data.alpha=0.1,0.5 "
                        "(repeatable: the product of all grids, strategies and seeds runs)")
    p.add_argument("--force", action="store_true",
                   help="start every run again (default: reuse finished runs, resume interrupted ones)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a run's tidy tables (metrics, barriers, distances)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--out", help="folder for the tables (default: RUN_DIR/tables)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="robustness and subspace analyses of saved client models")
    analyses = p.add_subparsers(dest="analysis", required=True)
    for name, text, draws in (("robustness", "one layer moved halfway to B vs to a random point", 5),
                              ("subspace", "noise in the training subspace, its complement and "
                               "along the interpolation direction", 3)):
        q = analyses.add_parser(name, help=text)
        q.add_argument("run_dir", help="a run saved with --set output.save_client_models=true")
        q.add_argument("--round", type=int, help="round of the checkpoints (default: the last saved)")
        q.add_argument("--clients", default="0,1", help="client ids of models A and B (default: 0,1)")
        q.add_argument("--split", choices=("train", "test"), default="test",
                       help="data (train = union of A's and B's training data)")
        q.add_argument("--draws", type=int, default=draws, help=f"random draws (default: {draws})")
        q.add_argument("--n", type=int, help="examples in the data sample (default: barriers.n of the run)")
        q.add_argument("--seed", type=int, help="seed of the random draws (default: the run's seed)")
        q.add_argument("--out", help="folder for the record and plots (default: RUN_DIR/analysis)")
        q.add_argument("--json", action="store_true", help="print the record as JSON")
        if name == "subspace":
            q.add_argument("--sigmas", nargs="+", metavar="SIGMA",
                           help="noise norms, e.g. 0.1,0.5,1 (default: 0.05 ... 1)")
            q.add_argument("--scale", choices=("distance", "absolute"), default="distance",
                           help="sigmas are multiples of ||A - B|| of each scope (default) or absolute")
        q.set_defaults(func=cmd_analyze)
    q = analyses.add_parser("deep-linear", help="the deep linear network example of BARRIERS.md")
    q.add_argument("--out", default="runs/deep-linear", help="folder (default: runs/deep-linear)")
    q.add_argument("--points", type=int, default=21, help="alphas on the grid (default: 21)")
    q.add_argument("--json", action="store_true", help="print the record as JSON")
    q.set_defaults(func=cmd_analyze)

    p = sub.add_parser("keys", help="list every config key with its default and meaning")
    p.set_defaults(func=cmd_keys)
    return parser


def _run_dir_of(args: argparse.Namespace) -> str:
    if getattr(args, "resume", None):
        return str(args.resume)
    if getattr(args, "out", None):
        return str(args.out)
    try:
        return str(Path("runs") / (load_config(args.config, args.overrides).name or "run"))
    except UserError:
        return "RUN_DIR"


def _resume_hint(args: argparse.Namespace, before: str = "") -> str:
    """``; resume with: fedbarrier run --resume RUN_DIR`` for a run, how to continue a comparison
    (other commands: '')."""
    if args.command == "compare":
        return f"; {before}continue with the same command: finished runs are reused"
    if args.command != "run":
        return ""
    return f"; {before}resume with: fedbarrier run --resume {_run_dir_of(args)}"


#: Set by :func:`main`'s SIGINT handler: the command was interrupted, so it must not exit 0.
_interrupted = threading.Event()


#: Set while :func:`interrupts_deferred` is active: SIGINT is remembered, raised at its end.
_deferring: list[bool] = []


def _interrupt(signum: int, frame: Any) -> None:
    """SIGINT while a command runs: remember it, then stop the command (as Python's handler does).

    Remembering is what counts: the KeyboardInterrupt may surface where it is lost (a ``__del__``,
    an exit handler of Flower, Ray or torch, a ``finally`` that raises something else).
    """
    _interrupted.set()
    if not _deferring:
        raise KeyboardInterrupt


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C inside the block stops the command when the block ends, not inside it.

    For importing torch, Flower and Ray: a KeyboardInterrupt raised while a C extension
    initializes aborted the process (status -6 and a C++ stack dump, seen with a Ctrl-C one
    second after ``fedbarrier run`` started).
    """
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    if not _deferring and _interrupted.is_set():
        raise KeyboardInterrupt


def _exit_interrupted(hint: str = "") -> NoReturn:
    """Exit with status 130, as a shell reports a process stopped by Ctrl-C.

    Without the interpreter's shutdown: Flower's server thread may still wait for replies that
    will never come, and would keep the process alive."""
    print(f"interrupted{hint}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt) if on_main_thread else None
    code = 0
    try:
        code = int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except RunAborted as exc:  # what was recorded is whole: say how to go on
        print(f"error: {exc}{_resume_hint(args, 'once that is fixed, ')}", file=sys.stderr)
        code = exc.exit_code
    except RunInterrupted as exc:  # stopped between rounds' records: whole, resumable
        print(f"{exc}{_resume_hint(args)}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        _interrupted.set()  # also one raised by other means than the handler
    except BaseException:
        if not _interrupted.is_set():  # else: fallout of the interrupt (e.g. Flower's wrapping)
            raise
    finally:
        if on_main_thread:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    # Whatever Flower, Ray or torch did with the KeyboardInterrupt, an interrupted command does
    # not report success. (A Ctrl-C after the restore above goes to the previous handler.)
    if _interrupted.is_set():
        # Records are appended atomically, so stopping here loses at most the round in progress.
        _exit_interrupted(_resume_hint(args))
    return code


def _exit_at_once(signum: int, frame: Any) -> None:
    """SIGINT outside :func:`main` (before a command starts, while the process exits)."""
    _exit_interrupted()


def _sigint_ends_the_process() -> None:
    """The executable's last exit handler. After it Python runs no more signal handlers: a
    SIGINT then would be dropped and the process exit 0; with the default action it ends the
    process as a signal does (a shell shows 130)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def console() -> None:
    """The ``fedbarrier`` executable: :func:`main`, then exit without the interpreter's final
    garbage collection over torch's, Flower's and Ray's objects (~1.5 s; see
    :func:`fedbarrier.runtime.process_tuning.freeze_heap`). In-process callers use :func:`main`.

    A Ctrl-C never lets the process exit 0: outside :func:`main` (e.g. while torch, Ray and
    Flower run their exit handlers, which print and ignore a KeyboardInterrupt) it exits 130 at
    once, and after the last exit handler (registered first, so run last) by the signal."""
    atexit.register(_sigint_ends_the_process)
    signal.signal(signal.SIGINT, _exit_at_once)
    code = main()
    freeze_heap()
    sys.exit(code)


if __name__ == "__main__":
    console()
