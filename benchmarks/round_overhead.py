"""fedbarrier's round time against a plain single-process PyTorch loop doing the same work.

Workload (issue "Performance and scale"): 10 clients x 500 examples of generated CIFAR-shaped data
(3x32x32, 10 classes), the small CNN, 1 local epoch per round, and the quickstart's evaluation:
every client evaluates the new global model on its local test part, and the server evaluates it
on the global test set. Barriers are off (their cost is measured by `barrier_cost` and reported
separately here as the quickstart's hook overhead).

Two baselines do the same SGD steps (same seeds, steps and learning rates,
`fedbarrier.learn.local.local_update`), average like FedAvg and evaluate the same data:

- the plain loop: one process trains the clients one after another with all of torch's threads;
- the parallel plain loop, the machine's limit on 2 cores: two 1-thread worker processes train
  half the clients each and evaluate them, while the parent (1 thread) averages and evaluates the
  global model on the test set during the clients' evaluation (as fedbarrier overlaps them).

All run on the same machine in the same invocation; the table prints ratios.

    python -m benchmarks.round_overhead [--rounds 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fedbarrier.config import Config, load_config
from fedbarrier.data.federation import Federation, federation
from fedbarrier.fl.simulation import off_main_thread
from fedbarrier.learn.local import evaluate, local_update
from fedbarrier.runtime.build import initial_model
from fedbarrier.runtime.process_tuning import torch_threads

WORKLOAD = [
    "data.dataset=synthetic", "data.synthetic_shape=[3, 32, 32]", "data.synthetic_classes=10",
    "data.synthetic_train_size=6250", "data.synthetic_test_size=1000", "data.synthetic_noise=4.0",
    "data.partition=iid", "data.num_clients=10", "data.test_fraction=0.2",  # 500 train each
    "model.name=cnn", "train.local_epochs=1", "train.batch_size=32", "barriers.enabled=false",
    "train.device=cpu",  # the CPU figures; benchmarks.gpu sets auto
    "output.plots=false",
]


StateDict = dict[str, torch.Tensor]


def train_clients(cfg: Config, fed: Federation, model: torch.nn.Module, state: StateDict,
                  clients: Iterable[int], server_round: int, device: torch.device
                  ) -> list[tuple[StateDict, int]]:
    """Each client's model after its local update from ``state``, with its example count."""
    trained = []
    for pid in clients:
        model.load_state_dict(state)
        data = fed.client_train(pid)
        local_update(model, data.x, data.y, cfg.train, run_seed=cfg.seed, client=pid,
                     server_round=server_round, device=device)
        trained.append(({k: v.detach().clone() for k, v in model.state_dict().items()},
                        len(data)))
    return trained


def average(trained: list[tuple[StateDict, int]]) -> StateDict:
    """FedAvg: the example-weighted mean of the clients' models."""
    total = sum(n for _, n in trained)
    return {k: sum(n / total * s[k] for s, n in trained) for k in trained[0][0]}


def evaluate_clients(cfg: Config, fed: Federation, model: torch.nn.Module, state: StateDict,
                     clients: Iterable[int], device: torch.device) -> None:
    """Every client's evaluation of ``state`` on its local test part."""
    model.load_state_dict(state)
    for pid in clients:
        test = fed.client_test(pid)
        evaluate(model, test.x, test.y, batch_size=cfg.train.eval_batch_size, device=device)


def plain_loop(cfg: Config, device: torch.device | str = "cpu") -> list[float]:
    """Seconds per round of the same federated computation without Flower or Ray."""
    fed = federation(cfg.data, cfg.seed)
    model = initial_model(cfg, fed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    device, clients = torch.device(device), range(fed.num_clients)
    times = []
    for r in range(1, cfg.train.rounds + 1):
        start = time.perf_counter()
        global_state = average(train_clients(cfg, fed, model, global_state, clients, r, device))
        evaluate_clients(cfg, fed, model, global_state, clients, device)
        evaluate(model, fed.splits.test.x, fed.splits.test.y,
                 batch_size=cfg.train.eval_batch_size, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


_worker: dict[str, Any] = {}


def _start_worker(cfg: Config) -> None:
    """A parallel plain loop's worker: 1 torch thread, its own copy of the data and model."""
    torch.set_num_threads(1)
    fed = federation(cfg.data, cfg.seed)
    _worker.update(cfg=cfg, fed=fed, model=initial_model(cfg, fed))


def _train_share(state: StateDict, clients: list[int], server_round: int
                 ) -> list[tuple[StateDict, int]]:
    return train_clients(_worker["cfg"], _worker["fed"], _worker["model"], state, clients,
                         server_round, torch.device("cpu"))


def _evaluate_share(state: StateDict, clients: list[int]) -> None:
    evaluate_clients(_worker["cfg"], _worker["fed"], _worker["model"], state, clients,
                     torch.device("cpu"))


def parallel_plain_loop(cfg: Config, workers: int = 2) -> list[float]:
    """Seconds per round of the same computation in ``workers`` plain 1-thread processes, each
    training and evaluating its share of the clients (the first ``n / workers``, the next ...)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    fed = federation(cfg.data, cfg.seed)
    n = fed.num_clients
    shares = [list(range(i * n // workers, (i + 1) * n // workers)) for i in range(workers)]
    model = initial_model(cfg, fed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(cfg,)) as pool, torch_threads(1):
        for r in range(1, cfg.train.rounds + 1):
            start = time.perf_counter()
            global_state = average([pair for part in pool.map(
                _train_share, [global_state] * workers, shares, [r] * workers) for pair in part])
            clients = [pool.submit(_evaluate_share, global_state, share) for share in shares]
            model.load_state_dict(global_state)
            evaluate(model, fed.splits.test.x, fed.splits.test.y,
                     batch_size=cfg.train.eval_batch_size, device=torch.device("cpu"))
            for done in clients:
                done.result()
            times.append(time.perf_counter() - start)
    return times


def fedbarrier_run(cfg: Config) -> tuple[list[float], float]:
    """Seconds per round (from metrics.jsonl) and the whole run's seconds, start-up included."""
    from fedbarrier.fl.simulation import run_experiment

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_experiment(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    return [m["wall_seconds"] for m in metrics if m["round"] > 0], total


def steady(times: list[float]) -> float:
    """Median of the rounds after the first two (worker start and warm-up excluded)."""
    rest = sorted(times[2:] or times)
    return rest[len(rest) // 2]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the two sides this often; each figure is the best run")
    args = parser.parse_args(argv)
    cfg = load_config(None, WORKLOAD + [f"train.rounds={args.rounds}"])
    off_main_thread(lambda: federation(cfg.data, cfg.seed))  # not part of either timing
    # Best of alternating repeats: on a shared 2-core machine one run of either side varied by
    # up to 30 % (slow phases last minutes), and the fastest run is the least disturbed one.
    plain_rounds, plain_totals, fb_rounds, fb_totals, par_rounds, par_totals = ([] for _ in range(6))
    for _ in range(args.repeats):
        # Both sides run their torch work off the main thread, as `fedbarrier run` does (see
        # fedbarrier.fl.simulation.off_main_thread): a leftover OpenMP team slows the other side.
        start = time.perf_counter()
        plain_rounds.append(steady(off_main_thread(lambda: plain_loop(cfg))))
        plain_totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        par_rounds.append(steady(off_main_thread(lambda: parallel_plain_loop(cfg))))
        par_totals.append(time.perf_counter() - start)
        fb, fb_total = fedbarrier_run(cfg)
        fb_rounds.append(steady(fb))
        fb_totals.append(fb_total)
    out = {"plain_round_s": min(plain_rounds), "fedbarrier_round_s": min(fb_rounds),
           "plain_run_s": min(plain_totals), "fedbarrier_run_s": min(fb_totals),
           "parallel_round_s": min(par_rounds), "parallel_run_s": min(par_totals)}
    out["round_ratio"] = out["fedbarrier_round_s"] / out["plain_round_s"]
    out["run_ratio"] = out["fedbarrier_run_s"] / out["plain_run_s"]
    out["parallel_round_ratio"] = out["fedbarrier_round_s"] / out["parallel_round_s"]
    out["parallel_run_ratio"] = out["fedbarrier_run_s"] / out["parallel_run_s"]
    print(f"{args.rounds} rounds, 10 clients x 500 examples, small CNN, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads in the plain loop, 2 x 1 in "
          f"the parallel one; best of {args.repeats} alternating runs of each side")
    print(f"{'figure':<34}{'fedbarrier (s)':>16}{'plain loop (s)':>16}{'ratio':>8}"
          f"{'2 plain procs (s)':>19}{'ratio':>8}")
    for label, key in (("steady-state time per round", "round"),
                       ("whole run, start-up included", "run")):
        print(f"{label:<34}{out[f'fedbarrier_{key}_s']:>16.2f}{out[f'plain_{key}_s']:>16.2f}"
              f"{out[f'{key}_ratio']:>8.2f}{out[f'parallel_{key}_s']:>19.2f}"
              f"{out[f'parallel_{key}_ratio']:>8.2f}")
    return out


if __name__ == "__main__":
    main()
