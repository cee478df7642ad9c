"""Micro-batching: concurrent requests are answered in batches by one worker thread.

    batcher = MicroBatcher(searcher.run, max_batch=16, max_wait_ms=5, max_queue=256)
    batcher.start()
    future = batcher.submit(prepared_query)   # raises QueueFull when max_queue are waiting
    future = batcher.submit(prepared_query, deadline=time.perf_counter() + 2.0)
    result = future.result()
    batcher.close()                            # refuses new items, finishes queued ones

The worker takes the oldest waiting item, then waits until `max_batch` items are there or
`max_wait_ms` have passed since that item arrived, and hands the batch to `process` (which
owns the accelerator: only the worker ever calls it). `process(items) -> results` returns one
result per item, in order; if it raises, every item of that batch gets the exception.

Admission by time, not only by queue length: an item submitted with a deadline is refused at once
(Overloaded, a QueueFull) when the queue ahead of it, at the measured time per item (an
exponential moving average of batch time / batch size), would not let it finish by then; an item
whose deadline passes while it waits is answered DeadlineExceeded instead of being processed.
`health()` says what a
readiness check needs: worker alive, how long the current batch has run, the last failure.

`hold` (tests only; None by default, and then never consulted): a callable polled before each
batch is taken; while it returns True the worker leaves the queue alone, so a test can fill the
queue to exactly max_queue and release it when it chooses, instead of racing a timer. close()
overrides a hold (the queue is drained).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

# Weight of the newest batch in the moving average of the time per batch.
BATCH_TIME_SMOOTHING = 0.3
# How often a held worker (see `hold`) asks again whether it may take the next batch.
HOLD_POLL_SECONDS = 0.01


class QueueFull(RuntimeError):
    """The queue holds max_queue waiting items; the caller should shed load (HTTP 503)."""


class Overloaded(QueueFull):
    """The queue ahead would not let the item finish by its deadline (HTTP 503)."""


class DeadlineExceeded(TimeoutError):
    """The item's deadline passed while it waited; it was not processed (HTTP 503)."""


class BatcherClosed(RuntimeError):
    """submit() after close(): the server is shutting down."""


class Health(NamedTuple):
    """A snapshot for readiness checks (times are time.perf_counter() seconds)."""

    worker_alive: bool
    busy_seconds: float  # how long the batch being processed has run (0: idle)
    item_seconds: float  # moving average of a batch's time per item (0: none yet)
    depth: int
    last_success: float | None  # when the last batch succeeded
    last_failure: float | None  # when the last batch failed, and why
    failure: BaseException | None


class _Waiting(NamedTuple):
    item: object
    future: concurrent.futures.Future
    enqueued: float  # time.perf_counter() at submit
    deadline: float  # time.perf_counter() by which it must be answered (inf: none)


class BatchInfo(NamedTuple):
    """What the worker reports per batch (for metrics): size and each item's queue wait."""

    size: int
    queue_seconds: list[float]
    process_seconds: float


class MicroBatcher:
    """A bounded queue drained in batches by one worker thread; see the module docstring."""

    def __init__(
        self,
        process: Callable[[list], list],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[BatchInfo], None] | None = None,
        hold: Callable[[], bool] | None = None,
    ):
        """hold: tests only (see the module docstring); None never holds."""
        if max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: expected >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue: expected >= 1, got {max_queue}")
        self.process = process
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self.hold = hold
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._condition = threading.Condition()
        self._closing = False
        self._in_flight = 0  # items handed to process() and not yet answered
        self._busy_since: float | None = None
        self._item_seconds = 0.0
        self._last_success: float | None = None
        self._last_failure: float | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch being processed)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._thread.start()

    def health(self) -> Health:
        now = time.perf_counter()
        busy_since = self._busy_since
        return Health(
            self._thread.is_alive(),
            0.0 if busy_since is None else now - busy_since,
            self._item_seconds,
            len(self._queue),
            self._last_success,
            self._last_failure,
            self._failure,
        )

    def expected_finish(self, now: float) -> float:
        """When an item submitted now would be answered: the rest of the running batch, then
        every waiting item and this one, at the measured time per item (batches are measured
        as time / size, so the estimate follows the throughput whatever the batch sizes). An
        idle batcher answers `now`: the item starts at once, and the batch it runs in refreshes
        the estimate (one slow batch must not refuse forever)."""
        per_item = self._item_seconds
        busy_since = self._busy_since
        if busy_since is None and not self._queue:
            return now
        running_left = (
            0.0 if busy_since is None else max(0.0, self._in_flight * per_item - (now - busy_since))
        )
        return now + running_left + (len(self._queue) + 1) * per_item

    def refusal(self, now: float, deadline: float | None = None):
        """(exception class, message) if an item submitted now with `deadline` would be
        refused, else None. Lock-free reads: callers that shed before submitting (the server's
        front door) may be off by an item, submit() itself decides under the lock."""
        if self._closing:
            return BatcherClosed, "the server is shutting down; not accepting new requests"
        if len(self._queue) >= self.max_queue:
            return QueueFull, f"request queue is full ({self.max_queue} waiting); retry later"
        if deadline is not None and self.expected_finish(now) > deadline:
            return Overloaded, (
                f"overloaded: {len(self._queue)} requests wait ahead at "
                f"~{self._item_seconds * 1e3:.0f} ms each, more than the "
                f"{(deadline - now) * 1e3:.0f} ms left to answer; retry later"
            )
        return None

    def submit(self, item, deadline: float | None = None) -> concurrent.futures.Future:
        """Queues `item`; returns a Future of its result. deadline: time.perf_counter() by
        which it must be answered. Raises QueueFull, Overloaded or BatcherClosed."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            now = time.perf_counter()
            refusal = self.refusal(now, deadline)
            if refusal is not None:
                kind, message = refusal
                raise kind(message)
            self._queue.append(
                _Waiting(item, future, now, float("inf") if deadline is None else deadline)
            )
            self._condition.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Refuses new items, lets the worker answer every queued one, then joins it."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> list[_Waiting] | None:
        """Blocks until a batch is due; None once closing and drained."""
        with self._condition:
            while not self._closing:
                if not self._queue:
                    self._condition.wait()
                elif self.hold is not None and self.hold():
                    self._condition.wait(HOLD_POLL_SECONDS)
                else:
                    break
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self.max_wait
            while len(self._queue) < self.max_batch and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(self.max_batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._in_flight = count
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            # Requests whose caller gave up (cancelled futures) are dropped here, and those
            # whose deadline passed in the queue are answered without being processed.
            began = time.perf_counter()
            batch = [waiting for waiting in batch if waiting.future.set_running_or_notify_cancel()]
            for waiting in [waiting for waiting in batch if waiting.deadline < began]:
                waiting.future.set_exception(
                    DeadlineExceeded(
                        f"waited {(began - waiting.enqueued) * 1e3:.0f} ms in the queue, past its "
                        "deadline; retry later"
                    )
                )
            batch = [waiting for waiting in batch if waiting.deadline >= began]
            if not batch:
                self._in_flight = 0
                self._busy_since = None
                continue
            self._busy_since = began
            waits = [began - waiting.enqueued for waiting in batch]
            try:
                results = self.process([waiting.item for waiting in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch processor returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as error:  # every item of the batch learns why
                self._last_failure, self._failure = time.perf_counter(), error
                for waiting in batch:
                    waiting.future.set_exception(error)
            else:
                self._last_success = time.perf_counter()
                for waiting, result in zip(batch, results):
                    waiting.future.set_result(result)
            elapsed = time.perf_counter() - began
            per_item = elapsed / len(batch)
            self._item_seconds = (
                per_item
                if not self._item_seconds
                else (
                    BATCH_TIME_SMOOTHING * per_item
                    + (1 - BATCH_TIME_SMOOTHING) * self._item_seconds
                )
            )
            self._busy_since = None
            self._in_flight = 0
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchInfo(len(batch), waits, time.perf_counter() - began))
                except Exception:  # a metrics failure must not stop the worker
                    logging.exception("micro-batcher: on_batch callback failed")
