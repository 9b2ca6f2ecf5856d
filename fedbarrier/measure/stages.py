"""Activation-sharing stages of a model: pieces of its forward pass that run on their own.

A *stage* is a piece of the forward pass that can run on its own, ``x -> stage(params, x)``, so a
barrier evaluator can run models that share their first layers once up to the first stage whose
parameters differ, and reuse the activation from there. Every layer
(:mod:`fedbarrier.measure.layers`) lies within one stage.
"""

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from fedbarrier.learn.models import VGG


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
