"""Barrier measurement cost against its lower bound, measured in one run.

Lower bound = (number of distinct models a measurement scores) x (time of one plain forward pass
of the model over the same data sample, `model(x)` in eval/inference mode, in whichever memory
format, contiguous or channels-last, is faster). The hook's time is
that of `fedbarrier.measure.hook.measure_record`, the exact function the server-side hook runs.
Targets (issue "Barrier instrumentation"): <= 1.2x the bound without activation sharing, < 1.0x
with it for sequential models.

    python -m benchmarks.barrier_cost [--quick]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fedbarrier.config import BarrierConfig
from fedbarrier.learn.models import build_model
from fedbarrier.measure.hook import measure_record
from fedbarrier.measure.layers import layer_groups, model_stages


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def one_forward_pass(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one plain forward pass over ``x`` in eval/inference mode, best of five, in the
    faster of the two memory formats (as the evaluator picks for conv nets): the lower bound's
    unit."""
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def forward_cl() -> None:
        with torch.inference_mode():
            model_cl(x_cl)

    forward(), forward_cl()
    return min(_best_of(forward, repeats=5), _best_of(forward_cl, repeats=5))


def bench(name: str, shape: tuple[int, int, int], clients: int, n: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    states = []
    for k in range(clients):
        torch.manual_seed(k + 1)
        states.append({key: t.detach().clone()
                       for key, t in build_model(name, shape, 10).state_dict().items()})
    groups, stages = layer_groups(model, x[:2]), model_stages(model)
    model.eval()

    one_pass = one_forward_pass(model, x)
    rows = []
    for share in (False, True):
        cfg = BarrierConfig(share_activations=share, families=("full", "per_layer", "cumulative"))

        def measure(cfg: BarrierConfig = cfg) -> dict:
            return measure_record(cfg, model, groups, stages, states, [1.0] * clients, x, y,
                                  defaults=None, seed=0, device=torch.device("cpu"),
                                  batch_size=n)

        record = measure()
        seconds = _best_of(measure, repeats)
        bound = record["num_evaluated"] * one_pass
        rows.append({"model": name, "clients": clients, "layers": len(groups), "n": n,
                     "share": share, "evaluations": record["num_evaluated"],
                     "forward_s": one_pass, "hook_s": seconds, "bound_s": bound,
                     "ratio": seconds / bound})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sample, one repeat")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    rows = bench("cnn", (3, 32, 32), clients=4, n=256 if args.quick else 512, repeats=repeats)
    rows += bench("resnet18", (3, 32, 32), clients=2, n=32 if args.quick else 64, repeats=repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'} (measurement on cpu)")
    print(f"{'model':<9}{'K':>3}{'L':>4}{'n':>5}{'sharing':>9}{'evals':>7}{'1 fwd (s)':>11}"
          f"{'bound (s)':>11}{'hook (s)':>10}{'hook/bound':>12}")
    for r in rows:
        print(f"{r['model']:<9}{r['clients']:>3}{r['layers']:>4}{r['n']:>5}"
              f"{'on' if r['share'] else 'off':>9}{r['evaluations']:>7}{r['forward_s']:>11.4f}"
              f"{r['bound_s']:>11.3f}{r['hook_s']:>10.3f}{r['ratio']:>12.2f}")
    return rows


if __name__ == "__main__":
    main()
