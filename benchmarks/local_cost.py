"""What a client's local-barrier measurement costs against its lower bound, in one run.

A client measures its own model θ_k against the round's average θ̄ on its own sample D_k
(docs/BARRIERS.md, Version 2): full, every layer, cumulative shallow and deep, loss and error,
with per-example values for the standard errors. Lower bound = (distinct models it scores) x (one
plain forward pass of the model over D_k, in eval/inference mode, in the faster memory format).
The time is that of `fedbarrier.measure.local.local_barriers` with the client's evaluator, as
`fedbarrier.fl.client_measure.local_report` runs it. Target (issue "Barriers where the data
lives"): <= 1.2x the bound without activation sharing.

    python -m benchmarks.local_cost [--quick]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.barrier_cost import _best_of, one_forward_pass
from fedbarrier.learn.models import build_model
from fedbarrier.measure.evaluator import ModelEvaluator
from fedbarrier.measure.layers import layer_groups
from fedbarrier.measure.local import local_barriers
from fedbarrier.measure.stages import model_stages


def bench(name: str, shape: tuple[int, int, int], n: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    average = {k: v.detach().clone() for k, v in build_model(name, shape, 10).state_dict().items()}
    groups, stages = layer_groups(model, x[:2]), model_stages(model)
    one_pass = one_forward_pass(model, x)
    rows = []
    for share in (False, True):
        evaluator = ModelEvaluator(model, x, y, stages=stages, share_activations=share,
                                   batch_size=n)

        def measure(evaluator: ModelEvaluator = evaluator) -> dict:
            return local_barriers(own, average, groups, evaluator)

        record = measure()
        seconds = _best_of(measure, repeats)
        bound = record["num_evaluated"] * one_pass
        rows.append({"model": name, "layers": len(groups), "n": n, "share": share,
                     "evaluations": record["num_evaluated"], "forward_s": one_pass,
                     "client_s": seconds, "bound_s": bound, "ratio": seconds / bound})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sample, one repeat")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 5
    rows = bench("cnn", (1, 8, 8), n=128 if args.quick else 512, repeats=repeats)  # quickstart
    rows += bench("cnn", (1, 28, 28), n=128 if args.quick else 512, repeats=repeats)  # F-MNIST
    rows += bench("cnn", (3, 32, 32), n=128 if args.quick else 512, repeats=repeats)  # CIFAR
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; one client")
    print(f"{'model':<6}{'input':>10}{'L':>4}{'n':>5}{'sharing':>9}{'evals':>7}{'1 fwd (s)':>11}"
          f"{'bound (s)':>11}{'client (s)':>12}{'client/bound':>14}")
    for r, shape in zip(rows, [s for s in ("1x8x8", "1x28x28", "3x32x32") for _ in (0, 1)]):
        print(f"{r['model']:<6}{shape:>10}{r['layers']:>4}{r['n']:>5}"
              f"{'on' if r['share'] else 'off':>9}{r['evaluations']:>7}{r['forward_s']:>11.5f}"
              f"{r['bound_s']:>11.4f}{r['client_s']:>12.4f}{r['ratio']:>14.2f}")
    return rows


if __name__ == "__main__":
    main()
