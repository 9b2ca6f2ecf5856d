"""Process-wide tuning: freezing the heap once, and undoing it after an in-process run."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from fedbarrier.runtime.process_tuning import frozen_heap


def test_frozen_heap_gives_objects_back_to_the_collector() -> None:
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_frozen_heap_keeps_what_the_caller_had_frozen() -> None:
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() >= before > 0
    finally:
        gc.unfreeze()


def test_freeze_heap_once_freezes_only_the_first_time() -> None:
    script = textwrap.dedent("""
        import gc
        from fedbarrier.runtime.process_tuning import freeze_heap_once
        freeze_heap_once()
        first = gc.get_freeze_count()
        later = [[i] for i in range(1000)]  # tracked objects created after the first call
        freeze_heap_once()
        print(first, gc.get_freeze_count())
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout.split()
    first, second = map(int, out)
    assert first > 0 and second == first


def test_a_frozen_heap_makes_the_final_collection_skip_startup_objects() -> None:
    """What freezing buys at exit: the interpreter's last full collection walks only what was
    created after the freeze (the timing itself is a benchmark, not a test)."""
    script = textwrap.dedent("""
        import gc, sys
        from fedbarrier.runtime.process_tuning import freeze_heap
        junk = [[i] for i in range(100_000)]
        if sys.argv[1] == "on":
            freeze_heap()
        print(len(gc.get_objects()))  # what a full collection walks (frozen objects excluded)
    """)
    walked = {mode: int(subprocess.run([sys.executable, "-c", script, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("on", "off")}
    assert walked["on"] * 10 < walked["off"], walked
