"""Layers (the unit of every layer-wise barrier) and activation-sharing stages of a model.

A *layer* (docs/BARRIERS.md) is every parameter and buffer of the state dict that shares one module
prefix, the key minus its last component (``conv1.weight`` + ``conv1.bias`` -> ``conv1``), and
layers are ordered from input to output in the order the forward pass uses them.

A *stage* is a piece of the forward pass that can run on its own, ``x -> stage(params, x)``, so a
barrier evaluator can run models that share their first layers once up to the first stage whose
parameters differ, and reuse the activation from there.
"""

import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from fedbarrier.errors import UserError
from fedbarrier.learn.models import VGG

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


@dataclass(frozen=True)
class Stage:
    """One piece of a model's forward pass, run on any parameters with the model's key names.

    ``module`` runs the stage; its state-dict keys are the global keys minus ``prefix``. ``keys``
    are the global state-dict keys (parameters and buffers) the stage uses. For the built-in
    models no stage but the first changes its input in place, so a cached activation can be fed
    to several variants of the next stage.
    """

    name: str
    module: nn.Module
    prefix: str
    keys: tuple[str, ...]

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run the stage on ``x`` with the tensors of ``params`` (global keys)."""
        local = {key[len(self.prefix) :]: params[key] for key in self.keys}
        out: torch.Tensor = functional_call(self.module, local, (x,))
        return out


def model_stages(model: nn.Module) -> list[Stage]:
    """Split ``model`` into stages whose composition, in order, equals ``model(x)``.

    - ``nn.Sequential`` with the standard forward (the ``cnn`` and ``mlp`` models; nested plain
      Sequentials are flattened): one stage per child owning tensors, parameter-free children
      joining the stage before them (leading ones the first stage).
    - torchvision ``ResNet``: ``stem`` (conv1, bn1, relu, maxpool), one stage per residual block
      (``layer1.0``, prefix ``'layer1.0.'``, ...), and ``head`` (avgpool, flatten, fc).
    - :class:`fedbarrier.learn.models.VGG`: one stage per conv (with its relu/pool; the last one also
      takes avgpool and flatten), one per classifier linear layer (with its relu/dropout).
    - Any other model: one stage ``model`` wrapping it whole (correct, but nothing is shared).

    Every state-dict key lies in exactly one stage, each layer within one stage, and the stage
    order agrees with the layer order. If a split does not cover the state dict exactly (e.g. a
    subclass added parameters), the single whole-model stage is returned instead.
    """
    stages = _split(model)
    if stages is None or not _covers(model, stages):
        return [_whole(model)]
    return stages


def _split(model: nn.Module) -> list[Stage] | None:
    """The model-type specific split, or None for an unknown model type."""
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        return _chain_stages(_sequential_items(model, ""))
    # A torchvision ResNet can only exist if torchvision was imported (models.py imports it lazily).
    tv_models = sys.modules.get("torchvision.models")
    ResNet = getattr(tv_models, "ResNet", None)  # noqa: N806
    if ResNet is not None and isinstance(model, ResNet) \
            and _forward_unchanged(model, ResNet, "_forward_impl"):
        return _resnet_stages(model)
    if isinstance(model, VGG) and _forward_unchanged(model, VGG, "forward"):
        items = _sequential_items(model.features, "features.")
        items += [("avgpool", model.avgpool), (_FLATTEN, nn.Flatten())]
        return _chain_stages(items + _sequential_items(model.classifier, "classifier."))
    return None


_FLATTEN = "_flatten"  # name of the flatten the model does functionally; owns no keys


def _forward_unchanged(model: nn.Module, base: type, method: str) -> bool:
    """True if ``model`` runs ``base``'s own forward (a subclass may have rewired it)."""
    methods = ("forward", method)
    return all(getattr(type(model), m) is getattr(base, m) for m in methods)


def _sequential_items(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """``(global path, module)`` of the children in run order, plain Sequentials flattened."""
    items: list[tuple[str, nn.Module]] = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            items += _sequential_items(child, f"{prefix}{name}.")
        else:
            items.append((prefix + name, child))
    return items


def _resnet_stages(model: nn.Module) -> list[Stage]:
    """stem, one stage per residual block (its own module, prefixed keys), head."""
    stem: list[tuple[str, nn.Module]] = [(n, getattr(model, n))
                                         for n in ("conv1", "bn1", "relu", "maxpool")]
    stages = [_chain_stage("stem", stem)]
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in getattr(model, layer_name).named_children():
            stages.append(_module_stage(f"{layer_name}.{index}", block))
    head: list[tuple[str, nn.Module]] = [("avgpool", cast(nn.Module, model.avgpool)),
                                         (_FLATTEN, nn.Flatten()), ("fc", cast(nn.Module, model.fc))]
    return stages + [_chain_stage("head", head)]


def _chain_stages(items: list[tuple[str, nn.Module]]) -> list[Stage]:
    """Group run-ordered items: a stage starts at each item owning tensors."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for path, module in items:
        if _has_keys(module) or not groups:
            groups.append([])
        groups[-1].append((path, module))
    if len(groups) > 1 and not _has_keys(groups[0][0][1]):
        leading = groups.pop(0)  # parameter-free items before the first owner join its stage
        groups[0] = leading + groups[0]
    return [_chain_stage(_stage_name(group), group) for group in groups]


def _stage_name(group: list[tuple[str, nn.Module]]) -> str:
    """A stage is named after its first item owning tensors (or its first item)."""
    owners = [path for path, module in group if _has_keys(module)]
    return (owners or [group[0][0]])[0]


def _has_keys(module: nn.Module) -> bool:
    """True if ``module`` contributes any state-dict key."""
    return len(module.state_dict()) > 0


def _chain_stage(name: str, items: list[tuple[str, nn.Module]]) -> Stage:
    """A stage running ``items`` in order, keyed by their global paths (prefix '')."""
    chain = _Chain(items)
    return Stage(name, chain, "", tuple(chain.state_dict().keys()))


def _module_stage(path: str, module: nn.Module) -> Stage:
    """A stage that is one existing module; its keys are ``path + '.' + local key``."""
    prefix = f"{path}."
    return Stage(path, module, prefix, tuple(prefix + k for k in module.state_dict()))


def _whole(model: nn.Module) -> Stage:
    """The fallback: the whole model as one stage."""
    return Stage("model", model, "", tuple(model.state_dict().keys()))


def _covers(model: nn.Module, stages: list[Stage]) -> bool:
    """True if the stages' keys are exactly the model's keys, each in one stage."""
    keys = [key for stage in stages for key in stage.keys]
    return len(keys) == len(set(keys)) and set(keys) == set(model.state_dict())


def _pool_before_relu(items: list[tuple[str, nn.Module]]) -> tuple[str, ...]:
    """The run order of ``items`` with every ReLU that feeds a max-pool moved after it.

    ``relu(maxpool(x)) == maxpool(relu(x))`` exactly (ReLU is monotone, so it commutes with a
    max), and the pooled tensor is 4x smaller: rectifying it costs a quarter of the memory
    traffic. Measurements score each conv stage tens of times per round.
    """
    order = list(items)
    for i in range(len(order) - 1):
        (_, first), (_, second) = order[i], order[i + 1]
        if type(first) is nn.ReLU and type(second) is nn.MaxPool2d and not second.return_indices:
            order[i], order[i + 1] = order[i + 1], order[i]
    return tuple(path for path, _ in order)


class _Chain(nn.Module):
    """Runs existing modules in order while registering them under their global paths.

    ``features.18`` is registered as child ``18`` of an (inert) container ``features``, so the
    chain's state-dict keys are the model's keys and the stage prefix is ''.
    """

    def __init__(self, items: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self._paths = _pool_before_relu(items)
        for path, module in items:
            self._register(path, module)

    def _register(self, path: str, module: nn.Module) -> None:
        *parents, leaf = path.split(".")
        owner: nn.Module = self
        for name in parents:
            if name not in owner._modules:
                owner.add_module(name, nn.Module())
            owner = owner.get_submodule(name)
        owner.add_module(leaf, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the registered modules in their run order."""
        for path in self._paths:
            x = self.get_submodule(path)(x)
        return x
