"""One Searcher over several processes joined by jax.distributed: process 0 leads, the others follow.

    lateint.distributed.initialize(...)          # every process, before anything touches JAX
    searcher = Searcher.load(workdir, index, shards="all")   # the INDEX split over every device
    if jax.process_index() == 0:
        leader = Leader(searcher)                # serve through `searcher`; leader.stop() last
    else:
        follow(searcher)                         # returns when the leader stops

The sharded first stages (serve.sharded_stages) are SPMD programs over a mesh that spans every
process: each process must launch the same computations in the same order, or the collectives
deadlock. So only process 0 decides. Before each batch it runs (the chunks a `Searcher.run` cuts,
the queries already tokenized) and before each reload (the manifest of the generation it loads,
so an INDEX published meanwhile cannot split them), it publishes the step in the coordination
service's key-value store (JAX's own distributed runtime, as orbax and multihost_utils use it),
under consecutive keys; each follower reads the steps in that order and runs the same ones. One
lock orders a leader's batches and reloads, so they reach every process in one sequence.
Followers run a batch's text tower and first stage only (their part of the collective search);
the leader alone reranks and answers. A follower polls for the next step, so an idle server
leaves no collective waiting (gloo would time it out). When the leader's process dies, the
coordination service stops and the followers' next read fails: they exit. When a follower dies,
the leader's next collective fails (gloo: connection closed): the leader answers that request and
every later one 503 (ProcessGroupBroken) and /healthz turns 503, so an orchestrator restarts the
group.

A step's key is deleted once the leader has run it: every follower joined its collectives, so
every follower has read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading

import jax
import numpy as np
from jax._src import distributed as jax_distributed

from lateint.serve.buckets import StageSettings
from lateint.serve.search_records import PreparedQuery

logger = logging.getLogger(__name__)
PREFIX = "lateint/serve/step"
POLL_MS = 1000


def _client():
    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("serve.multihost: jax.distributed is not initialized")
    return client


def encode_chunks(chunks: list[list[PreparedQuery]]) -> list:
    """Chunks of prepared queries as JSON-ready lists (token ids, settings, tokenize time)."""
    return [
        [
            [query.text, query.token_ids.tolist(), query.settings.to_dict(), query.tokenize_ms]
            for query in chunk
        ]
        for chunk in chunks
    ]


def decode_chunks(encoded: list) -> list[list[PreparedQuery]]:
    return [
        [
            PreparedQuery(text, np.asarray(ids, np.int32), StageSettings(**settings), ms)
            for text, ids, settings, ms in chunk
        ]
        for chunk in encoded
    ]


class ProcessGroupBroken(RuntimeError):
    """A process of the group is gone (its collectives failed): every later step fails at once;
    the server answers 503 and its /healthz stays 503 until every process is restarted."""

    public_message = "a process of the serving group is gone; restart every process"


class Leader:
    """Process 0's side: `searcher.coordinator`; every Searcher.run / reload goes through `turn`."""

    def __init__(self, searcher):
        if jax.process_index() != 0:
            raise ValueError(
                f"serve.multihost.Leader: process {jax.process_index()} is not process 0"
            )
        self.searcher = searcher
        self._lock = threading.Lock()
        self._step = 0
        self._stopped = False
        self.broken: str | None = None
        searcher.coordinator = self

    @contextlib.contextmanager
    def turn(self, op: str, chunks=None, manifest: dict | None = None):
        """Publishes step (op, chunks or the manifest to reload), then lets the caller run it;
        one step at a time."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("serve.multihost: the followers were stopped")
            if self.broken:
                raise ProcessGroupBroken(self.broken)
            key = f"{PREFIX}/{self._step}"
            message = {
                "op": op,
                "chunks": encode_chunks(chunks) if chunks else None,
                "manifest": manifest,
            }
            _client().key_value_set_bytes(key, json.dumps(message).encode("utf-8"))
            self._step += 1
            try:
                yield
            except jax.errors.JaxRuntimeError as error:
                self.broken = (
                    f"the process group is broken ({type(error).__name__}: {str(error)[:200]}); "
                    "restart every process"
                )
                logger.error("step %d (%s): %s", self._step - 1, op, self.broken)
                raise ProcessGroupBroken(self.broken) from error
            finally:
                if op != "stop":
                    _client().key_value_delete(key)

    def stop(self) -> None:
        """Tells every follower to return (idempotent; nothing to tell in a broken group)."""
        if not self._stopped and not self.broken:
            with self.turn("stop"):
                self._stopped = True


def _read(key: str) -> bytes:
    client = _client()
    while True:
        try:
            return client.blocking_key_value_get_bytes(key, POLL_MS)
        except Exception as error:  # a poll's deadline: wait again; anything else ends
            if "DEADLINE_EXCEEDED" not in str(error) and "timed out" not in str(error).lower():
                raise


def follow(searcher) -> int:
    """Runs the leader's steps until it stops; returns the number of batches run."""
    if jax.process_index() == 0:
        raise ValueError("serve.multihost.follow: process 0 leads, it does not follow")
    step = batches = 0
    logger.info("process %d follows process 0", jax.process_index())
    while True:
        message = json.loads(_read(f"{PREFIX}/{step}").decode("utf-8"))
        step += 1
        if message["op"] == "stop":
            logger.info(
                "process %d: stopped by the leader after %d batches", jax.process_index(), batches
            )
            return batches
        if message["op"] == "reload":
            try:
                searcher.reload(message["manifest"])  # the generation the leader loads
            except Exception:  # the leader's reload fails alike and keeps serving
                logger.exception("reload failed; still serving generation %d", searcher.generation)
        elif message["op"] == "run":
            view = searcher.view
            for chunk in decode_chunks(message["chunks"]):
                try:
                    searcher.first_stage_of(chunk, view)
                except ValueError:  # a bad batch fails on the leader alike, which answers it
                    logger.exception("process %d: batch %d failed", jax.process_index(), batches)
                batches += 1
        else:
            raise ValueError(f"serve.multihost: unknown step {message['op']!r} at {step - 1}")
