"""The wire protocol: every key that crosses between server and clients, in one place.

Client, server, round pipeline and strategies import their keys from here and from nowhere else.
Messages follow Flower's Message API (``flwr.app``): a ``RecordDict`` of named records.

Server -> client (train and evaluate messages)
    ``ARRAYS``         ArrayRecord: the tensors the client adopts (under partial sharing only the
                       shared layers; empty when the server sends nothing this round)
    ``CONFIG``         ConfigRecord: ``SERVER_ROUND`` (set by Flower), and optionally
                       ``SHARED_LAYERS`` (the layer names sent: the client keeps its own weights
                       for the rest), ``LOCAL_STEPS`` (SGD steps this round), ``DIVERGENCE``
                       (report ||model - reference||^2), ``ADOPT_BY_BARRIER`` (train: adopt the
                       averaged layers by local barrier, barrier-aware), ``LOCAL_BARRIERS``
                       (evaluate: measure local barriers against the round's average; with
                       ``LOCAL_ONLY`` the client was sent the message for that alone)
    ``AVERAGE``        ArrayRecord (evaluate, with ``LOCAL_BARRIERS``): the layers of the round's
                       average θ̄ that ``ARRAYS`` does not carry (under partial sharing, the
                       personal layers' average; counted as instrumentation bytes)
    ``ALIGNED_AVERAGE`` ArrayRecord (evaluate, with ``LOCAL_BARRIERS`` and ``barriers.align``): the
                       average of the round's models aligned to the reference (whole model), and
    ``PERMUTATION``    ArrayRecord: this client's permutations (name -> int64 index tensor) that
                       align its model to the reference; both counted as instrumentation bytes

Client -> server (replies)
    ``ARRAYS``         ArrayRecord: the client's whole trained model (train replies only)
    ``METRICS``        MetricRecord: ``NUM_EXAMPLES`` (the aggregation weight), ``TRAIN_LOSS``,
                       ``DIVERGED`` (1.0 for a non-finite training loss), ``DIVERGENCE`` when
                       asked; evaluate replies: ``NUM_EXAMPLES`` and the local test metrics
    ``CLIENT_RECORD``  ConfigRecord: ``PARTITION_ID``, the client's stable id (node ids are random
                       and change on a resume); ``ADOPTED_LAYERS`` (train, barrier-aware: the
                       averaged layers it adopted)
    ``LOCAL_RECORD``   ConfigRecord (evaluate, with ``LOCAL_BARRIERS``): per local split, its local
                       barriers as a JSON text, or why they were skipped (with ``ALIGNED_AVERAGE``
                       the report's ``aligned`` part holds the same after alignment); no data
                       leaves a client
    Errors             a failing client replies with Flower's Error message; one whose text
                       starts with ``STORAGE_FAULT`` could not write its own state (a full disk):
                       the server stops the run instead of leaving the client out of the round

Strategy extensions
    A strategy is any Flower Message-API ``Strategy``. It may also implement the small protocols
    below; the round pipeline and the server app find them with ``isinstance`` (they are
    ``runtime_checkable``), never by guessing attribute names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

# -- record names -----------------------------------------------------------------------------
ARRAYS = "arrays"  # Flower's FedAvg default `arrayrecord_key`
CONFIG = "config"  # Flower's FedAvg default `configrecord_key`
METRICS = "metrics"
CLIENT_RECORD = "client"
AVERAGE = "barrier-average"
ALIGNED_AVERAGE = "barrier-aligned-average"
PERMUTATION = "barrier-permutation"
LOCAL_RECORD = "local-barriers"

# -- config keys (server -> client) -------------------------------------------------------------
SERVER_ROUND = "server-round"  # written by Flower's strategies
SHARED_LAYERS = "shared-layers"
LOCAL_STEPS = "local-steps"
DIVERGENCE = "divergence"  # also the metric key of the reply
ADOPT_BY_BARRIER = "adopt-by-barrier"
LOCAL_BARRIERS = "local-barriers"
LOCAL_ONLY = "local-only"

# -- metric keys (client -> server) -------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights by this key
TRAIN_LOSS = "train_loss"
DIVERGED = "diverged"
LOCAL_TEST_LOSS = "local_test_loss"
LOCAL_TEST_ACCURACY = "local_test_accuracy"

# -- client errors ------------------------------------------------------------------------------
STORAGE_FAULT = "storage fault"  # "storage fault: cannot write PATH: CAUSE"

# -- client record keys ---------------------------------------------------------------------------
PARTITION_ID = "partition-id"  # also the node_config key the simulation engine sets
ADOPTED_LAYERS = "adopted-layers"


@runtime_checkable
class ResumableStrategy(Protocol):
    """A strategy with state that a resumed run must get back (saved with each round's state)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class BarrierListener(Protocol):
    """A strategy that reads each server-side barrier record before it aggregates (the barrier
    hook then measures before aggregation, blocking)."""

    def observe(self, record: dict[str, Any]) -> None: ...


@runtime_checkable
class AverageSchedule(Protocol):
    """A strategy whose clients do not hold the p-weighted average after every round (FedDC's
    keep and daisy steps, dynamic averaging without a synchronization, the Radon machine): local
    barriers against the average are measured only in rounds where it says so."""

    def sends_average(self, server_round: int) -> bool: ...


@runtime_checkable
class ModelCheck(Protocol):
    """A strategy that checks the model's tensor shapes before a run starts (raises UserError)."""

    def check_model(self, shapes: Mapping[str, Sequence[int]]) -> None: ...
