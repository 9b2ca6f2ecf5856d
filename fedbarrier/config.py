"""Experiment configuration: TOML files validated into frozen dataclasses, one per section.

An experiment file sets only what differs from the defaults below, e.g.::

    seed = 0
    [data]
    dataset = "digits"
    partition = "dirichlet"
    alpha = 0.1

``--set section.key=value`` overrides any key (``--set seed=3`` for top-level keys); the value is
read as a TOML value, and a bare word is taken as a string (``--set data.dataset=cifar10``).
Unknown sections and keys, wrong types and out-of-range values raise ``UserError`` naming the key
and what is allowed.

Over 300 lines because it is the one schema of every config key (defaults, help texts, checks and
cross-checks) with its parser; splitting it would scatter the schema across modules.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from fedbarrier.errors import UserError

# Choices are listed here (not imported) so that reading a config never imports torch.
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "digits", "synthetic")
PARTITIONS = ("iid", "dirichlet", "pathological", "full")
MODELS = ("cnn", "mlp", "resnet18", "vgg11", "linear", "convnet")
SCHEDULES = ("constant", "cosine")
SERVER_SPLITS = ("train", "test")  # measured by the server on its sample of D
LOCAL_SPLITS = ("local-train", "local-test")  # measured by each client on its own data
SPLITS = SERVER_SPLITS + LOCAL_SPLITS
FAMILIES = ("full", "per_layer", "cumulative", "curve")


def _f(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with a help text and checks (choices, min, gt, max, items)."""
    return field(default=default, metadata={"help": help, **checks})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("digits", "which image set", choices=DATASETS)
    data_dir: str = _f("", "folder holding the dataset files ('' = ~/.cache/fedbarrier/data, "
                       "or $FEDBARRIER_DATA)")
    download: bool = _f(True, "download when the files are absent (needs internet)")
    partition: str = _f("iid", "how the training set is split over clients", choices=PARTITIONS)
    num_clients: int = _f(10, "number of clients (simulated SuperNodes)", min=1, max=1_000_000)
    alpha: float = _f(0.1, "Dirichlet concentration (partition = dirichlet); small = non-iid", gt=0)
    classes_per_client: int = _f(2, "classes per client (partition = pathological)", min=1, max=100_000)
    min_partition_size: int = _f(10, "Dirichlet resamples until every client has this many "
                                 "examples, or fails", min=0, max=10_000_000)
    test_fraction: float = _f(0.2, "fraction of each client's partition held out as its local "
                              "test part", min=0.0, lt=1.0)
    train_size: int = _f(0, "use a seeded subset of this many training images (0 = all): "
                         "partitions, local test parts and the server's train split draw from it",
                         min=0, max=100_000_000)
    test_size: int = _f(0, "use a seeded subset of this many global test images (0 = all)",
                        min=0, max=100_000_000)
    # Only for dataset = "synthetic": generated, learnable images.
    synthetic_classes: int = _f(10, "synthetic: number of classes", min=2, max=100_000)
    synthetic_shape: tuple[int, ...] = _f((3, 32, 32), "synthetic: image shape [C, H, W]", items=3, max=4096)
    synthetic_train_size: int = _f(2000, "synthetic: training examples", min=1, max=10_000_000)
    synthetic_test_size: int = _f(500, "synthetic: global test examples", min=1, max=10_000_000)
    synthetic_noise: float = _f(1.0, "synthetic: noise around each class mean", min=0.0)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("cnn", "architecture", choices=MODELS)
    width: int = _f(0, "base channels (cnn, resnet18, vgg11) or hidden units (mlp); "
                    "0 = the model's default", min=0, max=65_536)
    classifier_width: int = _f(0, "vgg11: hidden units of the two classifier layers; 0 = 8 x width "
                               "(512 at the default width); 4096 = the paper's", min=0, max=65_536)


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = _f(5, "federated rounds (aggregations)", min=1, max=1_000_000)
    client_init: str = _f("common", "'common': every client starts from the server's initial "
                          "model; 'own': from its own seed's initialization (in round 1 it ignores "
                          "the initial model sent, and a layer it never receives stays its own)",
                          choices=("common", "own"))
    keep_optimizer_state: bool = _f(False, "carry each client's SGD momentum across rounds "
                                    "(centralized-equivalent training); FL usually resets it")
    local_epochs: int = _f(1, "local epochs per round", min=1, max=100_000)
    local_steps: int = _f(0, "local SGD steps per round instead of epochs (0 = use local_epochs); "
                          "strategy 'minibatch-sgd' always takes 1", min=0, max=100_000_000)
    batch_size: int = _f(32, "local mini-batch size", min=1, max=10_000_000)
    lr: float = _f(0.05, "SGD learning rate", gt=0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, lt=1.0)
    weight_decay: float = _f(5e-4, "SGD weight decay", min=0.0)
    lr_schedule: str = _f("constant", "learning-rate schedule over the whole run",
                          choices=SCHEDULES)
    warmup: float = _f(0.0, "fraction of the run with a linear warm-up (either schedule)",
                       min=0.0, lt=1.0)
    device: str = _f("auto", "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    augment: str = _f("none", "training-batch augmentation: 'crop-flip' = random crop with 4-pixel "
                      "zero padding and horizontal flip (the usual CIFAR one); never applied to "
                      "evaluation or barrier samples", choices=("none", "crop-flip"))
    eval_batch_size: int = _f(0, "batch size for evaluation and barrier measurement (0 = auto: "
                              "~400k input values a batch, e.g. 128 CIFAR or 500 Fashion-MNIST "
                              "images)", min=0, max=10_000_000)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = _f("fedavg", "aggregation strategy")
    fraction_train: float = _f(1.0, "fraction of clients sampled for training each round",
                               gt=0.0, max=1.0)
    clients_per_round: int = _f(0, "clients sampled per round (0 = use fraction_train)", min=0, max=1_000_000)
    fraction_evaluate: float = _f(1.0, "fraction of clients evaluating on their local test part",
                                  min=0.0, max=1.0)
    min_clients: int = _f(1, "stop the run when fewer usable client models come back in a round "
                          "(failed, diverged or malformed ones are excluded)", min=1, max=1_000_000)
    layers: tuple[str, ...] = _f((), "shared layers for name = 'layers' (names or regexes)")
    barrier_rule: str = _f("local", "barrier-aware: 'local' = each client adopts the averaged "
                           "layers that do not significantly hurt it on its own training data "
                           "(cumulative local barrier <= barriers.z * se); 'server' = the server "
                           "shares the layers whose server-side barrier is below threshold",
                           choices=("local", "server"))
    threshold: float = _f(0.1, "barrier-aware (rule 'server'): share layers whose barrier is "
                          "below this")
    margin: float = _f(0.02, "barrier-aware (rule 'server'): hysteresis around the threshold",
                       min=0.0)
    barrier_split: str = _f("train", "barrier-aware (rule 'server'): which measured split to read",
                            choices=SERVER_SPLITS)
    barrier_metric: str = _f("loss", "barrier-aware: which metric to read",
                             choices=("loss", "error"))
    barrier_statistic: str = _f("mean", "barrier-aware: summary over default clients",
                                choices=("mean", "max"))
    # Schemes of Kamp et al. (FedDC, dynamic averaging, Radon machine); see strategies/.
    daisy_period: int = _f(1, "feddc: pass each client's model on to another client every this "
                           "many rounds (0 = never: periodic averaging)", min=0, max=1_000_000)
    aggregation_period: int = _f(10, "feddc, periodic: average all models every this many rounds",
                                 min=1, max=1_000_000)
    delta: float = _f(1.0, "dynamic: synchronize when a client's squared distance to the last "
                      "synchronized model exceeds this", min=0.0)
    radon_height: int = _f(1, "radon: levels h of the Radon machine (needs r^h clients, r >= "
                           "number of model parameters + 2)", min=1, max=20)


@dataclass(frozen=True)
class SimulationConfig:
    num_cpus: float = _f(1.0, "CPU cores per simulated client (Ray resources)", gt=0)
    num_gpus: float | str = _f("auto", "GPU share per client (e.g. 0.25: four clients per GPU; "
                               "'auto': the clients that train at once share this machine's "
                               "GPUs when train.device is not cpu, else 0)", min=0.0,
                               words=("auto",))
    ray_address: str = _f("", "join an existing Ray cluster ('auto' or host:port; '' = "
                              "$RAY_ADDRESS if set, else start a private one)")
    backend: str = _f("ray", "what runs the clients: 'ray' (Flower's Ray backend, clients in "
                      "parallel worker processes) or 'inline' (one after another in this process: "
                      "starts at once, debuggers work; for small runs and tests)",
                      choices=("ray", "inline"))


@dataclass(frozen=True)
class BarrierConfig:
    enabled: bool = _f(True, "measure barriers before each aggregation")
    every: int = _f(1, "measure every N rounds (and always in the last round)", min=1, max=1_000_000)
    # Barriers are differences of losses on one shared sample, so its noise largely cancels;
    # with 300, a 10-client quickstart measurement takes ~0.06 s per split (docs/performance.md).
    n: int = _f(300, "examples in the fixed data sample per split (0 = all)", min=0, max=100_000_000)
    splits: tuple[str, ...] = _f(SPLITS, "data the barriers are measured on: the server's "
                                 "'train'/'test' samples, and each client's own 'local-train' "
                                 "/'local-test' parts (measured by the clients)", choices=SPLITS)
    local_n: int = _f(512, "examples each client measures local barriers on, per local split "
                      "(a seeded sample; 0 = all)", min=0, max=100_000_000)
    z: float = _f(2.0, "a barrier is significantly positive when value > z * se", min=0.0)
    families: tuple[str, ...] = _f(FAMILIES, "which barriers to measure", choices=FAMILIES)
    # Layer-set barriers cost (default clients) x (layers) model evaluations per round; with
    # many sampled clients a cap (e.g. 4) keeps a round's measurement O(layers), at the price of
    # a mean over a random subset instead of the exact p-weighted mean over every client.
    max_defaults: int = _f(0, "default clients for layer-set barriers, drawn per round from the "
                              "participants (0 = every client)", min=0, max=1_000_000)
    curve_points: int = _f(11, "alphas on the pairwise interpolation grid", min=2, max=10_001)
    window: int = _f(0, "moving-window size for an extra cumulative order (0 = off)", min=0, max=100_000)
    random_orders: int = _f(0, "seeded random layer orders for cumulative barriers", min=0, max=10_000)
    share_activations: bool = _f(True, "reuse activations of models that share first layers")
    distances: bool = _f(True, "record layer distances")
    overlap: bool = _f(True, "measure while the clients evaluate (false: block before aggregating)")
    align: str = _f("none", "also measure every server-side barrier after permutation alignment "
                    "(Git Re-Basin weight matching) of each client's model to a reference",
                    choices=("none", "weight-matching"))
    align_reference: str = _f("largest", "what models are aligned to: the client with the largest "
                              "weight ('largest') or the model the server sent this round ('global')",
                              choices=("largest", "global"))


@dataclass(frozen=True)
class OutputConfig:
    save_client_models: bool = _f(False, "save every client's returned model per round")
    plots: bool = _f(True, "draw the plots at the end of a run")
    tensorboard: bool = _f(True, "write TensorBoard event files to RUN_DIR/tensorboard "
                                 "(every round's scalars, barrier families, config, final plots)")


@dataclass(frozen=True)
class Config:
    name: str = _f("", "experiment name (defaults to the config file's stem)")
    seed: int = _f(0, "seed for partitions, initialization, data order and sampling", min=0, max=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    barriers: BarrierConfig = field(default_factory=BarrierConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "train": TrainConfig, "strategy": StrategyConfig,
    "simulation": SimulationConfig, "barriers": BarrierConfig, "output": OutputConfig,
}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "a list")


def _check_value(owner: type, key: str, value: Any, f: dataclasses.Field) -> Any:
    tp = typing.get_type_hints(owner)[f.name]
    meta = f.metadata
    origin = typing.get_origin(tp)
    if origin is tuple:  # tuples, not lists: configs are frozen and hashable (cache keys)
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} = {value!r} must be a list")
        items = [_check_scalar(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value)]
        if "items" in meta and len(items) != meta["items"]:
            raise UserError(f"{key} = {value!r} must have {meta['items']} items")
        return tuple(items)
    return _check_scalar(key, value, tp, meta)


def _check_scalar(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    if "words" in meta:  # a number, or one of a few words (num_gpus = "auto")
        words = " or ".join(repr(w) for w in meta["words"])
        if isinstance(value, str):
            if value not in meta["words"]:
                raise UserError(f"{key} = {value!r} is not allowed; use a number or {words}")
            return value
        tp = next(t for t in typing.get_args(tp) if t is not str)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} = {value!r} must be a number or {words}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool) \
            or not isinstance(value, tp):
        raise UserError(f"{key} = {value!r} must be {_type_name(tp)}")
    if tp is float and not math.isfinite(value):
        raise UserError(f"{key} = {value!r} must be a finite number")
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{key} = {value!r} is not allowed; choose one of "
                        f"{', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise UserError(f"{key} = {value!r} must be >= {meta['min']}")
    if "gt" in meta and value <= meta["gt"]:
        raise UserError(f"{key} = {value!r} must be > {meta['gt']}")
    if "max" in meta and value > meta["max"]:
        raise UserError(f"{key} = {value!r} must be <= {meta['max']}")
    if "lt" in meta and value >= meta["lt"]:
        raise UserError(f"{key} = {value!r} must be < {meta['lt']}")
    return value


def _build(cls: type, prefix: str, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            allowed = ", ".join(f"{prefix}{name}" for name in fields)
            raise UserError(f"unknown key '{full}'; allowed: {allowed}")
        if key in SECTIONS and cls is Config:
            if not isinstance(value, dict):
                raise UserError(f"'{key}' must be a [section], got {value!r}")
            kwargs[key] = _build(SECTIONS[key], f"{key}.", value)
        else:
            kwargs[key] = _check_value(cls, full, value, fields[key])
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    d = cfg.data
    if cfg.model.classifier_width and cfg.model.name != "vgg11":
        raise UserError(f"model.classifier_width = {cfg.model.classifier_width} is for model "
                        f"'vgg11' only (model.name = {cfg.model.name!r}); leave it 0")
    if cfg.strategy.clients_per_round > d.num_clients:
        raise UserError(f"strategy.clients_per_round = {cfg.strategy.clients_per_round} exceeds "
                        f"data.num_clients = {d.num_clients}")
    per_round = cfg.strategy.clients_per_round or max(1, int(d.num_clients
                                                            * cfg.strategy.fraction_train))
    if cfg.strategy.min_clients > per_round:
        raise UserError(f"strategy.min_clients = {cfg.strategy.min_clients} exceeds the "
                        f"{per_round} clients that train each round (data.num_clients = "
                        f"{d.num_clients}, strategy.fraction_train = {cfg.strategy.fraction_train}"
                        f", clients_per_round = {cfg.strategy.clients_per_round}): every round "
                        "would stop the run")
    if d.partition == "pathological" and d.dataset != "synthetic" and d.classes_per_client > 100:
        raise UserError(f"data.classes_per_client = {d.classes_per_client} exceeds the classes "
                        "of any supported dataset")
    if d.dataset == "synthetic" and d.partition == "pathological" \
            and d.classes_per_client > d.synthetic_classes:
        raise UserError(f"data.classes_per_client = {d.classes_per_client} exceeds "
                        f"data.synthetic_classes = {d.synthetic_classes}")
    gpus = cfg.simulation.num_gpus
    if isinstance(gpus, float) and gpus > 1 and not gpus.is_integer():
        raise UserError(f"simulation.num_gpus = {gpus} is not allowed; a share above 1 must be "
                        "a whole number of GPUs (Ray's rule)")
    if any(s < 1 for s in d.synthetic_shape):
        raise UserError(f"data.synthetic_shape = {d.synthetic_shape} must be positive")
    if cfg.strategy.name == "barrier-aware" and cfg.strategy.barrier_rule == "server" \
            and not cfg.barriers.enabled:
        raise UserError("strategy.name = 'barrier-aware' with barrier_rule = 'server' needs "
                        "barriers.enabled = true")
    if cfg.strategy.name == "barrier-aware" and cfg.strategy.barrier_rule == "server" \
            and cfg.strategy.barrier_split not in cfg.barriers.splits:
        raise UserError(f"strategy.barrier_split = {cfg.strategy.barrier_split!r} is not measured; "
                        f"barriers.splits = {list(cfg.barriers.splits)}")
    dev = cfg.train.device
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise UserError(f"train.device = {dev!r} is not allowed; use auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------------------------
# Loading, overriding, saving
# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """'section.key=value' -> (['section', 'key'], value). Bare words become strings."""
    if "=" not in text:
        raise UserError(f"--set {text!r} must look like section.key=value")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if not all(parts) or len(parts) > 2:
        raise UserError(f"--set {text!r}: key must be 'section.key' or a top-level key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Validate a raw TOML-shaped dict plus ``--set`` overrides into a :class:`Config`."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 1:
            merged[parts[0]] = value
        else:
            section = merged.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise UserError(f"--set {text!r}: '{parts[0]}' is not a section")
            section[parts[1]] = value
    cfg = _build(Config, "", merged)
    _cross_checks(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read an experiment TOML file (or only defaults when ``path`` is None)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UserError(f"config file {str(p)!r} is a folder; give an experiment TOML file")
        if not p.is_file():
            raise UserError(f"config file {str(p)!r} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.start}); "
                            "TOML files are UTF-8") from None
        except OSError as exc:
            raise UserError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
        raw.setdefault("name", p.stem)
    return from_dict(raw, overrides)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as plain TOML-ready data (tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v
    return plain(dataclasses.asdict(cfg))


def config_differences(a: Config, b: Config) -> list[str]:
    """The dotted keys (``data.alpha``) whose values differ between two configs."""
    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                       else {f"{prefix}{key}": value})
        return out
    mine, theirs = flat(to_dict(a)), flat(to_dict(b))
    return [key for key in mine if mine[key] != theirs.get(key)]


def to_toml(cfg: Config) -> str:
    return tomli_w.dumps(to_dict(cfg))


def describe() -> str:
    """Every key with its default and help text (for ``fedbarrier keys``)."""
    lines = []
    for name, cls in [("", Config), *SECTIONS.items()]:
        lines.append(f"[{name}]" if name else "# top level")
        for f in dataclasses.fields(cls):
            if name == "" and f.name in SECTIONS:
                continue
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory())  # type: ignore[misc,operator]
            lines.append(f"  {f.name} = {default!r:<24} # {f.metadata.get('help', '')}")
    return "\n".join(lines)

