"""The largest value a reading takes while a block runs, sampled from a background thread."""

from __future__ import annotations

import threading


class PeakSampler:
    """Context manager: ``start`` is :meth:`read` on entry, ``peak`` the largest reading seen
    (every :attr:`interval` seconds) until exit. Subclasses define :meth:`read`."""

    interval = 0.05

    def read(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> PeakSampler:
        self.start = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
