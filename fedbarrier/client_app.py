"""The Flower ClientApp: local SGD on the client's own partition, evaluation on its local test part.

``make_client_app(cfg)`` closes over a validated config (what ``fedbarrier run`` uses with the
simulation engine); the module-level ``app`` reads the config path from the run config instead,
for ``flwr run .`` (see ``[tool.flwr.app.config]`` in pyproject.toml).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedbarrier.build import initial_state
from fedbarrier.config import Config, ModelConfig, load_config
from fedbarrier.federation import federation
from fedbarrier.instrumented import CLIENT_RECORD, NUM_EXAMPLES, PARTITION_ID, SHARED_LAYERS
from fedbarrier.models import build_model
from fedbarrier.task import derive_seed, evaluate, lr_at, resolve_device, train

ARRAYS = "arrays"  # Flower's FedAvg default `arrayrecord_key`
CONFIG = "config"  # Flower's FedAvg default `configrecord_key`
METRICS = "metrics"
LOCAL_MODEL = "local-model"  # Context.state: the client's own model (when layers stay personal)
OPTIMIZER = "optimizer"  # Context.state: SGD momentum buffers (train.keep_optimizer_state)


@lru_cache(maxsize=2)
def _model(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """One module per process; every message loads its weights into it."""
    return build_model(cfg.name, shape, num_classes, width=cfg.width or None)


def compose_state(received: dict[str, torch.Tensor], own: dict[str, torch.Tensor] | None,
                  initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The client's model: received (shared) tensors win, then its own, then the initialization.

    This is where personal layers are protected: the server can only replace what it sends.
    """
    return {k: received.get(k, own[k] if own is not None and k in own else v)
            for k, v in initial.items()}


def _initial(cfg: Config, pid: int) -> dict[str, torch.Tensor]:
    return initial_state(cfg, pid if cfg.train.client_init == "own" else None)


def load_model(cfg: Config, msg: Message, context: Context) -> tuple[nn.Module, bool]:
    """The model this client works with, and whether it keeps personal layers."""
    fed = federation(cfg.data, cfg.seed)
    model = _model(cfg.model, fed.input_shape, fed.num_classes)
    received = msg.content[ARRAYS].to_torch_state_dict() if ARRAYS in msg.content else {}
    personal = SHARED_LAYERS in msg.content[CONFIG]
    own = (context.state[LOCAL_MODEL].to_torch_state_dict()
           if LOCAL_MODEL in context.state.array_records else None)
    pid = int(context.node_config[PARTITION_ID])
    state = compose_state(received, own, _initial(cfg, pid)) if personal else received
    model.load_state_dict(state)
    return model, personal


def _reply(msg: Message, arrays: ArrayRecord | None, metrics: dict[str, float], pid: int) -> Message:
    content = RecordDict({METRICS: MetricRecord(metrics),
                          CLIENT_RECORD: ConfigRecord({PARTITION_ID: pid})})
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content=content, reply_to=msg)


def client_train(msg: Message, context: Context, cfg: Config) -> Message:
    pid = int(context.node_config[PARTITION_ID])
    server_round = int(msg.content[CONFIG]["server-round"])
    model, personal = load_model(cfg, msg, context)
    data = federation(cfg.data, cfg.seed).client_train(pid)
    t = cfg.train
    buffers = (context.state[OPTIMIZER].to_torch_state_dict()
               if t.keep_optimizer_state and OPTIMIZER in context.state.array_records else None)

    def lr(step: int, total: int) -> float:
        progress = ((server_round - 1) + step / max(1, total)) / t.rounds
        return lr_at(progress, t.lr, t.lr_schedule, t.warmup)

    stats = train(model, data.x, data.y, epochs=t.local_epochs, batch_size=t.batch_size, lr=lr,
                  momentum=t.momentum, weight_decay=t.weight_decay,
                  seed=derive_seed(cfg.seed, pid, server_round), device=resolve_device(t.device),
                  momentum_buffers=buffers)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if personal:
        context.state[LOCAL_MODEL] = ArrayRecord(state)
    if t.keep_optimizer_state and stats.momentum:
        context.state[OPTIMIZER] = ArrayRecord(stats.momentum)
    metrics = {NUM_EXAMPLES: len(data), "train_loss": stats.loss,
               "diverged": float(stats.diverged)}
    return _reply(msg, ArrayRecord(state), metrics, pid)


def client_evaluate(msg: Message, context: Context, cfg: Config) -> Message:
    pid = int(context.node_config[PARTITION_ID])
    model, _ = load_model(cfg, msg, context)
    data = federation(cfg.data, cfg.seed).client_test(pid)
    loss, acc = evaluate(model, data.x, data.y, batch_size=cfg.train.eval_batch_size,
                         device=resolve_device(cfg.train.device))
    metrics = {NUM_EXAMPLES: len(data), "local_test_loss": loss, "local_test_accuracy": acc}
    return _reply(msg, None, metrics, pid)


def client_query(msg: Message, context: Context) -> Message:
    """Tells the server this node's partition id (used to order and seed client sampling)."""
    pid = int(context.node_config[PARTITION_ID])
    return Message(content=RecordDict({CLIENT_RECORD: ConfigRecord({PARTITION_ID: pid})}),
                   reply_to=msg)


def config_from_context(context: Context) -> Config:
    """For `flwr run`: the run config names an experiment file (and optional overrides)."""
    path = str(context.run_config.get("config", "experiments/quickstart.toml"))
    overrides = [s for s in str(context.run_config.get("set", "")).split(";") if s]
    return load_config(path, overrides)


def make_client_app(cfg: Config | None = None) -> ClientApp:
    app = ClientApp()

    def resolve(context: Context) -> Config:
        return cfg if cfg is not None else config_from_context(context)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, resolve(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, resolve(context))

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return client_query(msg, context)

    return app


app = make_client_app()
