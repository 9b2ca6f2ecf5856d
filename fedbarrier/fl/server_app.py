"""The Flower ServerApp: build the strategy, attach the hooks, run the rounds.

``make_server_app(cfg, run_dir)`` is what ``fedbarrier run`` hands to the simulation engine;
``fedbarrier.fl.apps`` has the apps that ``flwr run .`` starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedbarrier.config import SERVER_SPLITS, Config, to_toml
from fedbarrier.data.federation import federation, server_sample
from fedbarrier.errors import UserError
from fedbarrier.fl.adapter import Instrumented, StoppableGrid
from fedbarrier.fl.client_measure import local_splits
from fedbarrier.fl.protocol import (
    CLIENT_RECORD,
    PARTITION_ID,
    BarrierListener,
    ResumableStrategy,
)
from fedbarrier.fl.recorders import CheckpointHook, MetricsRecorder, TensorBoardRecorder, progress_hook
from fedbarrier.fl.round import LocalPlan, RoundHook
from fedbarrier.learn.local import evaluate, resolve_device
from fedbarrier.measure.alignment import PermutationSpec, permutation_spec
from fedbarrier.measure.hook import BarrierHook, align_models
from fedbarrier.measure.layers import layer_groups, model_stages
from fedbarrier.runtime.build import initial_model
from fedbarrier.runtime.engine_patches import publishing_partitions, simulated_partitions
from fedbarrier.runtime.process_tuning import torch_threads
from fedbarrier.runtime.rundir import RunDir, save_state_dict
from fedbarrier.runtime.stopping import raise_if_stop_requested
from strategies import build_strategy


def discover_partitions(grid: Grid, num_clients: int, timeout: float = 600.0,
                        settle: float = 2.0) -> dict[int, int]:
    """Every node's partition id (node ids are random; partition ids are not).

    In a simulation run by ``fedbarrier run``, the engine's own mapping
    (:func:`~fedbarrier.runtime.engine_patches.simulated_partitions`) answers when it names
    exactly the grid's nodes; otherwise every node is asked, one QUERY message each (minutes
    for 10,000 simulated nodes, through the engine's per-node dispatch). Waits for
    ``num_clients`` nodes. A simulation registers all its nodes at start, so a count
    that has settled (unchanged for ``settle`` s) and differs ends the run at once, as does a
    count above ``num_clients`` anywhere; a deployment's nodes may connect late, so fewer of them
    are waited for until ``timeout``. (Under ``flwr run`` Flower's default federation has 2
    simulated SuperNodes; the quickstart asks for 10 clients: it waited 600 s.)
    """
    simulated = in_simulation(grid)
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while (count := len(nodes := list(grid.get_node_ids()))) != num_clients:
        now = time.monotonic()
        if count != seen:
            seen, since = count, now
        if count > num_clients or (simulated and count > 0 and now - since >= settle):
            raise UserError(
                f"the federation has {count} clients (SuperNodes) but data.num_clients = "
                f"{num_clients}; make them equal: under `flwr run`, --federation-config "
                f"'num-supernodes={num_clients}' (or `flwr federation simulation-config ... "
                f"--num-supernodes {num_clients}`), or --run-config "
                f"'set=\"data.num_clients={count}\"'")
        if now > deadline:
            raise UserError(f"only {count} of data.num_clients = {num_clients} clients connected "
                            f"within {timeout:.0f} s")
        raise_if_stop_requested()
        time.sleep(0.2)
    published = _engine_partitions() if simulated else None
    if published is not None and published.keys() == set(nodes):
        return published
    messages = [Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    mapping = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"client query failed: {reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(
            reply.content.config_records[CLIENT_RECORD][PARTITION_ID])
    return mapping


def _engine_partitions(limit: float = 60.0) -> dict[int, int] | None:
    """The simulation engine's own node mapping, waited for up to ``limit`` seconds while it
    publishes one (None: ask the nodes)."""
    end = time.monotonic() + limit
    while (published := simulated_partitions(wait=0.2)) is None and publishing_partitions() \
            and time.monotonic() < end:
        raise_if_stop_requested()
    return published


def in_simulation(grid: Grid) -> bool:
    """True for Flower's in-memory grid (simulation engine); False under deployment."""
    return hasattr(grid, "pull_interval")


def server_data_warning(cfg: Config, grid: Grid) -> str | None:
    """A warning when a run under the Deployment Engine measures barriers on ``train``: that
    split is the clients' training data, which a real federation's server does not have (the
    server here reads it from its own disk, as the config names it)."""
    if in_simulation(grid) or not cfg.barriers.enabled or "train" not in cfg.barriers.splits:
        return None
    also = (' and strategy.barrier_split = "test"' if cfg.strategy.name == "barrier-aware" else "")
    return ("warning: barriers.splits includes 'train', the clients' training data, which the "
            "server reads from its own disk; a real federation's server has none: set "
            f'barriers.splits = ["test"]{also} (a server-side set)')


def run_server(grid: Grid, cfg: Config, run_dir: RunDir | None, *, progress: bool = True,
               completed_rounds: int = 0) -> None:
    """Run rounds ``completed_rounds + 1 .. train.rounds`` (resuming from saved state if > 0).

    The server's heavy torch work (barrier measurement, global evaluation) runs on one compute
    thread with all of torch's threads, and Flower's server thread runs torch single-threaded
    (its own torch work, reply checks, is light). OpenMP builds one thread team per thread that
    runs parallel ops; two teams on few cores make each other's small ops wait (the hook's ops
    ran ~3x slower on 2 cores when both threads ran parallel ops, measured).
    """
    threads = torch.get_num_threads()
    compute = ThreadPoolExecutor(1, thread_name_prefix="fedbarrier-compute",
                                 initializer=torch.set_num_threads, initargs=(threads,))
    with torch_threads(1):
        try:
            _run_server(grid, cfg, run_dir, progress=progress,
                        completed_rounds=completed_rounds, compute=compute)
        finally:
            # Waits for a measurement in flight (a stopped or failed round's): it must not
            # append to barriers.jsonl after the run has ended, e.g. while a resume in this
            # process writes.
            compute.shutdown(wait=True, cancel_futures=True)


def _run_server(grid: Grid, cfg: Config, run_dir: RunDir | None, *, progress: bool,
                completed_rounds: int, compute: ThreadPoolExecutor) -> None:
    if in_simulation(grid):
        # Flower's in-memory grid (simulation) sleeps 0.1 s between polls for replies: up to
        # 0.1 s lost per phase, two phases a round. Polling an in-process queue is cheap.
        grid.pull_interval = 0.005  # type: ignore[attr-defined]
    grid = StoppableGrid(grid)  # type: ignore[assignment]  # Ctrl-C / SIGTERM drop the round
    fed = federation(cfg.data, cfg.seed)
    device = resolve_device(cfg.train.device)
    model = initial_model(cfg, fed)
    example = fed.splits.test.x[:2]
    groups = layer_groups(model, example)
    initial = ArrayRecord({k: v.detach().clone() for k, v in model.state_dict().items()})
    strategy_state = None
    if completed_rounds > 0:
        assert run_dir is not None
        global_state, strategy_state = run_dir.load_server_state(completed_rounds)
        initial = ArrayRecord(global_state)

    def evaluate_global(server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """On the compute thread, while the clients evaluate (or start up): the global test
        loss and accuracy of ``state``. One torch thread: the clients hold the cores then, and
        a second OpenMP team on them slows everybody (see :func:`run_server`)."""
        model.load_state_dict(state)
        test = fed.splits.test
        with torch_threads(1):
            loss, acc = evaluate(model, test.x, test.y, batch_size=cfg.train.eval_batch_size,
                                 device=device)
        if run_dir is not None and cfg.output.save_client_models and server_round > 0:
            save_state_dict(run_dir.checkpoint_path(server_round, "global"), state)
        return {"global_test_loss": loss, "global_test_accuracy": acc}

    # The initial model's evaluation (round 0) runs while the clients start up (Ray workers
    # import torch and Flower for seconds); round 0 then only collects it.
    initial_evaluation = (compute.submit(evaluate_global, 0, initial.to_torch_state_dict())
                          if completed_rounds == 0 else None)

    def global_evaluate(server_round: int, state: dict[str, torch.Tensor]
                        ) -> Future[dict[str, float]]:
        if server_round == 0 and initial_evaluation is not None:
            return initial_evaluation
        return compute.submit(evaluate_global, server_round, state)

    hooks: list[RoundHook] = []
    spec = (permutation_spec(cfg.model.name, model.state_dict())
            if cfg.barriers.align != "none" else None)
    aligned_splits = ([f"{s}-aligned" for s in cfg.barriers.splits if s in SERVER_SPLITS]
                      if cfg.barriers.align != "none" else [])
    events = (TensorBoardRecorder(run_dir, config_text=to_toml(cfg),
                                  splits=[*cfg.barriers.splits, *aligned_splits],
                                  completed_rounds=completed_rounds)
              if run_dir is not None and cfg.output.tensorboard else None)
    write_barriers = _barrier_writer(run_dir, events)
    if cfg.barriers.enabled and any(s in SERVER_SPLITS for s in cfg.barriers.splits):
        barrier_model = initial_model(cfg, fed)  # a separate module: evaluation swaps its tensors
        hooks.append(BarrierHook(
            cfg.barriers, model=barrier_model, groups=groups, stages=model_stages(barrier_model),
            sample=lambda split, ids: server_sample(fed, split, ids, cfg.barriers.n, cfg.seed),
            write=write_barriers, num_rounds=cfg.train.rounds, seed=cfg.seed, device=device,
            batch_size=cfg.train.eval_batch_size, executor=compute,
            spec=spec))
    if run_dir is not None:
        if cfg.output.save_client_models:
            hooks.append(CheckpointHook(run_dir))
        hooks.append(MetricsRecorder(run_dir))
    if events is not None:
        hooks.append(events)
    if progress:
        hooks.append(progress_hook(cfg.train.rounds, first_round=completed_rounds + 1,
                                   label=run_dir.path.name if run_dir is not None else ""))

    inner = build_strategy(cfg.strategy, cfg.data.num_clients, groups)
    resumable = isinstance(inner, ResumableStrategy)
    if strategy_state is not None and resumable:
        inner.load_state_dict(strategy_state)

    def save_state(server_round: int, state: dict[str, torch.Tensor]) -> None:
        if run_dir is not None:
            run_dir.save_server_state(server_round, state,
                                      inner.state_dict() if resumable else None)
    barrier_hooks = [h for h in hooks if isinstance(h, BarrierHook)]
    if isinstance(inner, BarrierListener) and barrier_hooks:  # e.g. barrier-aware aggregation
        barrier_hooks[0].listeners.append(inner.observe)
    strategy = Instrumented(inner, hooks,
                            seed=cfg.seed, partition_of=discover_partitions(grid, fed.num_clients),
                            global_evaluate=global_evaluate, min_clients=cfg.strategy.min_clients,
                            completed_rounds=completed_rounds, save_state=save_state,
                            local=local_plan(cfg, write_barriers, spec),
                            static_nodes=in_simulation(grid))
    try:
        strategy.start(grid=grid, initial_arrays=initial,
                       num_rounds=cfg.train.rounds - completed_rounds,
                       train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    finally:
        for hook in hooks:  # TensorBoard's writer, the progress bar
            close = getattr(hook, "close", None)
            if callable(close):
                close()


def _barrier_writer(run_dir: RunDir | None, events: TensorBoardRecorder | None
                    ) -> Callable[[dict[str, Any]], None] | None:
    """What writes a barrier record: ``barriers.jsonl``, then the TensorBoard recorder."""
    if run_dir is None:
        return None
    if events is None:
        return run_dir.append_barriers

    def write(record: dict[str, Any]) -> None:
        run_dir.append_barriers(record)
        events.barrier_written(record)

    return write


def measured_round(cfg: Config, server_round: int) -> bool:
    """Whether barriers are measured after ``server_round`` (``barriers.every``, and the last)."""
    return cfg.barriers.enabled and (server_round % cfg.barriers.every == 0
                                     or server_round == cfg.train.rounds)


def local_plan(cfg: Config, write: Callable[[dict[str, Any]], None] | None,
               spec: PermutationSpec | None = None) -> LocalPlan | None:
    """The clients' local barriers of this run (None when it measures none); ``write`` records
    them; with ``spec`` (``barriers.align``) the clients also measure them after alignment."""
    splits = local_splits(cfg)
    if not splits:
        return None
    align = (partial(align_models, spec, reference=cfg.barriers.align_reference, seed=cfg.seed)
             if spec is not None else None)
    return LocalPlan(splits=splits, measured=lambda r: measured_round(cfg, r), write=write,
                     align=align)


def make_server_app(cfg: Config, run_dir: RunDir | None, *, progress: bool = True,
                    completed_rounds: int = 0) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, run_dir, progress=progress, completed_rounds=completed_rounds)

    return app

