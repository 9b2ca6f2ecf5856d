"""simulation.backend = "inline": Flower's engine with the ClientApp called in this process."""

from __future__ import annotations

import threading

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.server.superlink.fleet.vce.backend import raybackend

from fedbarrier.config import load_config
from fedbarrier.errors import UserError
from fedbarrier.fl.simulation import preflight
from fedbarrier.runtime import engine_patches
from fedbarrier.runtime.inline_backend import inline_backend, unsupported_reason
from fedbarrier.runtime.process_tuning import (
    default_torch_threads,
    torch_threads,
    torch_threads_restored,
)
from tests.conftest import TINY


def test_the_installed_flower_takes_the_inline_backend() -> None:
    """Fails when Flower moves the name the backend replaces: "inline" would refuse to run."""
    assert unsupported_reason() is None


def test_inside_the_block_flowers_engine_builds_the_inline_backend_and_after_it_rays() -> None:
    ray_backend = raybackend.RayBackend
    with inline_backend():
        assert raybackend.RayBackend is not ray_backend
        assert raybackend.RayBackend.__name__ == "InlineBackend"
    assert raybackend.RayBackend is ray_backend


def _message() -> Message:
    return Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)


def test_the_backend_calls_the_client_app_here_with_the_ray_workers_thread_count(task_identity):
    seen = []

    def app(message, context):
        seen.append((message, context, torch.get_num_threads()))
        return "reply"

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with inline_backend():
        backend = raybackend.RayBackend({"client_resources": {"num_cpus": 1}})
    backend.build(lambda: app)
    message = _message()
    ours = torch.get_num_threads()
    result: list = []
    with torch_threads_restored():
        worker = threading.Thread(target=lambda: result.append(
            backend.process_message(message, context)))
        worker.start()
        worker.join()
        assert default_torch_threads() == 1  # threads started now get the clients' count ...
    assert default_torch_threads() == ours  # ... until the run ends
    assert result == [("reply", context)] and seen == [(message, context, 1)]
    assert backend.num_workers == 1 and backend.is_worker_idle()
    assert torch.get_num_threads() == ours  # the server's thread keeps its own count


def test_a_client_app_error_becomes_flowers_client_app_exception(task_identity):
    def app(message, context):
        raise ValueError("client broke")

    with inline_backend():
        backend = raybackend.RayBackend({"client_resources": {"num_cpus": 1}})
    backend.build(lambda: app)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    raised: list = []

    def process() -> None:  # on a thread of its own, as in the engine: the backend sets its
        try:                # thread's torch thread count, which the main thread passes on
            backend.process_message(_message(), context)
        except ClientAppException as exc:
            raised.append(exc)

    with torch_threads_restored():
        worker = threading.Thread(target=process)
        worker.start()
        worker.join()
    assert len(raised) == 1 and "client broke" in str(raised[0])


def test_another_flower_release_refuses_inline_before_anything_is_written(monkeypatch, tmp_path):
    installed = engine_patches.metadata.version
    monkeypatch.setattr(engine_patches.metadata, "version",
                        lambda name: "1.43.0" if name == "flwr" else installed(name))
    assert "flwr 1.43 is not one" in unsupported_reason()
    with pytest.raises(UserError, match=r'simulation.backend = "inline" cannot run here: flwr 1.43'):
        preflight(load_config(None, TINY))
    with pytest.raises(UserError, match="inline"), inline_backend():
        pass


def test_torch_threads_sets_this_threads_count_for_the_block_only() -> None:
    """The server's global evaluation runs on one thread while the clients hold the cores."""
    own = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == own
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("the count comes back after an error too")
    assert torch.get_num_threads() == own
