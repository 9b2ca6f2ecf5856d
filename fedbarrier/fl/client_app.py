"""The Flower ClientApp: local SGD on the client's own partition, evaluation on its local test part.

``make_client_app(cfg)`` closes over a validated config (what ``fedbarrier run`` uses with the
simulation engine); without one it reads the config path from the run config, as the app that
``flwr run .`` starts does (``fedbarrier.fl.apps``; ``[tool.flwr.app.config]`` in pyproject.toml).
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

from fedbarrier.config import Config, ModelConfig, load_config
from fedbarrier.data.federation import federation, use_shared_data
from fedbarrier.fl.client_measure import adopted_keys, adoption, local_report, local_splits
from fedbarrier.fl.client_store import ClientStore, StorageFault
from fedbarrier.fl.protocol import (
    ADOPT_BY_BARRIER,
    ADOPTED_LAYERS,
    ALIGNED_AVERAGE,
    ARRAYS,
    AVERAGE,
    CLIENT_RECORD,
    CONFIG,
    DIVERGED,
    DIVERGENCE,
    LOCAL_BARRIERS,
    LOCAL_ONLY,
    LOCAL_RECORD,
    LOCAL_STEPS,
    LOCAL_TEST_ACCURACY,
    LOCAL_TEST_LOSS,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    PERMUTATION,
    SERVER_ROUND,
    SHARED_LAYERS,
    TRAIN_LOSS,
)
from fedbarrier.learn.local import evaluate, local_update, resolve_device
from fedbarrier.measure.alignment import apply_permutation, spec_from_state
from fedbarrier.runtime.build import initial_state, model_of
from fedbarrier.runtime.process_tuning import freeze_heap_once, keep_freed_memory
from fedbarrier.runtime.rundir import CLIENTS_DIR

# What a client keeps in its own store (fedbarrier.fl.client_store), between rounds:
MODEL_STATE = "model"  # the client's own model (when layers stay personal)
OPTIMIZER_STATE = "optimizer"  # SGD momentum buffers (train.keep_optimizer_state)
REFERENCE_STATE = "reference"  # the model last received whole (dynamic averaging)


@lru_cache(maxsize=2)
def _model(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """One module per process; every message loads its weights into it."""
    return model_of(cfg, shape, num_classes)


def client_device_spec(spec: str, in_ray_worker: bool) -> str:
    """The device a client uses for ``train.device = spec``. Ray shows a simulated client only the
    GPU it assigned, numbered cuda:0, so there an index (cuda:N) names the server's GPU."""
    return "cuda" if in_ray_worker and spec.startswith("cuda:") else spec


def client_device(spec: str) -> torch.device:
    ray = sys.modules.get("ray")  # imported in simulation only; never import it here
    return resolve_device(client_device_spec(spec, ray is not None and ray.is_initialized()))


def compose_state(received: dict[str, torch.Tensor], own: dict[str, torch.Tensor] | None,
                  initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The client's model: received (shared) tensors win, then its own, then the initialization.

    This is where personal layers are protected: the server can only replace what it sends.
    """
    return {k: received.get(k, own[k] if own is not None and k in own else v)
            for k, v in initial.items()}


def _initial(cfg: Config, pid: int) -> dict[str, torch.Tensor]:
    return initial_state(cfg, pid if cfg.train.client_init == "own" else None)


def received_state(msg: Message) -> dict[str, torch.Tensor]:
    """The tensors the server sent with ``msg`` (empty if it sent none)."""
    return msg.content[ARRAYS].to_torch_state_dict() if ARRAYS in msg.content else {}


def load_model(cfg: Config, msg: Message, received: dict[str, torch.Tensor], pid: int,
               saved: dict[str, dict[str, torch.Tensor]] | None
               ) -> tuple[nn.Module, bool, list[str] | None]:
    """The model this client works with, whether it keeps personal layers, and (barrier-aware)
    the averaged layers it adopted."""
    fed = federation(cfg.data, cfg.seed)
    model = _model(cfg.model, fed.input_shape, fed.num_classes)
    config = msg.content[CONFIG]
    own = (saved.get(MODEL_STATE) if saved else None) or None
    adopted = None
    if config.get(ADOPT_BY_BARRIER):  # keep own weights where the average would hurt
        adopted = adoption(cfg, pid, own, received, client_device(cfg.train.device)).layers
        keys = adopted_keys(cfg, adopted)
        received = {k: v for k, v in received.items() if k in keys}
    personal = adopted is not None or SHARED_LAYERS in config
    state = compose_state(received, own, _initial(cfg, pid)) if personal else received
    model.load_state_dict(state)
    return model, personal, adopted


def _reply(msg: Message, arrays: ArrayRecord | None, metrics: dict[str, float], pid: int,
           adopted: list[str] | None = None, local: dict[str, str] | None = None) -> Message:
    client: dict[str, Any] = {PARTITION_ID: pid}
    if adopted is not None:
        client[ADOPTED_LAYERS] = adopted
    content = RecordDict({METRICS: MetricRecord(metrics), CLIENT_RECORD: ConfigRecord(client)})
    if arrays is not None:
        content[ARRAYS] = arrays
    if local is not None:
        content[LOCAL_RECORD] = ConfigRecord(local)
    return Message(content=content, reply_to=msg)


def client_train(msg: Message, context: Context, cfg: Config, store_root: Path) -> Message:
    pid = int(context.node_config[PARTITION_ID])
    server_round = int(msg.content[CONFIG][SERVER_ROUND])
    store = ClientStore(store_root, pid)
    saved = store.load_before(server_round)
    received = received_state(msg)  # decoded once: the model and the reference both use it
    if cfg.train.client_init == "own" and server_round == 1:
        # Different initializations: round 1 trains from the client's own seed's model, not from
        # the initial model the server sent (as clients that trained apart before joining).
        initial = _initial(cfg, pid)
        received = {k: initial[k] for k in received}
    model, personal, adopted = load_model(cfg, msg, received, pid, saved)
    data = federation(cfg.data, cfg.seed).client_train(pid)
    t = cfg.train
    buffers = (saved or {}).get(OPTIMIZER_STATE) if t.keep_optimizer_state else None
    stats = local_update(model, data.x, data.y, t, run_seed=cfg.seed, client=pid,
                         server_round=server_round, device=client_device(t.device),
                         momentum_buffers=buffers,
                         steps=int(msg.content[CONFIG].get(LOCAL_STEPS, t.local_steps)))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    reference = reference_model(received, saved) if msg.content[CONFIG].get(DIVERGENCE) else {}
    # Its own model is kept when layers stay personal, and for local barriers (measured against
    # the round's average in the evaluation phase).
    keep_model = personal or bool(local_splits(cfg))
    if keep_model or t.keep_optimizer_state:
        store.save(server_round, {MODEL_STATE: state if keep_model else {},
                                  OPTIMIZER_STATE: (stats.momentum or {}) if t.keep_optimizer_state
                                  else {}, REFERENCE_STATE: reference})
    metrics = {NUM_EXAMPLES: len(data), TRAIN_LOSS: stats.loss, DIVERGED: float(stats.diverged)}
    if reference:
        metrics[DIVERGENCE] = squared_distance(state, reference)
    return _reply(msg, ArrayRecord(state), metrics, pid, adopted=adopted)


def reference_model(received: dict[str, torch.Tensor],
                    saved: dict[str, dict[str, torch.Tensor]] | None) -> dict[str, torch.Tensor]:
    """Dynamic averaging's reference: the model the server sent now (it sends only whole models
    then), else the one this client kept from the last synchronization."""
    return received or (saved or {}).get(REFERENCE_STATE) or {}


def squared_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b||^2 over the floating-point tensors of ``b`` (Kamp et al. 2018's local condition)."""
    return float(sum(float(((a[k].double() - v.double()) ** 2).sum())
                     for k, v in b.items() if v.is_floating_point()))


def client_evaluate(msg: Message, context: Context, cfg: Config, store_root: Path) -> Message:
    """Accuracy on the local test part (unless asked for local barriers alone), and the local
    barriers of this round's model against the round's average when asked."""
    pid = int(context.node_config[PARTITION_ID])
    config = msg.content[CONFIG]
    server_round = int(config[SERVER_ROUND])
    store = ClientStore(store_root, pid)
    saved = store.load_before(server_round + 1)  # this round's training
    received = received_state(msg)
    metrics: dict[str, float] = {}
    if not config.get(LOCAL_ONLY):
        model, _, _ = load_model(cfg, msg, received, pid, saved)
        data = federation(cfg.data, cfg.seed).client_test(pid)
        loss, acc = evaluate(model, data.x, data.y, batch_size=cfg.train.eval_batch_size,
                             device=client_device(cfg.train.device))
        metrics = {NUM_EXAMPLES: len(data), LOCAL_TEST_LOSS: loss, LOCAL_TEST_ACCURACY: acc}
    local = None
    if config.get(LOCAL_BARRIERS):
        own = store.load(server_round)  # the model this client returned in this round
        sent = {**received, **(msg.content[AVERAGE].to_torch_state_dict()
                               if AVERAGE in msg.content else {})}
        # in the model's own key order: the layers sent and the rest of the average arrive apart
        average = {k: sent[k] for k in _initial(cfg, pid) if k in sent}
        device = client_device(cfg.train.device)
        own_state = (own or {}).get(MODEL_STATE) or None
        aligned = aligned_pair(msg, own_state)
        reports = {}
        for split in local_splits(cfg):
            report = local_report(cfg, pid, own_state, average, split, device)
            if aligned is not None and "skipped" not in report:
                report["aligned"] = local_report(cfg, pid, aligned[0], aligned[1], split, device)
            reports[split] = json.dumps(report)
        local = reports
    return _reply(msg, None, metrics, pid, local=local)


def aligned_pair(msg: Message, own: dict[str, torch.Tensor] | None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """With ``barriers.align``: this client's model permuted to the round's reference (the same
    function) and the aligned average it is compared with; None when not asked."""
    if own is None or ALIGNED_AVERAGE not in msg.content or PERMUTATION not in msg.content:
        return None
    perms = msg.content[PERMUTATION].to_torch_state_dict()
    average = msg.content[ALIGNED_AVERAGE].to_torch_state_dict()
    aligned = apply_permutation(spec_from_state(own), perms, own)
    return aligned, {k: average[k] for k in own}


def client_query(msg: Message, context: Context) -> Message:
    """Tells the server this node's partition id (used to order and seed client sampling)."""
    pid = int(context.node_config[PARTITION_ID])
    return Message(content=RecordDict({CLIENT_RECORD: ConfigRecord({PARTITION_ID: pid})}),
                   reply_to=msg)


def config_from_context(context: Context) -> Config:
    """For `flwr run`: the run config names an experiment file (and optional overrides)."""
    path = str(context.run_config.get("config", "experiments/quickstart.toml"))
    # Flower starts apps in the SuperLink's/SuperNode's folder; fall back to the bundled copy.
    bundled = Path(__file__).resolve().parents[2] / path  # the repository (or FAB) root
    if not Path(path).is_absolute() and not Path(path).exists() and bundled.exists():
        path = str(bundled)
    overrides = [s for s in str(context.run_config.get("set", "")).split(";") if s]
    return load_config(path, overrides)


def out_from_context(context: Context) -> Path:
    return Path(str(context.run_config.get("out", "runs/flwr-run")))




def make_client_app(cfg: Config | None = None, store_root: Path | None = None,
                    shared_data: Path | None = None) -> ClientApp:
    """A ClientApp for ``cfg`` whose clients keep their state under ``store_root``.

    Without arguments (``flwr run``) both come from the run config. ``shared_data``: a folder
    where the driver wrote the dataset (:func:`fedbarrier.data.federation.share_data`), so that
    clients in other processes map it instead of loading it.
    """
    app = ClientApp()

    def resolve(context: Context) -> tuple[Config, Path]:
        keep_freed_memory()
        if shared_data is not None:
            use_shared_data(shared_data)
        if cfg is not None and store_root is not None:
            return cfg, store_root
        return config_from_context(context), out_from_context(context) / CLIENTS_DIR

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        try:
            reply = client_train(msg, context, *resolve(context))
        except StorageFault as fault:  # a reply, not an exception: Flower would log a traceback
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(fault)),
                           reply_to=msg)
        freeze_heap_once()  # everything is imported now (torch.optim imports torch._dynamo)
        return reply

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, *resolve(context))

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return client_query(msg, context)

    return app

