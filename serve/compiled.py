"""Ahead-of-time compiled functions of the online path, one executable per shape bucket.

`jax.jit(...).lower(...).compile()` over the `nnx.split` state (NOTES.md: `nnx.jit` costs
17-56 ms a call here against 4-7 ms). A call runs on the cheapest compiled executable whose every
dimension holds its shape: the inputs are padded (batch rows repeat row 0; tokens, candidates
and regions are masked out) and the outputs cut back. A shape no compiled executable holds
raises ValueError instead of compiling, so a request never waits for XLA.

Start-up (lateint.serve.compile_plan): `compile_all` compiles every bucket before it returns;
`compile_first` compiles the shapes that hold every request and those of a default request,
returns, and compiles the others on a background thread. Each executable is compiled, run once
(a first run costs tens of milliseconds more than the next), and only then published.
`enable_persistent_cache` keeps compiled executables on disk for the next start.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import math
import os
import threading
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lateint import scoring
from lateint.model import SplitEncoder, TowerOutput
from lateint.serve import compile_plan
from lateint.serve.buckets import Buckets

logger = logging.getLogger(__name__)
CACHE_MAX_BYTES = 4 << 30  # the persistent cache evicts least recently used entries past this


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/lateint/xla (default ~/.cache/lateint/xla)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lateint", "xla")


def enable_persistent_cache(directory: str | None = None) -> str:
    """Makes JAX keep every compiled executable (CPU ones too) under `directory` (default
    `default_cache_dir()`), so a later start with the same model config, INDEX shapes, buckets
    and jax version loads them instead of compiling. Call it before anything compiles; returns
    the directory. A size limit makes JAX lock the directory, so processes can share it."""
    directory = os.path.abspath(os.path.expanduser(directory or default_cache_dir()))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return directory


def _text_tower(graph, state, token_ids, token_mask):
    """token_ids / token_mask [B, T] -> TowerOutput ([B, T, H], [B, T], [B, T, C], [B, C])."""
    return nnx.merge(graph, state).encode_text(token_ids, token_mask)


def _candidate_maxsim(query_concepts, query_mask, image_concepts, image_mask):
    """MaxSim of each query against its own candidates.

    query_concepts [B, T, C], query_mask [B, T], image_concepts [B, n, R, C], image_mask
    [B, n, R] -> [B, n] float32 (scoring.EMPTY_SCORE where a candidate has no real region).
    """

    def one_query(concepts, mask, candidates, candidate_mask):
        return scoring.maxsim(concepts[None], mask[None], candidates, candidate_mask)[0]

    return jax.vmap(one_query)(query_concepts, query_mask, image_concepts, image_mask)


def _joint(graph, state, text_activations, text_mask, stored, image_mask):
    """Joint layers over every (query, candidate) pair of the batch.

    text_activations [B, T, H], text_mask [B, T], stored [B, K, R, H'] (as stored), image_mask
    [B, K, R] -> [B, K] float32 joint scores.
    """
    batch, candidates = stored.shape[:2]
    scores = nnx.merge(graph, state).joint_score(
        text_activations,
        text_mask,
        stored.reshape((batch * candidates,) + stored.shape[2:]),
        image_mask.reshape(batch * candidates, image_mask.shape[2]),
        text_index=jnp.repeat(jnp.arange(batch), candidates),
    )
    return scores.reshape(batch, candidates)


def _fit(array: np.ndarray, leading: tuple[int, ...]) -> np.ndarray:
    """`array` grown to `leading` in its first dimensions: extra batch rows repeat row 0, other
    extra entries are zero (False), i.e. masked tokens, candidates or regions."""
    array = np.asarray(array)
    if array.shape[: len(leading)] == tuple(leading):
        return array
    extra = leading[0] - array.shape[0]
    if extra:
        array = np.concatenate([array, np.repeat(array[:1], extra, axis=0)])
    pads = [(0, want - have) for have, want in zip(array.shape, leading)]
    return np.pad(array, pads + [(0, 0)] * (array.ndim - len(leading)))


_RUNNING: weakref.WeakSet[CompiledModel] = weakref.WeakSet()


@atexit.register
def _stop_background_compiles() -> None:
    for compiled in list(_RUNNING):
        compiled.close()


class CompiledModel:
    """The text tower, candidate MaxSim and joint scoring, compiled per bucket.

    regions R and stored_dim H' come from the INDEX; concept_dim C and hidden H from the model.
    Calls take and return NumPy arrays and may run from one thread while another compiles.
    """

    def __init__(
        self,
        model: SplitEncoder,
        buckets: Buckets,
        regions: int,
        stored_dim: int,
        functions=compile_plan.FUNCTIONS,
    ):
        """functions: which of 'text', 'maxsim', 'joint' this process runs and compiles (a
        follower of serve.multihost runs the text tower only); calling another raises."""
        unknown = set(functions) - set(compile_plan.FUNCTIONS)
        if unknown or not functions:
            raise ValueError(
                f"CompiledModel: functions expected a non-empty subset of "
                f"{compile_plan.FUNCTIONS}, got {tuple(functions)}"
            )
        self.functions = tuple(name for name in compile_plan.FUNCTIONS if name in functions)
        self.config = model.config
        self.buckets = buckets
        self.regions = regions
        self.stored_dim = stored_dim
        self.graph, self.state = nnx.split(model)
        graph = self.graph
        self._functions = {
            "text": jax.jit(lambda state, ids, mask: _text_tower(graph, state, ids, mask)),
            "maxsim": jax.jit(_candidate_maxsim),
            "joint": jax.jit(lambda state, *arrays: _joint(graph, state, *arrays)),
        }
        self._tables: dict[str, dict[tuple, object]] = {name: {} for name in self._functions}
        self._usable_batches: tuple[int, ...] = ()
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._background: threading.Thread | None = None
        self.total = len(self._planned(compile_plan.every_shape(buckets)))
        self.compile_seconds = 0.0  # until the caller could serve (compile_all / _first)
        self.background_seconds = None  # the background compiles, once they finished
        self.background_error: BaseException | None = None

    # ---- compiling --------------------------------------------------------------------------

    def _arguments(self, function: str, key: tuple) -> tuple:
        def spec(shape, dtype=jnp.float32):
            return jax.ShapeDtypeStruct(tuple(shape), dtype)

        batch, length = key[:2]
        if function == "text":
            return spec((batch, length), jnp.int32), spec((batch, length), jnp.bool_)
        count = key[2]
        width = self.config.concept_dim if function == "maxsim" else self.config.hidden_size
        stored = self.config.concept_dim if function == "maxsim" else self.stored_dim
        return (
            spec((batch, length, width)),
            spec((batch, length), jnp.bool_),
            spec((batch, count, self.regions, stored)),
            spec((batch, count, self.regions), jnp.bool_),
        )

    def _lower(self, function: str, key: tuple):
        arguments = self._arguments(function, key)
        stateful = () if function == "maxsim" else (self.state,)
        return self._functions[function].lower(*stateful, *arguments)

    def _warm_and_publish(self, function: str, key: tuple, executable, warm: bool) -> None:
        if warm:
            zeros = [np.zeros(spec.shape, spec.dtype) for spec in self._arguments(function, key)]
            stateful = () if function == "maxsim" else (self.state,)
            jax.block_until_ready(executable(*stateful, *zeros))
        with self._publish_lock:
            self._tables[function][key] = executable
            self._usable_batches = tuple(
                batch
                for batch in self.buckets.query_batches
                if all(
                    self._holding(*compile_plan.largest(self.buckets, name, batch))
                    for name in self.functions
                )
            )

    def _planned(self, shapes) -> list:
        """The shapes of the functions this process runs."""
        return [shape for shape in shapes if shape[0] in self.functions]

    def _compile(self, shapes, warm: bool, threads: int) -> None:
        """Lowers here, compiles on `threads` threads, runs each once (warm), publishes."""
        shapes = [
            shape for shape in self._planned(shapes) if shape[1] not in self._tables[shape[0]]
        ]
        lowered = [self._lower(function, key) for function, key in shapes]
        with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
            executables = list(pool.map(lambda entry: entry.compile(), lowered))
        for (function, key), executable in zip(shapes, executables):
            self._warm_and_publish(function, key, executable, warm)

    def compile_all(self, warm: bool = True) -> float:
        """Compiles every (B, T), (B, T, n) and (B, T, K) combination; returns the seconds."""
        began = time.perf_counter()
        self._compile(compile_plan.every_shape(self.buckets), warm, os.cpu_count() or 1)
        self.compile_seconds = time.perf_counter() - began
        logger.info("compiled %d executables in %.1f s", self.executables, self.compile_seconds)
        return self.compile_seconds

    def compile_first(self, warm: bool = True) -> float:
        """Compiles the shapes that hold every request (lateint.serve.compile_plan.first_shapes);
        returns the seconds. `compile_rest_in_background` then adds the others."""
        began = time.perf_counter()
        self._compile(compile_plan.first_shapes(self.buckets), warm, os.cpu_count() or 1)
        self.compile_seconds = time.perf_counter() - began
        logger.info("compiled %d executables in %.1f s", self.executables, self.compile_seconds)
        return self.compile_seconds

    def compile_rest_in_background(self, warm: bool = True, threads: int = 1, then=None) -> None:
        """Starts a daemon thread that compiles every shape not compiled yet, `threads` at a
        time (one leaves the other cores to requests), then calls then() if given. `close`
        stops it between two compiles."""
        later = [
            shape
            for shape in self._planned(compile_plan.later_shapes(self.buckets))
            if shape[1] not in self._tables[shape[0]]
        ]
        logger.info("compiling %d more executables in the background", len(later))
        self._background = threading.Thread(
            target=self._compile_in_background,
            args=(later, warm, threads, then),
            name="background-compile",
            daemon=True,
        )
        _RUNNING.add(self)
        self._background.start()

    def _compile_in_background(self, shapes, warm: bool, threads: int, then) -> None:
        began = time.perf_counter()
        try:
            for start in range(0, len(shapes), threads):
                if self._stop.is_set():
                    return
                self._compile(shapes[start : start + threads], warm, threads)
            if then is not None and not self._stop.is_set():
                then()
        except Exception as error:  # the published shapes still hold every request
            self.background_error = error
            logger.error(
                "background compile stopped after %d of %d executables: %s: %s",
                self.executables,
                self.total,
                type(error).__name__,
                error,
            )
            return
        self.background_seconds = time.perf_counter() - began
        logger.info(
            "background compile: all %d executables ready after %.1f s more",
            self.total,
            self.background_seconds,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the background compiles; True when none is running."""
        if self._background is not None:
            self._background.join(timeout)
        return self._background is None or not self._background.is_alive()

    def close(self) -> None:
        """Stops the background compiles after the one in progress (also run at exit)."""
        self._stop.set()
        self.wait()

    @property
    def executables(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def progress(self) -> dict:
        """{'compiled', 'total', 'background': running?, 'usable_batches'} for /healthz."""
        running = self._background is not None and self._background.is_alive()
        return {
            "compiled": self.executables,
            "total": self.total,
            "background": running,
            "usable_batches": list(self._usable_batches),
        }

    @property
    def usable_batches(self) -> tuple[int, ...]:
        """Batch buckets B for which every request shape is held by a compiled executable."""
        return self._usable_batches

    # ---- calls ------------------------------------------------------------------------------

    def _holding(self, function: str, wanted: tuple):
        """The cheapest compiled (key, executable) whose every dimension is >= `wanted`."""
        table = self._tables[function]
        if wanted in table:
            return wanted, table[wanted]
        holding = [key for key in list(table) if all(map(int.__ge__, key, wanted))]
        if not holding:
            return None
        key = min(holding, key=math.prod)
        return key, table[key]

    def _executable(self, function: str, wanted: tuple, what: str):
        if function not in self.functions:
            raise ValueError(f"{what}: not compiled in this process (functions {self.functions})")
        found = self._holding(function, tuple(int(size) for size in wanted))
        if found is None:
            raise ValueError(
                f"{what}: shape {tuple(wanted)} is larger than every compiled "
                f"bucket (compiled: {sorted(self._tables[function])})"
            )
        return found

    def text_tower(self, token_ids: np.ndarray, token_mask: np.ndarray) -> TowerOutput:
        """token_ids [B, T] int32, token_mask [B, T] bool -> TowerOutput of NumPy arrays."""
        batch, length = token_ids.shape
        key, executable = self._executable("text", (batch, length), "text tower")
        output = executable(self.state, _fit(token_ids, key), _fit(token_mask, key))
        activations, mask, concepts, global_vector = (np.asarray(array) for array in output)
        return TowerOutput(
            activations[:batch, :length],
            mask[:batch, :length],
            concepts[:batch, :length],
            global_vector[:batch],
        )

    def maxsim(
        self,
        query_concepts: np.ndarray,
        query_mask: np.ndarray,
        image_concepts: np.ndarray,
        image_mask: np.ndarray,
    ) -> np.ndarray:
        """[B, T, C], [B, T], [B, n, R, C], [B, n, R] -> [B, n] float32."""
        (batch, length), count = query_mask.shape, image_mask.shape[1]
        key, executable = self._executable("maxsim", (batch, length, count), "candidate MaxSim")
        images = (key[0], key[2])
        scores = executable(
            _fit(query_concepts, key[:2]),
            _fit(query_mask, key[:2]),
            _fit(image_concepts, images),
            _fit(image_mask, images),
        )
        return np.asarray(scores)[:batch, :count]

    def joint(
        self,
        text_activations: np.ndarray,
        text_mask: np.ndarray,
        stored: np.ndarray,
        image_mask: np.ndarray,
    ) -> np.ndarray:
        """[B, T, H], [B, T], [B, K, R, H'], [B, K, R] -> [B, K] float32 joint scores."""
        (batch, length), count = text_mask.shape, image_mask.shape[1]
        key, executable = self._executable("joint", (batch, length, count), "joint layers")
        images = (key[0], key[2])
        scores = executable(
            self.state,
            _fit(text_activations, key[:2]),
            _fit(text_mask, key[:2]),
            _fit(stored, images),
            _fit(image_mask, images),
        )
        return np.asarray(scores)[:batch, :count]
