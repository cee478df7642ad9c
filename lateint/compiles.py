"""Counting XLA compiles: a check that a hot path never compiles, and a benchmark's statement
of how many compiles each side of a ratio paid for.

    with CompileCounter() as compiles:
        searcher.search(["two horses"], k=5)
    assert compiles.count == 0
"""

from __future__ import annotations

import jax

# The event jax records once per XLA backend compile (jax._src.dispatch).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts backend compiles in this process while the `with` block runs (all threads)."""

    def __init__(self):
        self.count = 0

    def _listener(self, event: str, *args, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exception) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)
