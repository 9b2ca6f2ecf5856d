"""Run one experiment under Flower's simulation engine (Ray), writing a run directory.

Everything that can fail on user input (dataset files, partition, model) is checked *before*
the run directory is touched and before Ray starts, so a bad config costs nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from fedbarrier.config import Config, config_differences, load_config, to_toml
from fedbarrier.data.federation import federation, reading_shared_data, share_data
from fedbarrier.errors import RunInterrupted, UserError
from fedbarrier.fl.protocol import ModelCheck
from fedbarrier.outputs.progress import live_display
from fedbarrier.runtime.engine_patches import fast_dispatch, stop_autoscaler_monitor
from fedbarrier.runtime.inline_backend import check_supported as check_inline_backend
from fedbarrier.runtime.inline_backend import inline_backend
from fedbarrier.runtime.process_tuning import frozen_heap, torch_threads_restored
from fedbarrier.runtime.rundir import CLIENTS_DIR, RunDir, environment_info
from fedbarrier.runtime.scratch import make_scratch
from fedbarrier.runtime.stopping import graceful_stop, raise_if_stop_requested

T = TypeVar("T")

# Flower and Ray phone home and check for updates unless told not to; a research tool should not.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def flower_run_simulation() -> Callable[..., Any]:
    """Flower's in-process simulation entry point, the one place fedbarrier calls it.

    flwr 1.42 deprecates ``flwr.simulation.run_simulation`` in favour of ``flwr run``; both drive
    the same ServerApp and ClientApp with identical numbers (tests/test_deployment.py). A Flower
    release without it gets one line pointing to ``flwr run .`` instead of an ImportError.
    """
    try:
        from flwr.simulation import run_simulation
    except ImportError:
        run_simulation = None
    if not callable(run_simulation):  # gone, or only its module of the same name is left
        import flwr

        raise UserError(f"this Flower ({getattr(flwr, '__version__', '?')}) has no "
                        "flwr.simulation.run_simulation, which `fedbarrier run` uses; run the "
                        "same app with `flwr run .` (docs/deployment.md) or install "
                        "flwr[simulation]>=1.41,<1.43")
    return run_simulation


def preflight(cfg: Config) -> None:
    """Load data, partition it and build the model and strategy once, raising UserError on bad
    input. A strategy that is a :class:`~fedbarrier.fl.protocol.ModelCheck` (e.g. the Radon machine,
    which needs more clients than the model has parameters) checks the model here, before anything
    is written."""
    from fedbarrier.learn.local import resolve_device
    from fedbarrier.runtime.build import initial_state, model_layers
    from strategies import build_strategy

    resolve_device(cfg.train.device)  # a CUDA device this machine has not: before anything is written
    flower_run_simulation()  # a Flower without it: before anything is written
    if cfg.simulation.backend == "inline":
        check_inline_backend()

    with _flower_logs(logging.WARNING):
        strategy = build_strategy(cfg.strategy, cfg.data.num_clients, model_layers(cfg))
    if isinstance(strategy, ModelCheck):
        strategy.check_model({k: tuple(v.shape) for k, v in initial_state(cfg).items()})
    if cfg.barriers.align != "none" or cfg.strategy.name == "aligned-fedavg":
        from fedbarrier.measure.alignment import permutation_spec

        permutation_spec(cfg.model.name, initial_state(cfg))  # a model it cannot permute: UserError
    if cfg.data.test_fraction == 0 and cfg.strategy.fraction_evaluate > 0:
        raise UserError("data.test_fraction = 0 leaves clients no local test part; set "
                        "strategy.fraction_evaluate = 0 too")


# What one client process needs on a GPU for `num_gpus = "auto"`: its CUDA context and a small
# model's training took ~0.9 GiB each on an H100 (docs/performance.md, GPU); twice that for headroom.
GPU_MEMORY_PER_CLIENT = 2 * 2**30


def ray_cpus() -> int:
    """The CPUs a Ray instance started by a run gets: all of this machine's."""
    return max(1, os.cpu_count() or 1)


def local_gpu_memory() -> list[int]:
    """Total memory of each CUDA device this process sees (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory
            for i in range(torch.cuda.device_count())]


def client_gpu_share(cfg: Config, gpu_memory: list[int], cpus: int) -> float:
    """Ray's ``num_gpus`` per client: the configured share, or for ``"auto"`` the share that
    lets every client that can train at once (one per ``num_cpus`` cores) use a GPU, at most
    one client per GPU_MEMORY_PER_CLIENT of the smallest GPU's memory. The cap is a rule of
    thumb for small models; large models or batches should set ``num_gpus`` explicitly."""
    share = cfg.simulation.num_gpus
    if share != "auto":
        return float(share)
    if cfg.train.device == "cpu" or not gpu_memory:
        return 0.0
    # in Ray's units of 1e-4, as Ray counts them (0.1-core clients: 2 // 0.1 is 19.0 in floats)
    at_once = min(cfg.data.num_clients,
                  max(1, round(cpus * 1e4) // round(cfg.simulation.num_cpus * 1e4)))
    per_gpu = min(math.ceil(at_once / len(gpu_memory)),
                  max(1, min(gpu_memory) // GPU_MEMORY_PER_CLIENT))
    return math.floor(1e4 / per_gpu) / 1e4  # Ray resolves shares to 4 decimals


def ray_address(cfg: Config) -> str:
    """The Ray cluster to join: ``[simulation] ray_address``, else ``$RAY_ADDRESS`` as Ray's own
    tools read it, else '' (start a private instance)."""
    return cfg.simulation.ray_address or os.environ.get("RAY_ADDRESS", "")


def backend_config(cfg: Config, scratch: Path) -> dict[str, Any]:
    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address := ray_address(cfg):
        init_args["address"] = address  # the cluster has its own CPUs and session folder
    else:
        # A private temp dir per run: a stale Ray session folder elsewhere cannot hang us.
        init_args["_temp_dir"] = str(scratch / "ray")
        init_args["num_cpus"] = ray_cpus()
    return {
        "client_resources": {"num_cpus": cfg.simulation.num_cpus,
                             "num_gpus": client_gpu_share(cfg, local_gpu_memory(), ray_cpus())},
        "init_args": init_args,
    }


class _DropKnownWarnings(logging.Filter):
    """Flower warnings that say nothing new to a fedbarrier user: `run_simulation` is deprecated
    in favour of `flwr run` (both work, see README), and FedAvg's note that fraction_evaluate = 0
    skips federated evaluation (that is what the user asked for)."""

    KNOWN = ("DEPRECATED FEATURE", "Federated evaluation will be skipped")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.KNOWN)


@contextmanager
def _flower_logs(level: int) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    old = logger.level
    ray_level = logging.getLogger("ray").level
    drop = _DropKnownWarnings()
    logger.setLevel(level)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.setLevel(old)
        logger.removeFilter(drop)
        logging.getLogger("ray").setLevel(ray_level)


def _silence_engine() -> None:
    """A run stopping on a signal: what Flower and Ray then report (clients that die with the
    job, as when SIGTERM reaches every process; replies that come too late) is its fallout, not
    news. :func:`_flower_logs` restores both loggers' levels."""
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def off_main_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread and return its result (or raise its exception).

    Why: OpenMP keeps one thread team per thread that runs parallel torch ops, and Flower runs
    the ServerApp in a thread of its own. Once the main thread has a team, the server thread's
    small ops (the barrier measurement, the global evaluation) ran ~3x slower on 2 cores
    (a 300x32x8x8 ReLU: 34 us -> 100 us, measured). A finished thread's team is released.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="fedbarrier-setup") as pool:
        return pool.submit(fn).result()


def run_environment(cfg: Config) -> dict[str, Any]:
    """What ``run.json`` records of the process that runs (or resumes) a run."""
    gpus = local_gpu_memory()
    return {**environment_info(), "gpus": len(gpus),
            "client_num_gpus": client_gpu_share(cfg, gpus, ray_cpus())}


def prepare_run(cfg: Config, out: str | Path, *, force: bool = False) -> RunDir:
    """Validate everything, then create the run directory with config, versions and partition."""

    def setup() -> RunDir:
        preflight(cfg)
        run_dir = RunDir.create(out, force=force)
        run_dir.write_text("config.toml", to_toml(cfg))
        run_dir.write_json("run.json", run_environment(cfg))
        run_dir.write_json("partition.json", federation(cfg.data, cfg.seed).stats().to_dict())
        return run_dir

    return off_main_thread(setup)


def run_experiment(cfg: Config, out: str | Path, *, force: bool = False, progress: bool = True,
                   verbose: bool = False, client_app: Any = None) -> RunDir:
    """Validate, create the run directory, simulate all rounds, shut Ray down.

    ``client_app`` replaces fedbarrier's ClientApp (tests inject faulty clients this way).
    """
    quiet_environment()
    run_dir = prepare_run(cfg, out, force=force)
    _simulate(cfg, run_dir, 0, progress=progress, verbose=verbose, client_app=client_app)
    return run_dir


def resume_experiment(path: str | Path, check: Config | None = None, *, progress: bool = True,
                      verbose: bool = False, client_app: Any = None) -> RunDir:
    """Continue a run from its last completed round, with the config it was started with.

    ``check`` (a config the user gave) must equal the recorded one. Records of a round that did
    not complete are dropped and the round runs again; every random stream is derived from (seed,
    round, client), and clients read their state of an earlier round, so the finished records
    equal those of an uninterrupted run.
    """
    quiet_environment()
    run_dir = RunDir(path)
    if not (run_dir.path / "config.toml").is_file():
        raise UserError(f"{str(run_dir.path)!r} is not a run directory (no config.toml)")
    cfg = load_config(run_dir.path / "config.toml")
    differs = config_differences(cfg, check) if check is not None else []
    if differs:
        raise UserError(f"{str(run_dir.path)!r} was started with a different config (differs in "
                        f"{', '.join(differs)}); resume without a config or start a new run")
    done, why = run_dir.resume_point()
    if done >= cfg.train.rounds:
        print(f"{run_dir.path} is complete ({cfg.train.rounds} rounds); nothing to resume")
        return run_dir
    off_main_thread(lambda: preflight(cfg))
    # From round 0 (only the initial evaluation recorded, or nothing to trust after it): the
    # run starts again, its round-0 record included, so that it is recorded once.
    done = max(done, 0)
    run_dir.truncate_after(done if done > 0 else -1)
    # Each attempt's versions and machine, so a run resumed elsewhere says so (its numbers
    # equal an uninterrupted run's only where torch and the device are the same).
    try:
        info = json.loads((run_dir.path / "run.json").read_text())
    except (OSError, ValueError):  # missing or damaged: keep what this attempt knows
        info = {}
    resumed = {"after_round": done, **off_main_thread(lambda: run_environment(cfg))}
    run_dir.write_json("run.json", {**info, "resumes": [*info.get("resumes", []), resumed]})
    if why is not None:  # whatever the progress setting: the user should know
        print(f"resuming {run_dir.path} after round {done}, not later: {why}", file=sys.stderr,
              flush=True)
    elif progress:
        print(f"resuming {run_dir.path} after round {done}", flush=True)
    _simulate(cfg, run_dir, done, progress=progress, verbose=verbose, client_app=client_app)
    return run_dir


# Ray's longest socket path past the scratch root: /fedbarrier-XXXXXXXX/ray/session_<date>_<pid>
# /sockets/plasma_store; a unix socket path must stay under 108 bytes.
_RAY_PATH_TAIL = 88


def scratch_root() -> str:
    """Where runs keep scratch files: the temp dir when it is short enough for Ray's sockets
    inside, else ``/tmp`` (as Ray itself uses; a macOS ``$TMPDIR`` is ~50 characters)."""
    temp = tempfile.gettempdir()
    if len(temp.encode()) + _RAY_PATH_TAIL <= 107 or not os.path.isdir("/tmp"):
        return temp
    return "/tmp"


def _share_data(cfg: Config, folder: Path) -> Path | None:
    """Write the dataset for the workers to map; None (each worker loads it) if it cannot be."""
    try:
        share_data(cfg.data, cfg.seed, folder)
    except OSError as err:  # e.g. a full temp disk: slower start-up, same results
        logging.getLogger(__name__).warning("clients will load the data themselves (%s)", err)
        return None
    return folder


def _stop_ray_and_clean_up(ray: Any, scratch: Any) -> None:
    """Stop the Ray instance a run leaves behind, then remove the run's scratch folder.

    Flower shuts Ray down itself unless the run failed early. Each step runs even if an earlier
    one raised (e.g. a Ctrl-C landing during ``ray.shutdown``); the first error is raised once
    all have run. The scratch folder goes last: Ray's workers map the shared files in it.
    """
    steps = (lambda: ray.is_initialized() and stop_autoscaler_monitor(),
             lambda: ray.is_initialized() and ray.shutdown(),
             scratch.cleanup)
    error: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # re-raised below, after the other steps
            error = error or exc
    if error is not None:
        raise error


def _simulate(cfg: Config, run_dir: RunDir, completed_rounds: int, *, progress: bool,
              verbose: bool, client_app: Any) -> None:
    import ray

    run_simulation = flower_run_simulation()
    from fedbarrier.fl.client_app import make_client_app
    from fedbarrier.fl.server_app import make_server_app

    # The run's scratch folder: Ray's session files and the dataset shared with the workers.
    scratch = make_scratch(scratch_root())  # after removing those of killed runs
    try:
        shared = _share_data(cfg, Path(scratch.name) / "data") if client_app is None else None
        with (reading_shared_data(shared) if shared else nullcontext()), \
                _flower_logs(logging.DEBUG if verbose else logging.WARNING), \
                warnings.catch_warnings(), frozen_heap(), torch_threads_restored(), fast_dispatch(), \
                (inline_backend() if cfg.simulation.backend == "inline" else nullcontext()), \
                graceful_stop(on_request=_silence_engine), \
                (live_display() if progress else nullcontext()):
            # Ray announces a future change for num_gpus = 0 workers; today's behaviour (hide
            # GPUs from CPU-only clients) is the one we want, so the tip is noise here.
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
            run_simulation(
                server_app=make_server_app(cfg, run_dir, progress=progress,
                                           completed_rounds=completed_rounds),
                client_app=client_app or make_client_app(cfg, run_dir.path / CLIENTS_DIR,
                                                         shared_data=shared),
                num_supernodes=cfg.data.num_clients,
                backend_config=backend_config(cfg, Path(scratch.name)),  # type: ignore[arg-type]
                verbose_logging=verbose,
            )
            raise_if_stop_requested()  # asked during the last round: the run is whole, yet stopped
    finally:
        stopped = sys.exc_info()[1]
        try:
            _stop_ray_and_clean_up(ray, scratch)
        except BaseException:
            # A stopped run's clean-up may fail with Ray's processes gone to the same signal
            # (SIGTERM to the whole job): that is fallout; the run stays an interrupted one
            # (exit 128 + signal, the resume hint), not an error of its own.
            if not isinstance(stopped, RunInterrupted):
                raise
    if cfg.output.plots:
        from fedbarrier.plots import plot_run

        plots = plot_run(run_dir.path)
        if cfg.output.tensorboard:
            from fedbarrier.outputs.tensorboard import write_images

            write_images(run_dir.path, plots, step=cfg.train.rounds)
