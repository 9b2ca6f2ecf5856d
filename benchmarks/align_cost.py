"""What permutation alignment (``barriers.align = "weight-matching"``) costs, measured in one run.

1. Weight matching per client pair, against one forward pass of the barrier sample (n = 300):
   the small CNN on Fashion-MNIST-shaped input and the NF-ResNet18 on CIFAR-shaped input, two
   models from different initializations (the hardest case: the most units to move).
2. The server-side hook's measurement of one round (10 CNN clients), without and with alignment:
   alignment adds the matching and a second measurement of every family.
3. A measured round of a real run (``experiments/quickstart.toml``: 10 clients, Flower and Ray as
   ``fedbarrier run`` does; the clients' local barriers are measured both ways too), without and
   with alignment: the median round time from round 3 on. Target (issue "Permutation
   alignment"): alignment must not make a measured round more than 2x as expensive for the
   small CNN.

    python -m benchmarks.align_cost [--rounds 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.barrier_cost import _best_of, one_forward_pass
from benchmarks.round_overhead import fedbarrier_run, steady
from fedbarrier.config import BarrierConfig, load_config
from fedbarrier.learn.models import build_model
from fedbarrier.measure.alignment import apply_permutation, permutation_spec, weight_matching
from fedbarrier.measure.hook import BarrierHook, ClientModels
from fedbarrier.measure.layers import layer_groups, model_stages

QUICKSTART = "experiments/quickstart.toml"


def models(name: str, shape: tuple[int, int, int], count: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for k in range(count):
        torch.manual_seed(k + 1)
        out.append({key: t.detach().clone() for key, t in build_model(name, shape, 10).state_dict().items()})
    return out


def pair_cost(name: str, shape: tuple[int, int, int], n: int) -> dict[str, float]:
    """Seconds to match and permute one pair, and of one forward pass over n examples."""
    a, b = models(name, shape, 2)
    spec = permutation_spec(name, a)
    seconds = _best_of(lambda: apply_permutation(spec, weight_matching(spec, a, b), b), repeats=3)
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    forward = one_forward_pass(model, torch.randn(n, *shape))
    return {"match_s": seconds, "forward_s": forward}


def hook_cost(clients: int, n: int) -> dict[str, float]:
    """Seconds of the hook's measurement of one round of ``clients`` CNN models, align off / on."""
    shape = (1, 28, 28)
    states = models("cnn", shape, clients)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    out = {}
    for align in ("none", "weight-matching"):
        model = build_model("cnn", shape, 10)
        cfg = BarrierConfig(align=align, splits=("test",), n=n)
        hook = BarrierHook(cfg, model=model, groups=layer_groups(model, x[:2]), stages=model_stages(model),
                           sample=lambda split, ids: (x, y), write=None, num_rounds=1, seed=0,
                           device=torch.device("cpu"), batch_size=n,
                           spec=permutation_spec("cnn", states[0]) if align != "none" else None)
        round_models = ClientModels(server_round=1, client_ids=list(range(clients)), states=states,
                                    num_examples=[100 + k for k in range(clients)], received=None)
        out[align] = _best_of(lambda hook=hook, models=round_models: hook.measure(models), repeats=3)
    return out


def round_cost(rounds: int) -> dict[str, float]:
    """Median measured-round seconds of the quickstart, align off / on (each one run)."""
    out = {}
    for align in ("none", "weight-matching"):
        cfg = load_config(QUICKSTART, [f"train.rounds={rounds}", f"barriers.align={align}",
                                       "output.plots=false", "output.tensorboard=false"])
        times, _ = fedbarrier_run(cfg)
        out[align] = steady(times)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each quickstart run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pairs = {"cnn (1x28x28)": pair_cost("cnn", (1, 28, 28), 300),
             "resnet18 (3x32x32)": pair_cost("resnet18", (3, 32, 32), 300)}
    hook = hook_cost(clients=10, n=300)
    rounds = round_cost(args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    print(f"{'model':<20}{'match a pair (s)':>18}{'1 forward, n=300 (s)':>22}{'ratio':>8}")
    for name, r in pairs.items():
        print(f"{name:<20}{r['match_s']:>18.3f}{r['forward_s']:>22.4f}{r['match_s'] / r['forward_s']:>8.1f}")
    print(f"hook, 10 CNN clients, test split n=300: {hook['none']:.3f} s unaligned, "
          f"{hook['weight-matching']:.3f} s with alignment ({hook['weight-matching'] / hook['none']:.2f}x)")
    print(f"quickstart measured round (median, rounds 3-{args.rounds}): {rounds['none']:.2f} s unaligned, "
          f"{rounds['weight-matching']:.2f} s with alignment "
          f"({rounds['weight-matching'] / rounds['none']:.2f}x; target <= 2x)")
    print(f"({time.perf_counter() - start:.0f} s)")
    return {"pairs": pairs, "hook": hook, "rounds": rounds}


if __name__ == "__main__":
    main()
