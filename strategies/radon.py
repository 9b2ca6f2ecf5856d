"""The Radon machine: one-shot aggregation of linear models into their (iterated) Radon point.

Kamp, Boley, Missura, Gärtner, "Effective Parallelisation for Machine Learning", NeurIPS 2017.
Any r >= d + 2 points in R^d can be split into two sets whose convex hulls intersect (Radon's
theorem); a point of the intersection is a *Radon point*. The Radon machine trains r^h models in
parallel, replaces each group of r models by their Radon point, and repeats h times. For a convex
learning problem the result's probability of being bad shrinks doubly exponentially in h, which
averaging does not give.

Each model is a point in parameter space, so r = d + 2 models are needed for d parameters: only
linear models are small enough (logistic regression on 4 features with 2 classes: d = 10, r = 12
clients for h = 1, 144 for h = 2). ``[strategy] name = "radon"`` with ``radon_height = h`` and
``data.num_clients = r^h``; usually ``train.rounds = 1`` (one shot).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedbarrier.errors import UserError
from fedbarrier.measure.layers import LayerGroups


def radon_point(points: np.ndarray) -> np.ndarray:
    """The Radon point of ``r >= d + 2`` points in R^d (rows of ``points``, shape ``(r, d)``).

    Radon's theorem: there are weights λ, not all zero, with Σ λ_i = 0 and Σ λ_i x_i = 0, i.e. a
    null vector of the lifted ``(d + 1) x r`` matrix ``[x_i; 1]`` (found by SVD: the right singular
    vector of the smallest singular value). Splitting λ by sign gives two sets whose convex hulls
    share the point Σ_{λ_i > 0} λ_i x_i / Σ_{λ_i > 0} λ_i, which is returned. For r > d + 2 the
    null space has more dimensions; any null vector gives a valid Radon point.

    Raises
    ------
    ValueError
        ``points`` is not 2-D, or r < d + 2.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must be an (r, d) array, got shape {x.shape}")
    r, d = x.shape
    if r < d + 2:
        raise ValueError(f"a Radon point of points in R^{d} needs r >= d + 2 = {d + 2} points, got {r}")
    lifted = np.vstack([x.T, np.ones((1, r))])  # (d + 1) x r
    _, _, vt = np.linalg.svd(lifted, full_matrices=True)
    weights = vt[-1]  # rank <= d + 1 < r: the last right singular vector spans part of the null space
    weights = np.where(np.abs(weights) > 1e-12 * np.abs(weights).max(), weights, 0.0)
    positive = weights > 0
    result: np.ndarray = weights[positive] @ x[positive] / weights[positive].sum()
    return result


def iterated_radon_point(points: np.ndarray, r: int) -> np.ndarray:
    """The Radon machine's aggregate of ``r^h`` points: h levels of Radon points of r points each.

    Level by level, consecutive groups of r points (rows) are replaced by their Radon point.

    Raises
    ------
    ValueError
        The number of points is not a power r^h (h >= 1) of r, or r < d + 2.
    """
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if r < 2 or n < r or r ** radon_height(n, r) != n:
        raise ValueError(f"the Radon machine needs r^h points (h >= 1) for r = {r}, got {n}")
    while len(x) > 1:
        x = np.stack([radon_point(x[i:i + r]) for i in range(0, len(x), r)])
    return x[0]


def radon_height(n: int, r: int) -> int:
    """The largest h with r^h <= n (0 if n < r)."""
    h = 0
    while r ** (h + 1) <= n:
        h += 1
    return h


def _branching(num_clients: int, height: int) -> int | None:
    """The integer r with r^height = num_clients, or None."""
    r = round(num_clients ** (1.0 / height))
    return next((c for c in (r - 1, r, r + 1) if c >= 2 and c ** height == num_clients), None)


class RadonMachine(FedAvg):
    """FedAvg whose aggregate is the iterated Radon point of the clients' models (Kamp et al. 2017).

    Every client trains from the same model (one round: one shot) and returns it; the server
    flattens each model into a point of R^d and replaces ``r^h`` of them by their iterated Radon
    point (:func:`iterated_radon_point`). Needs a linear model, ``num_clients = r^h`` with
    r >= d + 2, and every client in every round. If clients fail, the Radon machine of the
    largest complete height runs on the first ``r^h'`` of the rest (by partition id); with fewer
    than r models the round keeps the previous model.
    """

    def __init__(self, groups: LayerGroups, *, height: int = 1, num_clients: int,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if len(groups) != 1:
            raise UserError(
                "strategy.name = 'radon' needs model.name = 'linear': the Radon machine combines "
                "r = d + 2 models with d parameters each (r^h clients), so it works for linear "
                f"models only; this model has {len(groups)} layers ({', '.join(list(groups)[:4])}"
                f"{', ...' if len(groups) > 4 else ''}) and far more parameters than there can be "
                "clients")
        r = _branching(num_clients, height)
        if r is None:
            raise UserError(f"strategy.name = 'radon' with strategy.radon_height = {height} needs "
                            f"data.num_clients = r^{height} for an integer r; {num_clients} is not")
        if self.fraction_train < 1.0:
            raise UserError("strategy.name = 'radon' needs every client's model: set "
                            "strategy.fraction_train = 1 and strategy.clients_per_round = 0")
        self.height, self.r = height, r
        self.keys: list[str] = list(next(iter(groups.values())))

    def check_model(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Raise UserError unless r >= d + 2 for a model with these tensor shapes (fedbarrier
        calls it before a run starts; ``configure_train`` checks the arrays it gets too)."""
        d = sum(int(np.prod(shape)) for shape in shapes.values())
        if self.r < d + 2:
            raise UserError(
                f"strategy.name = 'radon': the model has d = {d} parameters, so a Radon point needs "
                f"r >= d + 2 = {d + 2} models per group, but data.num_clients = {self.r ** self.height}"
                f" = {self.r}^{self.height} gives r = {self.r}; use {d + 2}^h clients (a smaller "
                "input or fewer classes makes d smaller)")

    def sends_average(self, server_round: int) -> bool:
        """The clients get the Radon point, never the average: no local barriers against it."""
        return False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.check_model({k: arrays[k].shape for k in arrays})
        return super().configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        models = [next(iter(m.content.array_records.values())) for m in replies if not m.has_error()]
        points = np.stack([flatten(model, self.keys) for model in models]) if models else None
        _, metrics = super().aggregate_train(server_round, replies)  # validation and metrics
        height = radon_height(len(models), self.r)
        info = {"radon_r": self.r, "radon_height": height}
        metrics = MetricRecord({**(dict(metrics) if metrics is not None else {}), **info})
        if points is None or height == 0:
            return None, metrics
        point = iterated_radon_point(points[:self.r ** height], self.r)
        return unflatten(point, models[0], self.keys), metrics


def flatten(arrays: ArrayRecord, keys: list[str]) -> np.ndarray:
    """The model as one float64 vector (tensors in ``keys`` order)."""
    return np.concatenate([arrays[k].numpy().astype(np.float64).ravel() for k in keys])


def unflatten(vector: np.ndarray, like: ArrayRecord, keys: list[str]) -> ArrayRecord:
    """A vector back into arrays with the shapes and dtypes of ``like``."""
    out, start = {}, 0
    for k in keys:
        ref = like[k].numpy()
        out[k] = Array(vector[start:start + ref.size].reshape(ref.shape).astype(ref.dtype))
        start += ref.size
    return ArrayRecord(out)
