"""The staged online pipeline over one model and one INDEX.

    searcher = Searcher.load(workdir, index_dir)
    results = searcher.search(["two horses left of a dog"], k=10, n=256, K=32,
                              first_stage="concepts")

Per query batch: tokenize -> text tower -> first stage (n candidates) -> exact MaxSim on the
stored concepts of those n -> top K -> TensorStore gather of the K stored activations -> joint
layers over the K (padded to a K bucket with masked dummy rows, which are dropped) -> top k by
joint score (lateint.serve.pipeline runs one batch). Every array has a bucketed shape, run by an
executable compiled at start-up (lateint.serve.compiled): with background_compile, the Searcher is usable once the shapes that hold every
request are compiled, and the others join while it answers (a request runs on the cheapest
compiled shape that holds it, never on a compile).

A Searcher is not thread-safe: one thread owns it (lateint.serve.batcher's worker in the server). The
exception is `reload`, which another thread may call while it answers: it loads the INDEX's new
generation (lateint.index.add / delete / compact) beside the old one and swaps one reference; each batch
takes that reference once, so no answer mixes two generations.

Under jax.distributed with the INDEX split over every process's devices, process 0's Searcher
leads (`coordinator`, lateint.serve.multihost): each run and reload is published as a step that
the other processes' Searchers follow, so their collectives run in one order.
"""

from __future__ import annotations

import contextlib
import threading
import time

import jax
import numpy as np
from absl import logging

from lateint import pretrained
from lateint.checkpoint import load_model
from lateint.index.store import ActivationStore
from lateint.serve import compile_plan, sharded_stages
from lateint.serve import stages as stages_lib
from lateint.serve.buckets import Buckets, StageSettings, bucket_for
from lateint.serve.compiled import CompiledModel
from lateint.serve.pipeline import BatchPipeline
from lateint.serve.search_records import STAGE_TIMINGS, Hit, IndexView, PreparedQuery, SearchResult
from lateint.tokenizer import WordPieceTokenizer

__all__ = ["STAGE_TIMINGS", "Hit", "PreparedQuery", "SearchResult", "Searcher"]


def _milliseconds(began: float) -> float:
    return (time.perf_counter() - began) * 1e3


class Searcher:
    """Answers text queries with the staged pipeline; see the module docstring."""

    def __init__(
        self,
        model,
        meta: dict,
        store: ActivationStore,
        tokenizer: WordPieceTokenizer,
        buckets: Buckets = Buckets(),
        first_stages=None,
        default_first_stage: str | None = None,
        background_compile: bool = False,
        shards=1,
    ):
        """model: SplitEncoder; meta: load_model's (holds 'fingerprint' and 'step').

        first_stages: names to load (default: every usable one on the INDEX); default_first_stage:
        used when a request names none (default: the first loaded of 'refined', 'concepts',
        'exact').
        background_compile: return once the shapes that hold every request are compiled and
        compile the others on a background thread (`close` stops it); else compile every shape
        first, so every request runs on its own bucket from the start.
        shards: devices the INDEX's image axis is split over (an int, or 'all' for every device
        of every process; serve.sharded_stages): the brute-force first stages run per shard in
        shard_map and merge their top lists; the answers equal one device's.
        """
        config = model.config
        store.check_model(model.config, meta["fingerprint"])
        if buckets.max_length > config.max_position_embeddings:
            raise ValueError(
                f"Buckets.query_lengths: the largest ({buckets.max_length}) exceeds "
                f"the model's max_position_embeddings "
                f"({config.max_position_embeddings})"
            )
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary has {tokenizer.vocab_size} tokens, the "
                f"model's embedding table {config.vocab_size}"
            )
        if tuple(tokenizer.buckets) != buckets.query_lengths:
            raise ValueError(
                f"tokenizer buckets {tokenizer.buckets} differ from "
                f"Buckets.query_lengths {buckets.query_lengths}"
            )
        self.model, self.meta = model, meta
        self.tokenizer, self.buckets = tokenizer, buckets
        self.index_dir = store.index_dir
        self._reload_lock = threading.Lock()
        tokenizer.encode(["warm up"])  # the first call costs milliseconds more than the next
        self.mesh = sharded_stages.mesh_for(shards)
        names = first_stages or [
            name
            for name in stages_lib.available_names(store.index_dir, store.manifest)
            if self.mesh.size == 1 or name in stages_lib.SHARDABLE_NAMES
        ]
        began = time.perf_counter()
        stages = stages_lib.load_stages(store, names, self.mesh)
        self.first_stage_names = tuple(stages)
        self.view = IndexView(
            store, stages, store.image_ids, int(store.manifest.get("generation", 0))
        )
        if default_first_stage is None:
            # 'refined' (docs/benchmarks.md: the exact top 32 within 64 candidates at 100k, where
            # the concept lists hold 0.4 of it within 256), else the first of these loaded.
            preferred = [name for name in ("refined", "concepts", "exact") if name in self.stages]
            default_first_stage = (preferred or list(self.first_stage_names))[0]
        if default_first_stage not in self.stages:
            raise ValueError(
                f"default_first_stage: expected one of {list(self.stages)}, got "
                f"{default_first_stage!r}"
            )
        self.default_first_stage = default_first_stage
        logging.info(
            "loaded first stages %s in %.1f s%s",
            list(self.stages),
            time.perf_counter() - began,
            f", the image axis split over {self.mesh.size} devices ({self.device_nbytes()} bytes"
            " per device)"
            if self.mesh.size > 1
            else "",
        )
        for name, stage in self.stages.items():
            if hasattr(stage, "held_rows") and jax.process_count() > 1:
                logging.info(
                    "%s: process %d of %d holds rows %s of %d",
                    name,
                    jax.process_index(),
                    jax.process_count(),
                    stage.held_rows(),
                    stage.num_images,
                )
        # Across processes every stage shape is warmed now, by all in one order (their
        # collectives must match); the text tower and joint layers stay per process, and a
        # follower (serve.multihost: text tower and first stage only) compiles the tower alone.
        self.coordinator = None  # serve.multihost.Leader on process 0 of several
        spans = sharded_stages.spans_processes(self.mesh)
        functions = ("text",) if spans and jax.process_index() != 0 else compile_plan.FUNCTIONS
        self.compiled = CompiledModel(model, buckets, store.regions, store.hidden, functions)
        self.pipeline = BatchPipeline(self.compiled, buckets, tokenizer.pad_id)
        logging.info(
            "compiling B %s x T %s x n %s / K %s (%d executables)%s",
            list(buckets.query_batches),
            list(buckets.query_lengths),
            list(buckets.candidates),
            list(buckets.rerank),
            self.compiled.total,
            ", the rest in the background" if background_compile else "",
        )
        if background_compile:
            seconds = self.compiled.compile_first()
            stage_shapes = stages_lib.first_shapes(buckets)
        else:
            seconds = self.compiled.compile_all()
        if not background_compile or spans:
            stage_shapes = stages_lib.every_shape(buckets)
        began = time.perf_counter()
        self._warm_stages(stage_shapes)
        self.compile_seconds = seconds + time.perf_counter() - began
        logging.info(
            "first stages warmed for %d shapes in %.1f s; ready after %.1f s of compiling",
            len(stage_shapes),
            time.perf_counter() - began,
            self.compile_seconds,
        )
        if background_compile:
            self.compiled.compile_rest_in_background(
                then=None if spans else lambda: self._warm_stages(stages_lib.later_shapes(buckets))
            )

    def device_nbytes(self) -> int:
        """Bytes of first-stage vectors on the most loaded device of the mesh (sharded stages
        only; they share no arrays, so the sum over the loaded stages)."""
        held: dict[str, int] = {}
        for stage in self.stages.values():
            for device, nbytes in getattr(stage, "device_nbytes", dict)().items():
                held[device] = held.get(device, 0) + nbytes
        return max(held.values(), default=0)

    def _warm_stages(self, shapes) -> None:
        """Warms the served generation's first stages for `shapes` (a reload warms its own)."""
        view = self.view
        stages_lib.warm_up(view.stages, shapes, view.store.concept_dim)

    def close(self) -> None:
        """Stops the background compiles (after the one in progress)."""
        self.compiled.close()

    # The generation being served (each batch reads `self.view` once).
    store = property(lambda self: self.view.store)
    stages = property(lambda self: self.view.stages)
    image_ids = property(lambda self: self.view.image_ids)
    num_images = property(lambda self: self.view.num_images)
    generation = property(lambda self: self.view.generation)

    def reload(self, manifest: dict | None = None) -> dict:
        """Loads the INDEX's published generation if it is not the one served, warms its first
        stages, then swaps it in; the old one answers until then. Thread-safe against `run`.

        manifest: the generation to load, as another process read it (serve.multihost: every
        process loads the leader's), instead of INDEX/manifest.json now.
        Returns {'generation', 'previous_generation', 'images', 'seconds'}. Raises (keeping the
        served generation) when the new one cannot be loaded, e.g. a first stage it dropped.
        """
        with self._reload_lock:
            began = time.perf_counter()
            store = ActivationStore.open(self.index_dir, manifest=manifest)
            with self._turn("reload", manifest=store.manifest):
                served = self.view
                generation = int(store.manifest.get("generation", 0))
                if generation != served.generation:
                    store.check_model(self.model.config, self.meta["fingerprint"])
                    if store.regions != served.store.regions:  # the compiled shapes depend on R
                        raise ValueError(
                            f"{self.index_dir}: generation {generation} has "
                            f"{store.regions} regions per image, the served one "
                            f"{served.store.regions}; restart the server"
                        )
                    stages = stages_lib.load_stages(store, self.first_stage_names, self.mesh)
                    stages_lib.warm_up(
                        stages, stages_lib.every_shape(self.buckets), store.concept_dim
                    )
                    self.view = IndexView(store, stages, store.image_ids, generation)
                    logging.info(
                        "reloaded %s: generation %d -> %d, %d images, in %.1f s",
                        self.index_dir,
                        served.generation,
                        generation,
                        store.num_images,
                        time.perf_counter() - began,
                    )
                return {
                    "generation": self.view.generation,
                    "previous_generation": served.generation,
                    "images": self.view.num_images,
                    "seconds": time.perf_counter() - began,
                }

    @classmethod
    def load(
        cls,
        workdir: str,
        index_dir: str,
        buckets: Buckets = Buckets(),
        first_stages=None,
        default_first_stage: str | None = None,
        tokenizer_dir: str | None = None,
        background_compile: bool = False,
        shards=1,
    ) -> Searcher:
        """Loads the model from WORKDIR (lateint.checkpoint) and the finished INDEX; compiles.

        tokenizer_dir: a HuggingFace BERT directory (default: MiniLM's, whose vocabulary every
        model of this project uses). background_compile, shards: see `Searcher`.
        """
        began = time.perf_counter()
        model, meta = load_model(workdir)
        store = ActivationStore.open(index_dir)
        tokenizer = WordPieceTokenizer.from_directory(
            tokenizer_dir or pretrained.default_minilm_directory(), buckets=buckets.query_lengths
        )
        logging.info(
            "loaded %s (step %s, fingerprint %s) and INDEX %s (%d images) in %.1f s",
            workdir,
            meta["step"],
            meta["fingerprint"],
            index_dir,
            store.num_images,
            time.perf_counter() - began,
        )
        return cls(
            model,
            meta,
            store,
            tokenizer,
            buckets,
            first_stages,
            default_first_stage,
            background_compile,
            shards,
        )

    # ---- requests -----------------------------------------------------------------------------

    def settings(
        self, k: int, n: int | None = None, K: int | None = None, first_stage: str | None = None
    ) -> StageSettings:
        """Checks (k, n, K, first_stage) against the bounds (ValueError naming the field)."""
        return self.buckets.resolve(
            k, n, K, first_stage, self.first_stage_names, self.default_first_stage
        )

    def prepare(
        self,
        query: str,
        k: int,
        n: int | None = None,
        K: int | None = None,
        first_stage: str | None = None,
    ) -> PreparedQuery:
        """Checks and tokenizes one query. Tokens past the largest length bucket are cut."""
        began = time.perf_counter()
        if not isinstance(query, str):
            raise ValueError(f"query: expected a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query: expected text, got an empty or whitespace-only string")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"query: expected Unicode text, got a lone surrogate "
                f"{query[error.start]!r} at position {error.start}"
            ) from None
        settings = self.settings(k, n, K, first_stage)
        try:
            token_ids, token_mask = self.tokenizer.encode([query])
        except ValueError as error:
            raise ValueError(f"query: {error}") from None
        token_ids = token_ids[0, : int(token_mask[0].sum())].astype(np.int32)
        return PreparedQuery(query, token_ids, settings, _milliseconds(began))

    def search(self, queries: list[str], k, n=None, K=None, first_stage=None) -> list[SearchResult]:
        """Answers several queries as one batch (split at the largest batch bucket).

        k, n, K, first_stage: one value for every query, or a list with one per query.
        """
        if isinstance(queries, str) or not isinstance(queries, (list, tuple)) or not queries:
            raise ValueError(f"queries: expected a non-empty list of str, got {queries!r:.80}")

        def per_query(name, value):
            if isinstance(value, (list, tuple)):
                if len(value) != len(queries):
                    raise ValueError(
                        f"{name}: expected one value per query ({len(queries)}), got {len(value)}"
                    )
                return list(value)
            return [value] * len(queries)

        options = zip(
            queries,
            *(
                per_query(name, value)
                for name, value in (("k", k), ("n", n), ("K", K), ("first_stage", first_stage))
            ),
        )
        return self.run([self.prepare(*values) for values in options])

    def run(self, prepared: list[PreparedQuery]) -> list[SearchResult]:
        """Runs prepared queries in chunks of one length bucket each, sized to the batch buckets.

        The joint layers' cost is linear in the padded batch and its padded text length, so
        queries are first grouped by length bucket (a 12-token query never pays for a 30-token
        one), then each group is cut into chunks: a chunk is padded up to a batch bucket only
        when at most a quarter of it is padding, else it takes the largest bucket that fits.
        With batch buckets (1, 4, 16): 13 queries run as 16 (3 padding rows), 9 as 4 + 4 + 1,
        3 as 4 (1 padding row). Results come back in the order of `prepared`.
        """
        groups: dict[int, list[int]] = {}
        for position, query in enumerate(prepared):
            length = bucket_for(len(query.token_ids), self.buckets.query_lengths, "query length")
            groups.setdefault(length, []).append(position)
        chunks = []  # positions in `prepared`
        for positions in groups.values():
            start = 0
            while start < len(positions):
                size = self._chunk_size(len(positions) - start)
                chunks.append(positions[start : start + size])
                start += size
        queries = [[prepared[position] for position in chunk] for chunk in chunks]
        results: list[SearchResult | None] = [None] * len(prepared)
        with self._turn("run", queries):
            view = self.view  # one generation for every query of this call
            for chunk, chunk_queries in zip(chunks, queries):
                for position, result in zip(chunk, self._run_batch(chunk_queries, view)):
                    results[position] = result
        return results

    def _turn(self, op: str, chunks=None, manifest: dict | None = None):
        """The coordinator's turn for a step (several processes), else nothing to wait for."""
        if self.coordinator is None:
            return contextlib.nullcontext()
        return self.coordinator.turn(op, chunks, manifest)

    def _chunk_size(self, left: int) -> int:
        """How many of `left` queries the next chunk takes (see `run`), among the batch buckets
        that compiled executables hold (all of them once compiling is done)."""
        batches = self.compiled.usable_batches
        covering = [bucket for bucket in batches if bucket >= left]
        fitting = [bucket for bucket in batches if bucket <= left]
        if covering and (4 * (covering[0] - left) <= covering[0] or not fitting):
            return left
        return fitting[-1]

    def first_stage_of(self, queries: list[PreparedQuery], view: IndexView) -> list[np.ndarray]:
        """A follower's part of a batch (serve.multihost): text tower, then the first stage."""
        return self.pipeline.first_stage_of(queries, view)

    def _run_batch(self, queries: list[PreparedQuery], view: IndexView) -> list[SearchResult]:
        return self.pipeline.run_batch(queries, view)
