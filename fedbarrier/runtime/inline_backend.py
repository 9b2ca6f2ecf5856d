"""``simulation.backend = "inline"``: Flower's simulation engine with the clients in this process.

Flower's engine (node registration, the LinkState, message routing, contexts, the error replies
of a failing ClientApp) runs unchanged; only the backend that executes a ClientApp differs:
instead of a pool of Ray actors in worker processes, one in-process worker calls the ClientApp
directly, one message at a time. Nothing is started: no Ray (~4 s), no worker processes that
import torch and Flower (~5 s each on 2 cores), so a small run starts at once, a debugger and
``print`` work inside client code, and tests run the whole federation in milliseconds per round.
Clients train one after another while the server measures in its own thread, as with one Ray
worker. For runs that need parallel clients or several machines, keep ``"ray"``.

Flower 1.41-1.42 have no switch for the backend (``start_vce`` builds a ``RayBackend``), so
:func:`inline_backend` replaces that name for the run only, under the same rules as
:mod:`fedbarrier.runtime.engine_patches`: on other releases, or if the name or its import site has
moved, it refuses with a one-line error before anything is written. A ``backend`` argument to
``run_simulation`` that Flower honours would make it unnecessary.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fedbarrier.errors import UserError
from fedbarrier.runtime.engine_patches import FLWR_VERSIONS, _version_reason


def _flower_backend_site() -> tuple[Any, Any, Any, Any] | str:
    """(raybackend module, Backend ABC, ClientAppException, LoadClientAppError), or why the
    inline backend cannot be installed on this Flower."""
    reason = _version_reason("flwr", FLWR_VERSIONS)
    if reason:
        return reason
    try:
        import inspect

        from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.fleet.vce.backend import Backend, raybackend

        if "from .backend.raybackend import RayBackend" not in inspect.getsource(vce_api.start_vce):
            return "Flower's start_vce no longer builds its backend from raybackend.RayBackend"
    except Exception as exc:  # a moved module or name
        return f"Flower's engine does not have the expected names ({exc!r})"
    return raybackend, Backend, ClientAppException, LoadClientAppError


def unsupported_reason() -> str | None:
    """Why ``simulation.backend = "inline"`` cannot run on the installed Flower; None if it can."""
    site = _flower_backend_site()
    return site if isinstance(site, str) else None


def check_supported() -> tuple[Any, Any, Any, Any]:
    """:func:`_flower_backend_site`, or the one-line UserError that says why the inline backend
    cannot run here (preflight raises it before anything is written)."""
    site = _flower_backend_site()
    if isinstance(site, str):
        raise UserError(f'simulation.backend = "inline" cannot run here: {site}; use "ray"')
    return site


def make_inline_backend_class(backend_abc: Any, client_app_exception: Any,
                              load_error: Any) -> type:
    """A Flower ``Backend`` that runs the ClientApp in this process (see the module docstring)."""

    class InlineBackend(backend_abc):  # type: ignore[misc, valid-type]
        def __init__(self, backend_config: Any) -> None:
            super().__init__(backend_config)
            self.app_fn: Callable[[], Any] | None = None
            cpus = backend_config.get("client_resources", {}).get("num_cpus", 1)
            self.threads = max(1, int(cpus))
            self.tuned: set[int] = set()

        def build(self, app_fn: Callable[[], Any]) -> None:
            self.app_fn = app_fn

        @property
        def num_workers(self) -> int:
            return 1

        def is_worker_idle(self) -> bool:
            return True

        def process_message(self, message: Any, context: Any) -> tuple[Any, Any]:
            if self.app_fn is None:
                raise ValueError("build() the backend before processing messages")
            if threading.get_ident() not in self.tuned:
                # A Ray worker gets OMP_NUM_THREADS = its num_cpus; torch's thread count changes
                # float results in the last bits, so the clients get the same one here. Threads
                # already running keep their own count; threads started later inherit this one
                # (fedbarrier's runs restore it: process_tuning.torch_threads_restored).
                torch.set_num_threads(self.threads)
                self.tuned.add(threading.get_ident())
            try:  # as Flower's Ray actor does: a ClientApp's error becomes an error reply
                return self.app_fn()(message=message, context=context), context
            except load_error:
                raise
            except Exception as exc:
                raise client_app_exception(str(exc)) from exc

        def terminate(self) -> None:
            pass

    return InlineBackend


@contextmanager
def inline_backend() -> Iterator[None]:
    """Inside the block, Flower's simulation engine runs ClientApps in this process."""
    raybackend, backend_abc, client_app_exception, load_error = check_supported()
    saved = raybackend.RayBackend
    raybackend.RayBackend = make_inline_backend_class(backend_abc, client_app_exception,
                                                      load_error)
    try:
        yield
    finally:
        raybackend.RayBackend = saved
