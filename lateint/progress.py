"""Console progress for long jobs: done/total, rate, ETA (only process 0 logs)."""

from __future__ import annotations

import time

import jax
from absl import logging


class Progress:
    """Logs `done/total`, units/s, items/s and the ETA of a long loop."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        unit: str = "steps",
        items_per_unit: int = 1,
        item_name: str = "examples",
    ):
        self.total, self.start, self.unit = total, start, unit
        self.items_per_unit, self.item_name = items_per_unit, item_name
        self.started = time.perf_counter()

    def rate(self, done: int) -> float:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return (done - self.start) / elapsed

    def line(self, done: int) -> str:
        rate = self.rate(done)
        remaining = (self.total - done) / rate if rate > 0 else float("inf")
        return (
            f"{done}/{self.total} {self.unit} | {rate:.2f} {self.unit}/s | "
            f"{rate * self.items_per_unit:.1f} {self.item_name}/s | "
            f"ETA {format_seconds(remaining)}"
        )

    def log(self, done: int, extra: str = "") -> None:
        if jax.process_index() == 0:
            logging.info("%s%s", self.line(done), f" | {extra}" if extra else "")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
