"""Layers (the unit of every layer-wise barrier) of a model: grouping state-dict keys and selecting layers.

A *layer* (docs/BARRIERS.md) is every parameter and buffer of the state dict that shares one module
prefix, the key minus its last component (``conv1.weight`` + ``conv1.bias`` -> ``conv1``), and
layers are ordered from input to output in the order the forward pass uses them.

A model's activation-sharing *stages* are built in :mod:`fedbarrier.measure.stages`; ``Stage`` and
``model_stages`` are re-exported here, where their users have always imported them.
"""

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import count
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from fedbarrier.errors import UserError
from fedbarrier.measure.stages import Stage as Stage  # re-exported
from fedbarrier.measure.stages import model_stages as model_stages  # re-exported

LayerGroups = dict[str, list[str]]
"""Ordered ``{layer name: [state-dict keys]}``; insertion order is forward order."""


def layer_of(key: str) -> str:
    """Layer name of a state-dict key: the key without its last component.

    ``'layer1.0.conv1.weight' -> 'layer1.0.conv1'``. A key of the top-level module itself
    (``'weight'``, no dot) belongs to the layer ``''``.
    """
    return key.rpartition(".")[0]


def layer_groups(model: nn.Module, example_input: torch.Tensor) -> LayerGroups:
    """Group the state-dict keys of ``model`` into layers, ordered by first use in forward.

    One forward pass on ``example_input`` runs under ``torch.no_grad`` in eval mode (each
    module's train/eval flag is restored afterwards). A layer's position is the first time any of
    its tensors enters a torch operation (seen through a ``TorchFunctionMode``), which is exact
    even for modules that own parameters and call children; a layer none of whose tensors was
    seen falls back to the first call of its module (forward pre-hooks). Layers of modules that
    are never called come last, in state-dict order. A module called several times counts at its
    first call; tied tensors (one tensor under several keys) count for every key at once.
    """
    keys = list(model.state_dict().keys())
    ticks = _first_use_ticks(model, example_input)
    first_key = {layer_of(k): i for i, k in reversed(list(enumerate(keys)))}
    never = float("inf")
    position = {layer: (ticks.get(layer, never), first_key[layer]) for layer in first_key}
    groups: LayerGroups = {layer: [] for layer in sorted(position, key=position.__getitem__)}
    for key in keys:
        groups[layer_of(key)].append(key)
    return groups


def _first_use_ticks(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Run one forward pass and return ``{layer: tick of its first use}`` for used layers."""
    tensor_layers: dict[int, set[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        tensor_layers.setdefault(id(tensor), set()).add(layer_of(key))
    tick = count()
    used: dict[str, int] = {}
    called: dict[str, int] = {}

    def on_tensors(tensors: list[Any]) -> None:
        now = next(tick)
        for t in tensors:
            for layer in tensor_layers.get(id(t), ()):
                used.setdefault(layer, now)

    def on_call(layer: str) -> None:
        called.setdefault(layer, next(tick))

    with _eval_mode(model), torch.no_grad(), _module_calls(model, on_call):
        with _TensorUse(on_tensors):
            model(example_input)
    return {**called, **used}


class _TensorUse(TorchFunctionMode):
    """Reports the tensors entering each torch operation (property reads such as ``.shape``
    are not uses and are skipped)."""

    def __init__(self, report: Callable[[list[Any]], None]) -> None:
        super().__init__()
        self._report = report

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") != "__get__":
            self._report(tree_leaves((args, kwargs)))
        return func(*args, **kwargs)


@contextmanager
def _module_calls(model: nn.Module, on_call: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_call(module name)`` when a module that directly owns tensors is entered."""
    handles = []
    for name, module in model.named_modules():
        if _owns_tensors(module):
            hook = _entry_hook(name, on_call)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _entry_hook(name: str, on_call: Callable[[str], None]) -> Callable[..., None]:
    """A forward pre-hook reporting ``name`` (a closure per module, bound at creation)."""

    def hook(module: nn.Module, args: Any) -> None:
        on_call(name)

    return hook


def _owns_tensors(module: nn.Module) -> bool:
    """True if ``module`` itself (not a child) has a parameter or buffer."""
    return bool(module._parameters) or bool(module._buffers)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every module's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def select_layers(groups: LayerGroups, selectors: Sequence[str]) -> list[str]:
    """Layer names selected by exact names or regular expressions, in model order.

    A selector equal to a layer name selects that layer; any other selector is a regex that
    must match a whole layer name (``re.fullmatch``), e.g. ``'layer4\\..*'`` or ``'fc'``.

    Raises
    ------
    UserError
        A selector that is an invalid regex or matches no layer; the message lists the layers.
    """
    chosen: set[str] = set()
    for selector in selectors:
        matches = _match(groups, selector)
        if not matches:
            available = ", ".join(repr(name) for name in groups)
            raise UserError(f"layer selector {selector!r} matches no layer; available layers: {available}")
        chosen.update(matches)
    return [name for name in groups if name in chosen]


def _match(groups: LayerGroups, selector: str) -> list[str]:
    """Layers matched by one selector: the exact name if it is one, else the regex matches."""
    if selector in groups:
        return [selector]
    try:
        pattern = re.compile(selector)
    except re.error as err:
        raise UserError(f"layer selector {selector!r} is not a valid regex: {err}") from None
    return [name for name in groups if pattern.fullmatch(name)]
