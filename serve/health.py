"""Liveness and readiness of the server.

/livez answers 200 whenever the process and its event loop run. /healthz (readiness) answers 200
only when a search can be answered now, else 503 with every reason in the body:
  - shutting down (SIGTERM received: draining);
  - the batch worker thread has died, or has been on one batch for longer than `stuck_seconds`;
  - the request queue is full;
  - the last batch failed (a damaged store, ...) and none has succeeded since: the reason names
    the array and image range, never a server path;
  - nothing has been searched for `probe_seconds`: one probe query goes through the real
    pipeline (queue, worker, store) and its outcome decides, so an idle server does not report
    "ok" over a store that has gone bad.
"""

from __future__ import annotations

import asyncio
import time

from lateint.serve.batcher import MicroBatcher

PROBE_QUERY = "health check"


def public_reason(error: BaseException) -> str:
    """What a client may learn about a failed search: store errors name the array and image
    range (lateint.index.store.StoreReadError.public_message); anything else only its type."""
    message = getattr(error, "public_message", None)
    if message:
        return f"search failed: {message}"
    return f"search failed: internal error ({type(error).__name__}; details in the server log)"


class Readiness:
    """Decides /healthz; one probe at a time (an asyncio lock), the rest reuse its outcome."""

    def __init__(
        self,
        batcher: MicroBatcher,
        prepare_probe,
        stuck_seconds: float,
        probe_seconds: float = 10.0,
        probe_timeout_seconds: float = 30.0,
    ):
        """prepare_probe() -> an item for the batcher (a prepared query)."""
        self.batcher = batcher
        self.prepare_probe = prepare_probe
        self.stuck_seconds = float(stuck_seconds)
        self.probe_seconds = float(probe_seconds)
        self.probe_timeout_seconds = float(probe_timeout_seconds)
        self.draining = False
        self._lock = asyncio.Lock()

    def _reasons(self) -> list[str]:
        batcher, health = self.batcher, self.batcher.health()
        reasons = []
        if self.draining or batcher.closing:
            reasons.append("shutting down: not accepting new searches")
        if not health.worker_alive and not batcher.closing:
            reasons.append("the batch worker thread has stopped")
        if health.busy_seconds > self.stuck_seconds:
            reasons.append(
                f"the batch worker has been on one batch for "
                f"{health.busy_seconds:.1f} s (limit {self.stuck_seconds:.1f} s)"
            )
        if health.depth >= batcher.max_queue:
            reasons.append(f"the request queue is full ({health.depth} waiting)")
        return reasons

    def _failure(self) -> list[str]:
        health = self.batcher.health()
        if health.last_failure is not None and (
            health.last_success is None or health.last_failure > health.last_success
        ):
            return [public_reason(health.failure)]
        return []

    async def _probe(self) -> None:
        """Runs one probe search unless a batch finished recently; its outcome lands in the
        batcher's health (last_success / last_failure)."""
        async with self._lock:
            health = self.batcher.health()
            latest = max(health.last_success or 0.0, health.last_failure or 0.0)
            if time.perf_counter() - latest < self.probe_seconds:
                return
            future = self.batcher.submit(self.prepare_probe())
            try:
                await asyncio.wait_for(asyncio.wrap_future(future), self.probe_timeout_seconds)
            except Exception:  # recorded by the batcher (or the worker is stuck: see busy)
                pass

    async def check(self) -> list[str]:
        """Every reason the server is not ready now; [] when it is. A failure is re-probed
        once it is `probe_seconds` old, so a repaired store makes the server ready again."""
        reasons = self._reasons()
        if reasons:
            return reasons + self._failure()
        try:
            await self._probe()
        except Exception as error:  # QueueFull, BatcherClosed: the state changed meanwhile
            return [str(error)]
        return self._reasons() + self._failure()
