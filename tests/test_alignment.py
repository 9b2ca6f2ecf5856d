"""Git Re-Basin weight matching: permutations keep the function, matching undoes a known
permutation, and never moves a model away from the reference."""

import pytest
import torch
from torch.func import functional_call

from fedbarrier.errors import UserError
from fedbarrier.learn.models import build_model
from fedbarrier.measure.alignment import (
    SUPPORTED_MODELS,
    PermutationSpec,
    align,
    apply_permutation,
    identity_perms,
    permutation_spec,
    sequential_spec,
    weight_matching,
)

# Non-square, so cnn's flatten (C x 5 x 4) has a spatial block that is not a square number.
SHAPE = (3, 20, 17)
CLASSES = 5
WIDTH = {"cnn": 4, "mlp": 16, "linear": None, "vgg11": 4, "resnet18": 4, "convnet": 4}
RESNET_INNER = [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]


def make(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, SHAPE, CLASSES, width=WIDTH[name]).eval()


def random_perms(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(size, generator=gen) for name, size in spec.sizes.items()}


def outputs(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = functional_call(model, state_dict, (x,))
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_random_permutation_keeps_outputs(name: str) -> None:
    model = make(name, 0)
    state = model.state_dict()
    spec = permutation_spec(name, state)
    permuted = apply_permutation(spec, random_perms(spec, 1), state)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(outputs(model, permuted, x), outputs(model, state, x), atol=1e-5, rtol=1e-4)
    changed = [k for k in state if not torch.equal(state[k], permuted[k])]
    if name == "linear":
        assert changed == []
    else:
        assert changed, "the permutation changed no tensor"


EXPECTED_SIZES = {
    "cnn": {"conv1": 4, "conv2": 8, "fc1": 16},
    "convnet": {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "conv5": 16, "conv6": 16},
    "mlp": {"fc1": 16, "fc2": 8},
    "linear": {},
    "vgg11": {
        **dict(zip([f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)], (4, 8, 16, 16, 32, 32, 32, 32))),
        "classifier.0": 32,
        "classifier.3": 32,
    },
    "resnet18": {
        **{f"layer{s}": 4 * 2 ** (s - 1) for s in range(1, 5)},
        **{inner: 4 * 2 ** (int(inner[5]) - 1) for inner in RESNET_INNER},
    },
}


@pytest.mark.parametrize("name", SUPPORTED_MODELS)
def test_spec_permutes_every_hidden_unit_group(name: str) -> None:
    spec = permutation_spec(name, make(name, 0).state_dict())
    assert dict(spec.sizes) == EXPECTED_SIZES[name]
    for perm, axes in spec.perm_to_axes.items():
        assert all(spec.axes_to_perm[key][axis] == perm for key, axis in axes)


def test_resnet_streams_are_shared_by_stem_shortcuts_and_downsamples() -> None:
    spec = permutation_spec("resnet18", make("resnet18", 0).state_dict())
    writers = {key for key, axis in spec.perm_to_axes["layer1"] if axis == 0}
    assert writers == {"conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"}
    writers = {key for key, axis in spec.perm_to_axes["layer3"] if axis == 0}
    assert writers == {"layer3.0.conv2.weight", "layer3.0.downsample.0.weight", "layer3.1.conv2.weight"}
    assert spec.axes_to_perm["layer3.0.downsample.0.weight"] == ("layer3", "layer2", None, None)
    assert spec.axes_to_perm["layer2.1.conv1.weight"] == ("layer2.1.conv1", "layer2", None, None)
    assert spec.axes_to_perm["fc.weight"] == (None, "layer4")


def test_cnn_flatten_permutes_blocks_of_spatial_positions() -> None:
    state = make("cnn", 0).state_dict()
    spec = permutation_spec("cnn", state)
    perms = identity_perms(spec)
    perms["conv2"] = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    fc1 = apply_permutation(spec, perms, state)["fc1.weight"]
    expected = state["fc1.weight"].reshape(16, 8, 5 * 4).flip(1).reshape(16, -1)
    assert torch.equal(fc1, expected)


@pytest.mark.parametrize("name", ["mlp", "cnn", "vgg11", "resnet18"])
def test_matching_undoes_a_known_permutation(name: str) -> None:
    reference = make(name, 0).state_dict()
    spec = permutation_spec(name, reference)
    shuffle = random_perms(spec, 3)
    other = apply_permutation(spec, shuffle, reference)
    perms = weight_matching(spec, reference, other)
    for perm in spec.sizes:
        assert torch.equal(perms[perm], torch.argsort(shuffle[perm])), perm
    aligned = apply_permutation(spec, perms, other)
    for key in reference:
        assert torch.equal(aligned[key], reference[key]), key


def tiny_mlp(w1: list[list[float]], b1: list[float], w2: list[list[float]]) -> dict[str, torch.Tensor]:
    return {
        "fc1.weight": torch.tensor(w1),
        "fc1.bias": torch.tensor(b1),
        "fc2.weight": torch.tensor(w2),
        "fc2.bias": torch.tensor([0.5, -0.5]),
    }


def test_hand_made_two_layer_mlp() -> None:
    # Hidden units 0, 1, 2 of `reference` are units 2, 0, 1 of `other`.
    reference = tiny_mlp([[1, 0], [0, 2], [3, 0]], [1, 2, 3], [[1, 2, 3], [4, 5, 6]])
    other = tiny_mlp([[0, 2], [3, 0], [1, 0]], [2, 3, 1], [[2, 3, 1], [5, 6, 4]])
    spec = sequential_spec(reference)
    assert spec.axes_to_perm == {
        "fc1.weight": ("fc1", None),
        "fc1.bias": ("fc1",),
        "fc2.weight": (None, "fc1"),
        "fc2.bias": (None,),
    }
    perms = weight_matching(spec, reference, other)
    assert perms["fc1"].tolist() == [2, 0, 1]
    aligned = apply_permutation(spec, perms, other)
    assert all(torch.equal(aligned[k], reference[k]) for k in reference)


def test_hand_made_noisy_match_picks_the_closest_units() -> None:
    # `other` is `reference` with units swapped (0 <-> 1) and small noise: still the swap.
    reference = tiny_mlp([[1, 0], [0, 1], [1, 1]], [0, 0, 0], [[1, 0, 0], [0, 1, 0]])
    other = tiny_mlp([[0.1, 0.9], [1.1, 0], [0.9, 1.0]], [0, 0, 0.1], [[0, 0.9, 0], [1, 0, 0.1]])
    perms = weight_matching(sequential_spec(reference), reference, other)
    assert perms["fc1"].tolist() == [1, 0, 2]


def test_linear_has_nothing_to_permute() -> None:
    reference, other = make("linear", 0).state_dict(), make("linear", 1).state_dict()
    spec = permutation_spec("linear", reference)
    assert dict(spec.sizes) == {} and dict(spec.perm_to_axes) == {}
    aligned, perms = align("linear", reference, other)
    assert perms == {}
    assert all(torch.equal(aligned[k], other[k]) for k in other)


def test_unsupported_model_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        permutation_spec("transformer", {})
    message = str(err.value)
    assert "transformer" in message and "\n" not in message
    assert all(name in message for name in SUPPORTED_MODELS)


def test_same_seed_gives_same_perms() -> None:
    reference, other = make("cnn", 0).state_dict(), make("cnn", 1).state_dict()
    spec = permutation_spec("cnn", reference)
    first = weight_matching(spec, reference, other, seed=5)
    second = weight_matching(spec, reference, other, seed=5)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])
def test_matching_reduces_distance_and_keeps_function(name: str) -> None:
    model = make(name, 0)
    reference, other = model.state_dict(), make(name, 1).state_dict()
    aligned, perms = align(name, reference, other)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert distance(reference, aligned) < distance(reference, other)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(outputs(model, aligned, x), outputs(model, other, x), atol=1e-5, rtol=1e-4)


def test_inputs_are_not_mutated() -> None:
    reference, other = make("mlp", 0).state_dict(), make("mlp", 1).state_dict()
    before = {k: v.clone() for k, v in other.items()}
    aligned, _ = align("mlp", reference, other)
    assert all(torch.equal(other[k], before[k]) for k in other)
    aligned["fc3.bias"].add_(1.0)  # copied even where nothing is permuted
    assert torch.equal(other["fc3.bias"], before["fc3.bias"])


def test_state_dict_not_matching_the_spec_is_rejected() -> None:
    reference = make("mlp", 0).state_dict()
    spec = permutation_spec("mlp", reference)
    with pytest.raises(ValueError, match="fc3.bias"):
        apply_permutation(spec, identity_perms(spec), {k: v for k, v in reference.items() if k != "fc3.bias"})
    wider = build_model("mlp", SHAPE, CLASSES, width=32).state_dict()
    with pytest.raises(ValueError, match="shapes"):
        weight_matching(spec, reference, wider)
