"""Peak resident memory of a block of code, sampled from /proc/self/statm by a thread.

    with PeakMemory() as peak:
        build(...)
    peak.peak_bytes, peak.delta_bytes   # the highest RSS seen, and that minus the RSS at entry

ru_maxrss only ever grows over the process's life, so it cannot tell one build's peak from an
earlier one's; sampling every `interval` seconds can miss a spike shorter than that.
"""

from __future__ import annotations

import os
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """The process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE


class PeakMemory:
    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, resident_bytes())

    def __enter__(self) -> PeakMemory:
        self.start_bytes = self.peak_bytes = resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, resident_bytes())

    @property
    def delta_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes
