"""Layer groups (forward order, every key once), selectors, and stages that compose to the model."""

from collections import OrderedDict
from functools import cache

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedbarrier.errors import UserError
from fedbarrier.learn.models import MODELS, build_model
from fedbarrier.measure.layers import LayerGroups, layer_groups, layer_of, select_layers
from fedbarrier.measure.stages import Stage, model_stages

DIGITS = (1, 8, 8)
FASHION = (1, 28, 28)
CIFAR = (3, 32, 32)

RESNET18_LAYERS = [
    "conv1",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv1",
    "layer1.1.conv2",
    "layer2.0.conv1",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "layer2.1.conv1",
    "layer2.1.conv2",
    "layer3.0.conv1",
    "layer3.0.conv2",
    "layer3.0.downsample.0",
    "layer3.1.conv1",
    "layer3.1.conv2",
    "layer4.0.conv1",
    "layer4.0.conv2",
    "layer4.0.downsample.0",
    "layer4.1.conv1",
    "layer4.1.conv2",
    "fc",
]
VGG11_LAYERS = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)] + [
    f"classifier.{i}" for i in (0, 3, 6)
]
EXPECTED_LAYERS = {
    "cnn": ["conv1", "conv2", "fc1", "fc2"],
    "convnet": ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"],
    "mlp": ["fc1", "fc2", "fc3"],
    "vgg11": VGG11_LAYERS,
    "resnet18": RESNET18_LAYERS,
    "linear": ["fc"],
}
# The small-input cases of the brief: CIFAR for resnet18/vgg11, digits for cnn/mlp, fashion for all.
CASES = [
    ("resnet18", CIFAR),
    ("vgg11", CIFAR),
    ("cnn", DIGITS),
    ("mlp", DIGITS),
    *[(name, FASHION) for name in MODELS],
]


@cache
def _model(name: str, shape: tuple[int, int, int], seed: int = 0) -> nn.Module:
    """Built once per session; tests must not change it."""
    torch.manual_seed(seed)
    return build_model(name, shape, 10).eval()


def _input(shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))


class Reversed(nn.Module):
    """Children declared output-first; a top-level buffer used mid-way; one module never run."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(2, 2)
        self.head = nn.Linear(4, 2)
        self.middle = nn.Linear(4, 4)
        self.register_buffer("scale", torch.tensor(2.0))
        self.inp = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.middle(self.middle(self.inp(x)))  # `middle` runs twice, counts once
        return self.head(torch.relu(x) * self.scale)


# ---------------------------------------------------------------- layer_groups


def test_resnet18_has_the_21_layers_in_forward_order_and_no_buffers() -> None:
    # Prepare
    model = _model("resnet18", CIFAR)
    # Execute
    groups = layer_groups(model, _input(CIFAR))
    # Assert
    assert list(groups) == RESNET18_LAYERS
    assert all(keys == [f"{layer}.weight"] for layer, keys in groups.items() if layer != "fc")
    assert groups["fc"] == ["fc.weight", "fc.bias"]
    assert list(model.buffers()) == []


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_layer_order_follows_forward(name: str, shape: tuple[int, int, int]) -> None:
    groups = layer_groups(_model(name, shape), _input(shape))
    assert list(groups) == EXPECTED_LAYERS[name]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_every_state_dict_key_is_in_exactly_one_layer(name: str, shape: tuple[int, int, int]) -> None:
    model = _model(name, shape)
    groups = layer_groups(model, _input(shape))
    keys = [key for group in groups.values() for key in group]
    assert sorted(keys) == sorted(model.state_dict())
    assert all(layer_of(key) == layer for layer, group in groups.items() for key in group)


def test_forward_use_beats_definition_order() -> None:
    # Prepare
    model = Reversed()
    model.train()
    model.middle.eval()  # a mixed state, to check each flag comes back
    # Execute
    groups = layer_groups(model, torch.randn(2, 3))
    # Assert
    assert list(groups) == ["inp", "middle", "", "head", "unused"]
    assert groups[""] == ["scale"]
    assert model.training and model.head.training and not model.middle.training


def test_layer_groups_runs_without_grad_and_in_eval_mode() -> None:
    # Prepare
    seen: list[tuple[bool, bool]] = []
    fc, drop = nn.Linear(3, 2), nn.Dropout()
    drop.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    model = nn.Sequential(OrderedDict(fc=fc, drop=drop))
    # Execute
    layer_groups(model.train(), torch.randn(1, 3))
    # Assert
    assert seen == [(False, False)] and drop.training
    assert fc.weight.grad is None


@pytest.mark.parametrize(
    ("key", "layer"),
    [("layer1.0.conv1.weight", "layer1.0.conv1"), ("fc.bias", "fc"), ("weight", "")],
)
def test_layer_of(key: str, layer: str) -> None:
    assert layer_of(key) == layer


# ---------------------------------------------------------------- select_layers


@pytest.fixture(scope="module")
def resnet_groups() -> LayerGroups:
    return layer_groups(_model("resnet18", CIFAR), _input(CIFAR))


def test_select_by_names_returns_model_order(resnet_groups: LayerGroups) -> None:
    assert select_layers(resnet_groups, ["fc", "conv1", "fc"]) == ["conv1", "fc"]


def test_select_by_regex_fullmatch(resnet_groups: LayerGroups) -> None:
    downsample = select_layers(resnet_groups, [r".*downsample.*"])
    assert downsample == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert select_layers(resnet_groups, [r"layer4\.1\..*", "conv1"]) == [
        "conv1",
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]
    with pytest.raises(UserError, match="'conv' matches no layer"):
        select_layers(resnet_groups, ["conv"])  # fullmatch: a part of a name is no match


def test_select_empty_selection(resnet_groups: LayerGroups) -> None:
    assert select_layers(resnet_groups, []) == []


def test_unknown_selector_names_it_and_lists_layers(resnet_groups: LayerGroups) -> None:
    with pytest.raises(UserError) as info:
        select_layers(resnet_groups, ["conv1", "layer5.*"])
    message = str(info.value)
    assert "'layer5.*'" in message and "'layer4.1.conv2'" in message and "'fc'" in message
    assert "\n" not in message


def test_invalid_regex_is_a_user_error(resnet_groups: LayerGroups) -> None:
    with pytest.raises(UserError, match=r"'layer\[' is not a valid regex"):
        select_layers(resnet_groups, ["layer["])


# ---------------------------------------------------------------- model_stages


def _compose(stages: list[Stage], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        x = stage(params, x)
    return x


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_stages_compose_to_the_model(name: str, shape: tuple[int, int, int]) -> None:
    # Prepare: the model's own tensors, and another model's (the stages must use `params`)
    model, x = _model(name, shape), _input(shape)
    other = dict(_model(name, shape, seed=1).state_dict())
    # Execute
    with torch.no_grad():
        stages = model_stages(model)
        own = _compose(stages, dict(model.state_dict()), x)
        swapped = _compose(stages, other, x)
        expected_own, expected_swapped = model(x), functional_call(model, other, (x,))
    # Assert
    assert len(stages) > 1 or name == "linear"  # linear: one layer, one stage
    torch.testing.assert_close(own, expected_own, rtol=0, atol=1e-6)
    torch.testing.assert_close(swapped, expected_swapped, rtol=0, atol=1e-6)
    assert not torch.allclose(own, swapped)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_stages_partition_keys_and_follow_layer_order(name: str, shape: tuple[int, int, int]) -> None:
    # Prepare
    model = _model(name, shape)
    stages = model_stages(model)
    groups = layer_groups(model, _input(shape))
    # Execute
    stage_of = {key: i for i, stage in enumerate(stages) for key in stage.keys}
    layer_stage = [{stage_of[key] for key in keys} for keys in groups.values()]
    # Assert
    assert sum(len(stage.keys) for stage in stages) == len(stage_of) == len(model.state_dict())
    assert all(len(s) == 1 for s in layer_stage)  # each layer within one stage
    order = [next(iter(s)) for s in layer_stage]
    assert order == sorted(order) and set(order) == set(range(len(stages)))


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_stages_leave_their_input_unchanged(name: str, shape: tuple[int, int, int]) -> None:
    # An activation is cached and fed to several next stages, so no stage may change it.
    model, x = _model(name, shape), _input(shape)
    params = dict(model.state_dict())
    with torch.no_grad():
        for stage in model_stages(model):
            before = x.clone()
            out = stage(params, x)
            assert torch.equal(x, before), stage.name
            x = out


def test_resnet18_stages() -> None:
    stages = model_stages(_model("resnet18", CIFAR))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert [s.name for s in stages] == ["stem", *blocks, "head"]
    assert [s.prefix for s in stages] == ["", *[f"{b}." for b in blocks], ""]
    assert stages[0].keys == ("conv1.weight",) and stages[-1].keys == ("fc.weight", "fc.bias")
    assert stages[3].keys == (
        "layer2.0.conv1.weight",
        "layer2.0.conv2.weight",
        "layer2.0.downsample.0.weight",
    )
    assert stages[3].module is _model("resnet18", CIFAR).get_submodule("layer2.0")


def test_sequential_stages_merge_parameter_free_children() -> None:
    stages = model_stages(_model("cnn", DIGITS))
    assert [s.name for s in stages] == ["conv1", "conv2", "fc1", "fc2"]
    assert stages[0].keys == ("conv1.weight", "conv1.bias") and stages[0].prefix == ""


@pytest.mark.parametrize(("name", "shape", "first_stage"), [
    ("cnn", DIGITS, ("conv1", "pool1", "relu1")),
    ("vgg11", CIFAR, ("features.0", "features.2", "features.1")),
])
def test_conv_stages_pool_before_rectifying_with_the_same_numbers(
        name: str, shape: tuple[int, int, int], first_stage: tuple[str, ...]) -> None:
    # A ReLU feeding a max-pool runs after it (4x fewer values to rectify): relu and max
    # commute, so the output must equal the model's bit for bit.
    model, x = _model(name, shape), _input(shape)
    stages = model_stages(model)
    with torch.no_grad():
        out = _compose(stages, dict(model.state_dict()), x)
        expected = model(x)
    assert stages[0].module._paths == first_stage
    assert torch.equal(out, expected)


def test_nested_sequential_is_flattened() -> None:
    # Prepare
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Linear(3, 2))
    x = torch.randn(2, 2, 2)
    # Execute
    stages = model_stages(model)
    out = _compose(stages, dict(model.state_dict()), x)
    # Assert
    assert [s.name for s in stages] == ["1.0", "2"]
    assert stages[0].keys == ("1.0.weight", "1.0.bias")
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


class _Rewired(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # skips the second child
        return self[0](x)


@pytest.mark.parametrize(
    "model", [Reversed(), _Rewired(nn.Linear(3, 3), nn.Linear(3, 3))], ids=["custom", "rewired"]
)
def test_other_models_get_one_whole_model_stage(model: nn.Module) -> None:
    # Prepare
    x = torch.randn(2, 3)
    # Execute
    stages = model_stages(model)
    # Assert
    assert [(s.name, s.prefix, s.module) for s in stages] == [("model", "", model)]
    assert set(stages[0].keys) == set(model.state_dict())
    torch.testing.assert_close(stages[0](dict(model.state_dict()), x), model(x), rtol=0, atol=0)
