"""Micro-batching: concurrent requests are answered in batches by one worker thread.

    batcher = MicroBatcher(searcher.run, max_batch=16, max_wait_ms=5, max_queue=256)
    batcher.start()
    future = batcher.submit(prepared_query)   # raises QueueFull when max_queue are waiting
    result = future.result()
    batcher.close()                            # refuses new items, finishes queued ones

The worker takes the oldest waiting item, then waits until `max_batch` items are there or
`max_wait_ms` have passed since that item arrived, and hands the batch to `process` (which
owns the accelerator: only the worker ever calls it). `process(items) -> results` returns one
result per item, in order; if it raises, every item of that batch gets the exception.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Callable, NamedTuple


class QueueFull(RuntimeError):
    """The queue holds max_queue waiting items; the caller should shed load (HTTP 503)."""


class BatcherClosed(RuntimeError):
    """submit() after close(): the server is shutting down."""


class _Waiting(NamedTuple):
    item: object
    future: concurrent.futures.Future
    enqueued: float  # time.perf_counter() at submit


class BatchInfo(NamedTuple):
    """What the worker reports per batch (for metrics): size and each item's queue wait."""

    size: int
    queue_seconds: list[float]
    process_seconds: float


class MicroBatcher:
    """A bounded queue drained in batches by one worker thread; see the module docstring."""

    def __init__(self, process: Callable[[list], list], max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[BatchInfo], None] | None = None):
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
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._condition = threading.Condition()
        self._closing = False
        self._in_flight = 0  # items handed to process() and not yet answered
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

    def submit(self, item) -> concurrent.futures.Future:
        """Queues `item`; returns a Future of its result. Raises QueueFull or BatcherClosed."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._closing:
                raise BatcherClosed("the server is shutting down; not accepting new requests")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"request queue is full ({self.max_queue} waiting); retry later")
            self._queue.append(_Waiting(item, future, time.perf_counter()))
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
            while not self._queue and not self._closing:
                self._condition.wait()
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
            # Requests whose caller gave up (cancelled futures) are dropped here.
            batch = [waiting for waiting in batch if waiting.future.set_running_or_notify_cancel()]
            if not batch:
                self._in_flight = 0
                continue
            began = time.perf_counter()
            waits = [began - waiting.enqueued for waiting in batch]
            try:
                results = self.process([waiting.item for waiting in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch processor returned {len(results)} results for "
                                       f"{len(batch)} items")
            except Exception as error:  # every item of the batch learns why
                for waiting in batch:
                    waiting.future.set_exception(error)
            else:
                for waiting, result in zip(batch, results):
                    waiting.future.set_result(result)
            self._in_flight = 0
            if self.on_batch is not None:
                try:
                    self.on_batch(BatchInfo(len(batch), waits, time.perf_counter() - began))
                except Exception:  # a metrics failure must not stop the worker
                    logging.exception("micro-batcher: on_batch callback failed")
