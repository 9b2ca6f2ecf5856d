"""build_model: names, shapes, errors, determinism and the paper's normalization-free ResNet18."""

import math
from typing import Any

import pytest
import torch
from torch import nn

from fedbarrier.errors import UserError
from fedbarrier.learn.models import MODELS, build_model

DIGITS = (1, 8, 8)
FASHION = (1, 28, 28)
CIFAR = (3, 32, 32)

# Every model on every input shape it accepts (vgg11 needs >= 17x17, so not digits).
CASES = [(name, shape) for name in MODELS for shape in (DIGITS, FASHION, CIFAR)]
CASES.remove(("vgg11", DIGITS))


def _built(name: str, shape: tuple[int, int, int], width: int | None = None) -> Any:
    """build_model with 10 classes, typed Any so tests can reach submodules as attributes."""
    return build_model(name, shape, 10, width=width)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_output_shape_is_batch_by_classes(name: str, shape: tuple[int, int, int]) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=7).eval()
    # Execute
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    # Assert
    assert out.shape == (2, 7)


def test_unknown_model_names_the_value_and_the_allowed_ones() -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet50", CIFAR, 10)
    message = str(info.value)
    assert "'resnet50'" in message and all(name in message for name in MODELS)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "shape", "minimum"),
    [
        ("vgg11", DIGITS, 17),
        ("vgg11", (3, 16, 32), 17),
        ("cnn", (1, 3, 3), 4),
        ("resnet18", (3, 4, 4), 5),
    ],
)
def test_input_too_small_is_a_user_error(name: str, shape: tuple[int, int, int], minimum: int) -> None:
    with pytest.raises(UserError, match=rf"too small for model '{name}'.*>= {minimum}$"):
        build_model(name, shape, 10)


@pytest.mark.parametrize(
    ("name", "shape"), [("vgg11", (3, 17, 17)), ("cnn", (1, 4, 4)), ("resnet18", (3, 5, 5))]
)
def test_smallest_allowed_input_runs(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 3, width=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 3)


@pytest.mark.parametrize(
    ("shape", "classes", "width", "pattern"),
    [
        ((3, 32), 10, None, "input_shape"),
        ((0, 32, 32), 10, None, "input_shape"),
        (CIFAR, 0, None, "num_classes"),
        (CIFAR, 10, 0, "width"),
    ],
)
def test_bad_sizes_are_user_errors(
    shape: tuple[int, ...], classes: int, width: int | None, pattern: str
) -> None:
    with pytest.raises(UserError, match=pattern):
        build_model("cnn", shape, classes, width=width)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MODELS)
def test_init_depends_only_on_the_torch_seed(name: str) -> None:
    # Prepare / Execute
    states = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        states.append(build_model(name, CIFAR, 10, width=8).state_dict())
    same, other = states[1], states[2]
    # Assert
    assert all(torch.equal(states[0][k], same[k]) for k in same)
    assert not all(torch.equal(states[0][k], other[k]) for k in other)


def test_resnet18_is_the_papers_normalization_free_variant() -> None:
    model = _built("resnet18", CIFAR)
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.out_channels) == (3, 64)
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert list(model.buffers()) == []
    downsample = model.layer2[0].downsample
    assert [type(m) for m in downsample] == [nn.Conv2d, nn.Identity]
    assert model.fc.out_features == 10


def test_resnet18_takes_the_input_channels() -> None:
    assert _built("resnet18", FASHION).conv1.in_channels == 1


def test_width_scales_channels_and_keeps_names() -> None:
    # Prepare
    default = {n: _built(n, CIFAR) for n in ("cnn", "vgg11")}
    narrow = {n: _built(n, CIFAR, width=16) for n in ("cnn", "vgg11", "resnet18")}
    # Assert
    assert narrow["cnn"].conv1.out_channels == 16 and default["cnn"].conv1.out_channels == 32
    assert default["cnn"].fc1.out_features == 128
    assert narrow["vgg11"].features[0].out_channels == 16
    assert narrow["vgg11"].classifier[6].in_features == 128
    assert default["vgg11"].classifier[0].in_features == 512
    resnet = narrow["resnet18"]
    assert resnet.conv1.out_channels == 16 and resnet.layer4[1].conv2.out_channels == 128
    assert resnet.fc.in_features == 128
    for name in ("cnn", "vgg11"):
        assert narrow[name].state_dict().keys() == default[name].state_dict().keys()


def test_mlp_sizes() -> None:
    model = _built("mlp", DIGITS)
    sizes = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert sizes == [(64, 256), (256, 128), (128, 10)]


def test_cnn_and_mlp_children_are_named() -> None:
    cnn = [name for name, _ in build_model("cnn", DIGITS, 10).named_children()]
    mlp = [name for name, _ in build_model("mlp", DIGITS, 10).named_children()]
    assert cnn[:3] == ["conv1", "relu1", "pool1"] and cnn[-1] == "fc2"
    assert mlp == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]


def test_vgg11_dropout_only_in_training() -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model("vgg11", FASHION, 10, width=8)
    x = torch.randn(4, *FASHION)
    # Execute
    with torch.no_grad():
        evals = [model.eval()(x) for _ in range(2)]
        trains = [model.train()(x) for _ in range(2)]
    # Assert
    assert torch.equal(evals[0], evals[1])
    assert not torch.equal(trains[0], trains[1])


def test_the_papers_vgg11_has_a_4096_wide_classifier_and_its_parameter_count():
    """--set model.name=vgg11 --set model.classifier_width=4096: VGG11 ("A", no batch norm) with
    the paper's (and torchvision's) 4096-unit classifier on 512 pooled CIFAR features."""
    from fedbarrier.config import load_config
    from fedbarrier.measure.layers import layer_groups
    from fedbarrier.runtime.build import model_of

    cfg = load_config(None, ["model.name=vgg11", "model.classifier_width=4096"])
    model = model_of(cfg.model, (3, 32, 32), 10)
    layers = list(layer_groups(model, torch.zeros(2, 3, 32, 32)))
    assert layers == [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)] + \
        ["classifier.0", "classifier.3", "classifier.6"]
    # by hand: convs 3-64-128-256-256-512-512-512-512 (3x3, with bias), then 512-4096-4096-10
    channels = [3, 64, 128, 256, 256, 512, 512, 512, 512]
    convs = sum(c_in * c_out * 9 + c_out for c_in, c_out in zip(channels, channels[1:]))
    classifier = (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    assert convs == 9_220_480 and classifier == 18_923_530
    assert sum(p.numel() for p in model.parameters()) == convs + classifier == 28_144_010
    default = model_of(load_config(None, ["model.name=vgg11"]).model, (3, 32, 32), 10)
    assert default.classifier[0].out_features == 512  # the usual CIFAR VGG unless asked


def test_classifier_width_is_for_vgg11_only():
    from fedbarrier.config import load_config

    with pytest.raises(UserError, match="model.classifier_width = 4096 is for model 'vgg11' only"):
        load_config(None, ["model.classifier_width=4096"])


@pytest.mark.parametrize("classifier_width, expected_std", [
    (4096, 0.01),                      # torchvision's N(0, 0.01), what the paper's VGG11 used
    (None, 1 / math.sqrt(3 * 128)),    # nn.Linear's U(±1/sqrt(fan_in)) at width 16: 128 -> 128
])
def test_vgg11_classifier_init_follows_its_width(classifier_width, expected_std) -> None:
    """N(0, 0.01) linears left a 128-wide classifier's logits ~1,000x too small: the width-16
    VGG11 sat at chance on Fashion-MNIST for 3 epochs; narrow classifiers keep nn.Linear's."""
    from fedbarrier.learn.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg11", (1, 28, 28), 10, width=16, classifier_width=classifier_width)
    hidden = model.classifier[3].weight  # the middle linear: fan_in = classifier width
    assert hidden.std().item() == pytest.approx(expected_std, rel=0.05)
    assert model.classifier[3].bias.abs().max().item() <= (0.0 if classifier_width else
                                                           1 / math.sqrt(hidden.shape[1]))
