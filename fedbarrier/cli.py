"""The ``fedbarrier`` command line.

    fedbarrier run CONFIG [--set section.key=value ...] [--out RUN_DIR] [--force]
    fedbarrier partitions CONFIG [--set ...] [--out DIR]
    fedbarrier plot RUN_DIR
    fedbarrier barriers MODEL_A.pt MODEL_B.pt [more.pt] --config CONFIG [--json]
    fedbarrier compare CONFIG --strategies fedavg,fedper,... [--seeds 0,1,2] [--out DIR]
    fedbarrier keys

Bad input prints one line ``error: ...`` and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedbarrier.config import describe, load_config
from fedbarrier.errors import RunAborted, UserError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment TOML file (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.alpha=0.5 (repeatable)")


def cmd_run(args: argparse.Namespace) -> int:
    from fedbarrier.simulation import run_experiment

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / (cfg.name or "run")
    run_dir = run_experiment(cfg, out, force=args.force, progress=not args.quiet,
                             verbose=args.verbose)
    print(f"run written to {run_dir.path}")
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from fedbarrier.federation import federation
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
    from fedbarrier.compare import compare, parse_list

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name or 'run'}-compare"
    compare(cfg, parse_list(args.strategies), parse_list(args.seeds, int), out, force=args.force,
            progress=not args.quiet)
    print(f"table and plots written to {out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    print(describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedbarrier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a federated simulation with barrier measurement")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default: runs/<experiment name>)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
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
    p.add_argument("--force", action="store_true", help="overwrite an existing comparison")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("keys", help="list every config key with its default and meaning")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UserError, RunAborted) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
