"""The four model families, built by name with readable, stable layer names.

Every model is built from torch's global RNG only, so ``torch.manual_seed(s)`` followed by
``build_model(...)`` gives the same weights every time (clients of one run start from one model).

- ``cnn``: a small fast CNN (two conv/relu/pool blocks, two linear layers), any input >= 4x4.
- ``convnet``: six 3x3 convs (two per stage, widths b, 2b, 4b, a max-pool between stages), global
  average pooling and one linear classifier: deep enough to have a middle, with the classifier a
  small share of the parameters (0.4 % at b = 32), unlike ``cnn``'s ``fc1``.
- ``mlp``: three linear layers on the flattened input.
- ``linear``: logistic regression, one linear layer on the flattened input (the Radon machine's
  model: d = (C*H*W + 1) * classes parameters).
- ``resnet18``: the normalization-free ResNet18 of Adilova et al. (ICLR 2024): torchvision's
  ``resnet18(norm_layer=nn.Identity)`` with a 3x3 stride-1 stem and no max-pool. It has exactly 21
  layers (``conv1``, 16 block convs, 3 ``downsample.0`` convs, ``fc``) and no buffers.
- ``vgg11``: torchvision's VGG11 feature extractor without batch norm, for small inputs (see
  :func:`_vgg11`).
"""

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

# torchvision is imported where a ResNet or VGG is built: importing it costs about a second, which
# every client process and every CLI call that never builds one would otherwise pay.
from fedbarrier.errors import UserError

MODELS = ("cnn", "mlp", "resnet18", "vgg11", "linear", "convnet")

# Default `width` of each model: cnn/vgg11/resnet18 first conv channels, mlp first hidden units.
DEFAULT_WIDTH = {"cnn": 32, "mlp": 256, "resnet18": 64, "vgg11": 64, "linear": 1,  # linear: unused
                 "convnet": 32}

#: Hidden units of the paper's (and torchvision's) VGG11 classifier: ``model.classifier_width``.
PAPER_VGG_CLASSIFIER = 4096

# Smallest height/width for which every downsampling step still halves a map >= 2 pixels wide.
# cnn: two floor 2x2 pools (4 -> 2 -> 1); resnet18: three stride-2 convs, which round up
# (5 -> 3 -> 2 -> 1); vgg11: five ceil-mode 2x2 pools (17 -> 9 -> 5 -> 3 -> 2 -> 1).
MIN_SIDE = {"cnn": 4, "mlp": 1, "resnet18": 5, "vgg11": 17, "linear": 1, "convnet": 4}


class SmallCNN(nn.Sequential):
    """The ``cnn`` model: a named ``nn.Sequential`` so layer names read ``conv1``, ``fc2``, ..."""


class ConvNet(nn.Sequential):
    """The ``convnet`` model: a named ``nn.Sequential`` (``conv1`` .. ``conv6``, ``fc``)."""


class MLP(nn.Sequential):
    """The ``mlp`` model: a named ``nn.Sequential`` (``fc1``, ``fc2``, ``fc3``)."""


class Linear(nn.Sequential):
    """The ``linear`` model: ``flatten`` then one ``fc`` layer (logistic regression)."""


class VGG(nn.Module):
    """VGG with torchvision's module names (``features.i``, ``avgpool``, ``classifier.i``).

    Own class rather than ``torchvision.models.VGG`` because the latter always builds (and
    initializes) a 25088x4096 classifier first, 400 MB of wasted work per model.
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features, global average pool, flatten, classifier (as torchvision's VGG)."""
        x = self.avgpool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int | None = None,
    classifier_width: int | None = None,
) -> nn.Module:
    """Build model ``name`` for ``(C, H, W)`` inputs and ``num_classes`` outputs.

    Parameters
    ----------
    name
        One of :data:`MODELS`.
    input_shape
        ``(channels, height, width)`` of one example.
    num_classes
        Number of output logits.
    width
        Channel/unit scale, ``None`` for the default in :data:`DEFAULT_WIDTH`; smaller values
        make fast CPU models, with the layer names unchanged.
    classifier_width
        ``vgg11`` only: hidden units of its two classifier layers, ``None`` for 8 x ``width``
        (512 at the default width, the usual CIFAR VGG); 4096 is the paper's (and ImageNet's).

    Raises
    ------
    UserError
        Unknown name, non-positive sizes, or an input too small for the architecture.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    channels, height, w = _check_shape(name, input_shape)
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if width is None:
        width = DEFAULT_WIDTH[name]
    if width < 1:
        raise UserError(f"width must be >= 1 or unset, got {width}")
    if classifier_width is not None and (name != "vgg11" or classifier_width < 1):
        raise UserError(f"classifier_width = {classifier_width} is for model 'vgg11' only, "
                        f"and must be >= 1 (model is {name!r})")
    if name == "cnn":
        return _cnn(channels, height, w, num_classes, width)
    if name == "mlp":
        return _mlp(channels * height * w, num_classes, width)
    if name == "convnet":
        return _convnet(channels, num_classes, width)
    if name == "linear":
        return Linear(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(channels * height * w, num_classes)))
    if name == "resnet18":
        return _resnet18(channels, num_classes, width)
    return _vgg11(channels, num_classes, width, classifier_width or 8 * width)


def _check_shape(name: str, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validate ``(C, H, W)``: three positive ints, H and W at least ``MIN_SIDE[name]``."""
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise UserError(f"input_shape must be (channels, height, width) > 0, got {input_shape}")
    channels, height, width = (int(s) for s in input_shape)
    if min(height, width) < MIN_SIDE[name]:
        raise UserError(
            f"input_shape {tuple(input_shape)} is too small for model {name!r}: "
            f"height and width must be >= {MIN_SIDE[name]}"
        )
    return channels, height, width


def _cnn(channels: int, height: int, width: int, num_classes: int, base: int) -> SmallCNN:
    """conv(C->b)-relu-pool, conv(b->2b)-relu-pool, fc(->4b)-relu, fc(->classes); b=32: 128 hidden.

    The flatten size is computed from the input (floor pools: H//4 x W//4), so the classifier
    sees the spatial layout rather than a globally pooled vector.
    """
    flat = 2 * base * (height // 4) * (width // 4)
    return SmallCNN(
        OrderedDict(
            conv1=nn.Conv2d(channels, base, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(base, 2 * base, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat, 4 * base),
            relu3=nn.ReLU(),
            fc2=nn.Linear(4 * base, num_classes),
        )
    )


def _convnet(channels: int, num_classes: int, base: int) -> ConvNet:
    """conv(C->b) conv(b->b) pool, conv(b->2b) conv(2b->2b) pool, conv(2b->4b) conv(4b->4b),
    global average pool, fc(4b->classes); ReLU after every conv. Floor pools: any input >= 4x4."""
    widths = [channels, base, base, 2 * base, 2 * base, 4 * base, 4 * base]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, 7):
        layers[f"conv{i}"] = nn.Conv2d(widths[i - 1], widths[i], 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        if i in (2, 4):
            layers[f"pool{i // 2}"] = nn.MaxPool2d(2)
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(4 * base, num_classes)
    model = ConvNet(layers)
    _kaiming_convs(model)
    return model


def _mlp(in_features: int, num_classes: int, base: int) -> MLP:
    """flatten, fc1(->b) relu, fc2(->b/2) relu, fc3(->classes); b=256 by default."""
    half = max(1, base // 2)
    return MLP(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(in_features, base),
            relu1=nn.ReLU(),
            fc2=nn.Linear(base, half),
            relu2=nn.ReLU(),
            fc3=nn.Linear(half, num_classes),
        )
    )


def _resnet18(channels: int, num_classes: int, base: int) -> nn.Module:
    """The paper's normalization-free ResNet18 (torchvision ``ResNet``, so its forward is reused).

    ``norm_layer=nn.Identity`` turns every BatchNorm (also the one in ``downsample``) into an
    Identity, so there are no buffers and the block convs keep torchvision's ``bias=False``. The
    convs are (re-)initialized with torchvision's conv init (Kaiming normal, fan_out), so the new
    stem conv and rebuilt stages follow the same rule as the rest. For ``base != 64`` the four
    stages are rebuilt with ``base, 2*base, 4*base, 8*base`` channels.
    """
    from torchvision.models import resnet18  # type: ignore[import-untyped]

    model: nn.Module = resnet18(norm_layer=nn.Identity, num_classes=num_classes)
    if base != DEFAULT_WIDTH["resnet18"]:
        _rewiden_resnet(model, base, num_classes)
    model.conv1 = nn.Conv2d(channels, base, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    _kaiming_convs(model)
    return model


def _rewiden_resnet(model: Any, base: int, num_classes: int) -> None:
    """Rebuild ``layer1..4`` and ``fc`` of a ResNet18 (torchvision's ``ResNet``) in place with
    ``base`` stem channels."""
    model.inplanes = base  # read by torchvision's _make_layer to size each stage's input
    from torchvision.models.resnet import BasicBlock  # type: ignore[import-untyped]

    model.layer1 = model._make_layer(BasicBlock, base, 2)
    model.layer2 = model._make_layer(BasicBlock, 2 * base, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * base, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 8 * base, 2, stride=2)
    model.fc = nn.Linear(8 * base, num_classes)


def _kaiming_convs(module: nn.Module) -> None:
    """torchvision's ResNet/VGG conv init: Kaiming normal (fan_out, relu), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _vgg11(channels: int, num_classes: int, base: int, hidden: int) -> VGG:
    """VGG11 ("A" config, no batch norm) for 28x28/32x32 inputs.

    Changes from torchvision, all keeping its module names and parameter shapes per width:
    - the max-pools use ``ceil_mode=True``: identical for 32x32 (all sizes even) and lets 28x28
      reach 1x1 (28-14-7-4-2-1) instead of failing at 0x0;
    - the average pool is adaptive to 1x1 (the 7x7 of ImageNet would only replicate a 1x1 map);
    - the classifier is ``Linear(8b, h)-ReLU-Dropout-Linear(h, h)-ReLU-Dropout-Linear(h, k)`` with
      ``h = hidden``: 8b by default (512 for b=64, the usual CIFAR VGG), 4096 with
      ``model.classifier_width = 4096`` (the paper's, as torchvision's). Dropout (p=0.5, as
      torchvision) is active in training only; evaluation and barriers run in eval mode.
    Init follows torchvision's VGG (Kaiming convs, zero biases), with its N(0, 0.01) linears
    only for the paper's 4096-wide classifier, the one that init was made for; narrower
    classifiers keep ``nn.Linear``'s own init (see :func:`_init_vgg`).
    """
    from torchvision.models.vgg import cfgs, make_layers  # type: ignore[import-untyped]

    cfg = [v if v == "M" else max(1, int(v) * base // 64) for v in cfgs["A"]]
    features = make_layers(cfg, batch_norm=False)
    _adapt_vgg_features(features, channels)
    classifier = nn.Sequential(
        nn.Linear(8 * base, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(p=0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(p=0.5),
        nn.Linear(hidden, num_classes),
    )
    model = VGG(features, classifier)
    _init_vgg(model, torchvision_linears=hidden == PAPER_VGG_CLASSIFIER)
    return model


def _adapt_vgg_features(features: nn.Sequential, channels: int) -> None:
    """Make the first conv take ``channels`` inputs and the pools round up (in place)."""
    first = features[0]
    assert isinstance(first, nn.Conv2d)
    features[0] = nn.Conv2d(channels, first.out_channels, kernel_size=3, padding=1)
    for m in features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True


def _init_vgg(model: VGG, torchvision_linears: bool) -> None:
    """torchvision's VGG conv init, so weights do not depend on how the modules were built.

    The linears: torchvision's N(0, 0.01) with ``torchvision_linears``; otherwise
    ``nn.Linear``'s own init (uniform, bound 1/sqrt(fan_in)), reset here so that it follows the
    seed in module order too. N(0, 0.01) scales a layer's output by 0.01 * sqrt(fan_in): 0.64 in
    a 4096-wide classifier, 0.11 in a 128-wide one, where three such layers leave the logits
    ~1,000x smaller and the network at chance (width 16 on Fashion-MNIST: 10 % test accuracy after
    3 epochs at lr 0.002-0.05; 75.6 % with nn.Linear's init at lr 0.05).
    """
    _kaiming_convs(model)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if torchvision_linears:
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()
