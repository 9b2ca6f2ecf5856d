"""Process-wide settings that make training speed independent of what a process did before.

Both are about the processes fedbarrier owns (simulation workers, the CLI), not about a
library user's interpreter: :func:`frozen_heap` undoes itself when the run ends.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def keep_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MiB for reuse (once per process; Linux only).

    Why: glibc serves a block above its mmap threshold (128 KiB at start) with a fresh mapping
    and unmaps it when freed, so each batch's activations (MiBs) are page-faulted in anew:
    ~13,000 faults per local epoch of the small CNN, ~10 % of its training time (measured).
    glibc raises the threshold by itself once such a block is freed, so speed depended on what
    the process happened to do first (generating a dataset did; mapping a shared one did not).
    Fixed thresholds make it deterministic. Called in client processes, which fedbarrier owns.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:  # glibc's; musl's is a no-op
        m_trim_threshold, m_mmap_threshold = -1, -3
        mallopt(m_mmap_threshold, 32 << 20)  # glibc's upper limit for this threshold
        mallopt(m_trim_threshold, 64 << 20)  # as glibc sets it when it raises the threshold


def freeze_heap() -> None:
    """Exclude every object alive now from all later garbage collections (``gc.freeze``).

    Why: a process that has imported torch, Flower and Ray tracks ~460k objects, and each full
    collection walks all of them: 0.25-0.35 s, about twice per 20 local epochs in a worker (5 %
    of its training time), and ~1.3 s of the interpreter's final collection when the process
    exits (Ray's workers exit one after another when the run ends). Those objects are modules,
    classes and functions that live until exit anyway. Objects created later are collected as
    usual; garbage that exists at the call is never freed, so call it once the process is set up.
    """
    gc.freeze()


@lru_cache(maxsize=1)
def freeze_heap_once() -> None:
    """:func:`freeze_heap` the first time it is called in this process (client workers call it
    after their first training message, when torch has imported everything it imports)."""
    freeze_heap()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """:func:`freeze_heap` for the duration of a run, then give the objects back to the collector
    (a notebook that runs an experiment keeps its usual garbage collection afterwards). A caller
    that had frozen objects itself keeps them frozen: ``gc.unfreeze`` cannot tell its objects
    from ours, so then nothing is unfrozen."""
    frozen_before = gc.get_freeze_count() > 0
    freeze_heap()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def default_torch_threads() -> int:
    """The torch thread count a thread started now begins with. ``torch.set_num_threads`` in any
    thread sets it for every thread started after, whatever the caller's own count."""
    import threading

    import torch

    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    return seen[0]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """This thread runs torch with ``count`` threads inside the block, and with its own count
    again after (which is also the count threads started later begin with)."""
    import torch

    own = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(own)


@contextmanager
def torch_threads_restored() -> Iterator[None]:
    """Leave torch's thread counts as they were: this thread's and the one later threads start
    with. A run sets them in its threads (the server's is single-threaded, inline clients get
    their ``num_cpus``); left behind, they would change the next run in this process (a notebook,
    a sweep, a test), whose float results move in the last bits with the count."""
    import threading

    import torch

    own, default = torch.get_num_threads(), default_torch_threads()
    try:
        yield
    finally:
        torch.set_num_threads(own)
        if default != own:  # from another thread: sets the default, not this thread's count
            setter = threading.Thread(target=torch.set_num_threads, args=(default,))
            setter.start()
            setter.join()
