"""Git Re-Basin weight matching: align one model's hidden units to another's by permutation.

Hidden units of a network can be permuted without changing the function it computes, provided
every tensor that reads or writes a unit is permuted consistently. Weight matching (Ainsworth,
Hayase and Srinivasa, "Git Re-Basin", ICLR 2023, Algorithm 1) picks the permutations that bring
``other`` closest to ``reference`` in L2, maximizing sum over tensors of <theta_ref, P(theta_other)>
by coordinate descent: one permutation at a time, the others fixed, each step an exact linear
assignment problem (``scipy.optimize.linear_sum_assignment``).

Pure functions on state dicts, no Flower, no I/O. A :class:`PermutationSpec` says which axis of
which tensor each permutation acts on; :func:`permutation_spec` builds it for the models of
:mod:`fedbarrier.learn.models`.

Permutation convention: ``perms[name]`` is an index tensor and permuting takes
``tensor.index_select(axis, perms[name])``, so unit ``i`` of the result is unit ``perms[name][i]``
of the input. :func:`weight_matching` returns the perms for which
``apply_permutation(spec, perms, other)`` is closest to ``reference``.

An axis may be a multiple ``n * k`` of its permutation's size ``n``: it is then read as ``n``
contiguous blocks of ``k`` (channel-major flatten), which is how ``cnn``'s ``fc1`` sees the
``C x H' x W'`` output of the last conv flattened by ``nn.Flatten``.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fedbarrier.errors import UserError

StateDict = Mapping[str, torch.Tensor]
Perms = dict[str, torch.Tensor]
AxesToPerm = dict[str, tuple[str | None, ...]]

SUPPORTED_MODELS = ("cnn", "mlp", "linear", "vgg11", "resnet18", "convnet")


@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes each permutation acts on.

    Attributes
    ----------
    axes_to_perm
        ``{key: (perm name or None per axis)}`` for every key of the state dict.
    perm_to_axes
        ``{perm name: ((key, axis), ...)}``, the inverse of ``axes_to_perm``.
    sizes
        ``{perm name: number of units permuted}``.
    """

    axes_to_perm: Mapping[str, tuple[str | None, ...]]
    perm_to_axes: Mapping[str, tuple[tuple[str, int], ...]]
    sizes: Mapping[str, int]

    @classmethod
    def from_axes(cls, axes_to_perm: AxesToPerm, state_dict: StateDict) -> "PermutationSpec":
        """Build the spec from ``{key: per-axis perm names}``, sizing each perm from ``state_dict``.

        A permutation's size is the smallest axis it acts on (its producer's output axis); every
        other axis it acts on must be a whole multiple of it (a flattened ``n x k`` axis).
        """
        if set(axes_to_perm) != set(state_dict):
            raise ValueError(f"spec keys differ from the state dict's: {_key_diff(axes_to_perm, state_dict)}")
        perm_to_axes: dict[str, list[tuple[str, int]]] = {}
        for key, names in axes_to_perm.items():
            if len(names) != state_dict[key].dim():
                raise ValueError(
                    f"{key}: {len(names)} axes in the spec, {state_dict[key].dim()} in the tensor"
                )
            for axis, name in enumerate(names):
                if name is not None:
                    perm_to_axes.setdefault(name, []).append((key, axis))
        sizes = {name: min(state_dict[k].shape[a] for k, a in axes) for name, axes in perm_to_axes.items()}
        for name, axes in perm_to_axes.items():
            for key, axis in axes:
                if state_dict[key].shape[axis] % sizes[name]:
                    raise ValueError(f"{key} axis {axis} is not a multiple of perm {name!r} ({sizes[name]})")
        return cls(
            axes_to_perm=dict(axes_to_perm),
            perm_to_axes={name: tuple(axes) for name, axes in perm_to_axes.items()},
            sizes=sizes,
        )


def sequential_spec(state_dict: StateDict) -> PermutationSpec:
    """Spec of a plain chain of linear/conv layers (``weight`` of shape ``(out, in, ...)``, optional
    ``bias``), in state-dict order: each layer's outputs but the last one's are permuted, by a
    permutation named after the layer.

    Fits ``mlp``, ``cnn``, ``convnet``, ``vgg11`` and ``linear`` (a one-layer chain: no
    permutation).
    """
    layers = [key.removesuffix(".weight") for key in state_dict if key.endswith(".weight")]
    axes: AxesToPerm = {}
    for i, layer in enumerate(layers):
        out = layer if i < len(layers) - 1 else None
        inp = layers[i - 1] if i > 0 else None
        axes[f"{layer}.weight"] = (out, inp) + (None,) * (state_dict[f"{layer}.weight"].dim() - 2)
        if f"{layer}.bias" in state_dict:
            axes[f"{layer}.bias"] = (out,)
    return PermutationSpec.from_axes(axes, state_dict)


def resnet_spec(state_dict: StateDict) -> PermutationSpec:
    """Spec of a normalization-free torchvision ResNet of BasicBlocks (``fedbarrier``'s resnet18).

    The residual stream of stage ``layerS`` is one permutation, named ``layerS``: the stem
    ``conv1`` (for ``layer1``), every block's ``conv2`` output and the stage's ``downsample.0``
    output all write into it, since they are summed. Each block's inner ``conv1`` output has its
    own permutation, named after that conv (``layerS.B.conv1``). ``fc`` reads the last stream.
    """
    found = (re.fullmatch(r"(layer\d+)\.(\d+)\.conv1\.weight", key) for key in state_dict)
    blocks = [m.groups() for m in found if m]
    stream = "layer1"  # the stem writes the stream that layer1's identity shortcuts carry
    axes: AxesToPerm = {"conv1.weight": (stream, None, None, None)}
    for stage, block in blocks:
        prefix, inner = f"{stage}.{block}", f"{stage}.{block}.conv1"
        axes[f"{prefix}.conv1.weight"] = (inner, stream, None, None)
        axes[f"{prefix}.conv2.weight"] = (stage, inner, None, None)
        if f"{prefix}.downsample.0.weight" in state_dict:
            axes[f"{prefix}.downsample.0.weight"] = (stage, stream, None, None)
        stream = stage
    axes["fc.weight"] = (None, stream)
    axes["fc.bias"] = (None,)
    return PermutationSpec.from_axes(axes, state_dict)


def permutation_spec(model_name: str, state_dict: StateDict) -> PermutationSpec:
    """Spec of model ``model_name`` (one of :data:`SUPPORTED_MODELS`) with this state dict.

    Raises
    ------
    UserError
        ``model_name`` is not supported.
    """
    if model_name not in SUPPORTED_MODELS:
        raise UserError(
            f"weight matching does not support model {model_name!r}; supported: {', '.join(SUPPORTED_MODELS)}"
        )
    if model_name == "resnet18":
        return resnet_spec(state_dict)
    return sequential_spec(state_dict)


def spec_from_state(state_dict: StateDict) -> PermutationSpec:
    """The spec of a supported model recognized by its keys: a ResNet (``layer1.0.conv1.weight``)
    or a chain of layers (the other supported models). For code that has a state dict but not the
    model's name (a strategy)."""
    if "layer1.0.conv1.weight" in state_dict:
        return resnet_spec(state_dict)
    return sequential_spec(state_dict)


def identity_perms(spec: PermutationSpec) -> Perms:
    """The identity permutation of every unit group of ``spec``."""
    return {name: torch.arange(size) for name, size in spec.sizes.items()}


def apply_permutation(
    spec: PermutationSpec, perms: Mapping[str, torch.Tensor], state_dict: StateDict
) -> dict[str, torch.Tensor]:
    """A new state dict: ``state_dict`` with every axis of ``spec`` permuted by ``perms``.

    The input is left untouched; tensors no permutation acts on are copied.
    """
    _check_keys(spec, state_dict)
    if set(perms) != set(spec.sizes):
        raise ValueError(f"perms {sorted(perms)} differ from the spec's {sorted(spec.sizes)}")
    for name, perm in perms.items():
        if perm.shape != (spec.sizes[name],):
            raise ValueError(f"perm {name!r} has shape {tuple(perm.shape)}, expected ({spec.sizes[name]},)")
    permuted = {key: _permute(spec, perms, key, tensor) for key, tensor in state_dict.items()}
    return {key: t.clone() if t is state_dict[key] else t for key, t in permuted.items()}


def weight_matching(
    spec: PermutationSpec,
    reference: StateDict,
    other: StateDict,
    max_iter: int = 100,
    seed: int = 0,
) -> Perms:
    """Permutations bringing ``other`` close to ``reference`` (Git Re-Basin weight matching).

    Starts from the identity; each of at most ``max_iter`` sweeps visits every permutation once,
    in an order drawn from ``numpy.random.default_rng(seed)``, and replaces it by the optimal
    assignment given the others if that strictly improves the objective. Stops after a sweep
    with no improvement. The objective never decreases, so the aligned ``other`` is never farther
    from ``reference`` than the unaligned one. Deterministic for a given ``seed``.
    """
    _check_keys(spec, reference)
    _check_keys(spec, other)
    for key in reference:
        if reference[key].shape != other[key].shape:
            raise ValueError(
                f"{key}: shapes {tuple(reference[key].shape)} and {tuple(other[key].shape)} differ"
            )
    ref = _as_float64(reference)
    oth = _as_float64(other)
    perms = identity_perms(spec)
    names = sorted(spec.sizes)
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for i in rng.permutation(len(names)):
            name = names[i]
            cost = _assignment_gain(spec, perms, name, ref, oth)
            _, cols = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(len(cols))
            old, new = cost[rows, perms[name].numpy()].sum(), cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[name] = torch.from_numpy(cols).long()
                improved = True
        if not improved:
            break
    return perms


def align(
    model_name: str,
    reference: StateDict,
    other: StateDict,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], Perms]:
    """``other`` permuted to match ``reference`` (see :func:`weight_matching`), and the perms used."""
    spec = permutation_spec(model_name, reference)
    perms = weight_matching(spec, reference, other, max_iter=max_iter, seed=seed)
    return apply_permutation(spec, perms, other), perms


def match_states(spec: PermutationSpec, reference: StateDict, states: Sequence[StateDict],
                 seed: int = 0) -> list[Perms]:
    """The weight-matching permutations of each of ``states`` to ``reference`` (the identity for
    the reference itself)."""
    return [identity_perms(spec) if state is reference
            else weight_matching(spec, reference, state, seed=seed) for state in states]


@dataclass(frozen=True)
class AlignedModels:
    """One round's client models aligned to a reference: what barriers after alignment use."""

    aligned_to: int | str  # the reference: a client id, or "global" (the model the server sent)
    states: list[dict[str, torch.Tensor]]  # in the clients' order, each permuted to the reference
    perms: list[Perms]  # the permutation applied to each client's model


def align_round(spec: PermutationSpec, states: Sequence[StateDict], weights: Sequence[float],
                client_ids: Sequence[int], received: StateDict | None, *, reference: str,
                seed: int) -> AlignedModels:
    """Align a round's client models (``barriers.align_reference``): to the client with the
    largest weight (``"largest"``; the first such on ties) or to the model the server sent
    (``"global"``, when there is one)."""
    label: int | str
    if reference == "global" and received is not None and set(received) == set(states[0]):
        target, label = received, "global"
    else:
        index = int(np.argmax(np.asarray(weights, dtype=float)))
        target, label = states[index], int(client_ids[index])
    perms = match_states(spec, target, states, seed)
    return AlignedModels(aligned_to=label,
                         states=[apply_permutation(spec, p, s) for p, s in zip(perms, states)],
                         perms=perms)


def _assignment_gain(
    spec: PermutationSpec, perms: Perms, name: str, ref: StateDict, oth: StateDict
) -> np.ndarray:
    """``gain[i, j]``: the objective's part from putting unit ``j`` of ``other`` at slot ``i``,
    every other permutation as in ``perms``."""
    size = spec.sizes[name]
    gain = torch.zeros(size, size, dtype=torch.float64)
    for key, axis in spec.perm_to_axes[name]:
        w_ref = _units_first(ref[key], axis, size)
        w_oth = _units_first(_permute(spec, perms, key, oth[key], skip_axis=axis), axis, size)
        gain += w_ref @ w_oth.T
    return gain.numpy()


def _permute(
    spec: PermutationSpec,
    perms: Mapping[str, torch.Tensor],
    key: str,
    tensor: torch.Tensor,
    skip_axis: int = -1,
) -> torch.Tensor:
    """``tensor`` (state-dict entry ``key``) permuted on every spec'd axis but ``skip_axis``."""
    for axis, name in enumerate(spec.axes_to_perm[key]):
        if name is not None and axis != skip_axis:
            tensor = _take(tensor, axis, perms[name].to(tensor.device))
    return tensor


def _take(tensor: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """Permute ``axis`` of ``tensor`` by ``index``; an axis ``k`` times longer than ``index`` is
    permuted as ``len(index)`` blocks of ``k``."""
    n, shape = len(index), tensor.shape
    blocked = tensor.reshape(*shape[:axis], n, shape[axis] // n, *shape[axis + 1 :])
    return blocked.index_select(axis, index).reshape(shape)


def _units_first(tensor: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """``tensor`` as a ``(size, -1)`` matrix whose row ``i`` holds everything of unit ``i`` on ``axis``."""
    return tensor.movedim(axis, 0).reshape(size, -1)


def _as_float64(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """CPU float64 copies, so the assignment costs are computed the same way on every device."""
    return {key: t.detach().to("cpu", torch.float64) for key, t in state_dict.items()}


def _check_keys(spec: PermutationSpec, state_dict: StateDict) -> None:
    """Raise ``ValueError`` when ``state_dict`` has other keys than ``spec`` describes."""
    if set(state_dict) != set(spec.axes_to_perm):
        raise ValueError(
            f"state dict keys differ from the spec's: {_key_diff(spec.axes_to_perm, state_dict)}"
        )


def _key_diff(expected: Mapping[str, object], state_dict: StateDict) -> str:
    """Short description of the keys missing from / extra in ``state_dict``."""
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    return f"missing {missing[:5]}, extra {extra[:5]}"
