"""Ahead-of-time compiled functions of the online path, one executable per shape bucket.

`jax.jit(...).lower(...).compile()` over the `nnx.split` state (NOTES.md: `nnx.jit` costs
17-56 ms a call here against 4-7 ms), for every combination of buckets, at start-up: a request
never waits for XLA, and a shape outside the buckets raises instead of compiling.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lateint import scoring
from lateint.model import SplitEncoder, TowerOutput
from serve.buckets import Buckets


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
    length, hidden = text_activations.shape[1:]
    text = jnp.broadcast_to(text_activations[:, None], (batch, candidates, length, hidden))
    mask = jnp.broadcast_to(text_mask[:, None], (batch, candidates, length))
    scores = nnx.merge(graph, state).joint_score(
        text.reshape(batch * candidates, length, hidden), mask.reshape(batch * candidates, length),
        stored.reshape((batch * candidates,) + stored.shape[2:]),
        image_mask.reshape(batch * candidates, image_mask.shape[2]))
    return scores.reshape(batch, candidates)


class CompiledModel:
    """The text tower, candidate MaxSim and joint scoring, compiled for every bucket.

    regions R and stored_dim H' come from the INDEX; concept_dim C and hidden H from the model.
    Calls take and return NumPy arrays; a shape outside the buckets raises ValueError naming the
    shape and the compiled ones.
    """

    def __init__(self, model: SplitEncoder, buckets: Buckets, regions: int, stored_dim: int):
        self.config = model.config
        self.buckets = buckets
        self.regions = regions
        self.stored_dim = stored_dim
        self.graph, self.state = nnx.split(model)
        self._text: dict[tuple[int, int], object] = {}
        self._maxsim: dict[tuple[int, int, int], object] = {}
        self._joint: dict[tuple[int, int, int], object] = {}
        self.compile_seconds = 0.0
        self.executables = 0

    def compile_all(self, log=None, warm: bool = True) -> float:
        """Compiles every (B, T), (B, T, n) and (B, T, K) combination; returns the seconds.

        Lowering runs in this thread; XLA compiles run on a thread pool (one per CPU). warm:
        then runs each executable once on zeros, since an executable's first run costs tens of
        milliseconds more than the next ones.
        """
        began = time.perf_counter()
        config, buckets = self.config, self.buckets
        hidden, concept_dim = config.hidden_size, config.concept_dim
        graph = self.graph

        def spec(shape, dtype=jnp.float32):
            return jax.ShapeDtypeStruct(tuple(shape), dtype)

        text_function = jax.jit(lambda state, ids, mask: _text_tower(graph, state, ids, mask))
        joint_function = jax.jit(lambda state, *arrays: _joint(graph, state, *arrays))
        maxsim_function = jax.jit(_candidate_maxsim)
        lowered = []  # (table, key, stateful, argument specs, Lowered)
        for batch, length in itertools.product(buckets.query_batches, buckets.query_lengths):
            arguments = (spec((batch, length), jnp.int32), spec((batch, length), jnp.bool_))
            lowered.append((self._text, (batch, length), True, arguments,
                            text_function.lower(self.state, *arguments)))
            for count in buckets.candidates:
                arguments = (spec((batch, length, concept_dim)), spec((batch, length), jnp.bool_),
                             spec((batch, count, self.regions, concept_dim)),
                             spec((batch, count, self.regions), jnp.bool_))
                lowered.append((self._maxsim, (batch, length, count), False, arguments,
                                maxsim_function.lower(*arguments)))
            for count in buckets.rerank:
                arguments = (spec((batch, length, hidden)), spec((batch, length), jnp.bool_),
                             spec((batch, count, self.regions, self.stored_dim)),
                             spec((batch, count, self.regions), jnp.bool_))
                lowered.append((self._joint, (batch, length, count), True, arguments,
                                joint_function.lower(self.state, *arguments)))
        if log:
            log(f"lowered {len(lowered)} functions in {time.perf_counter() - began:.1f} s; "
                f"compiling")
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            executables = list(pool.map(lambda entry: entry[4].compile(), lowered))
        for (table, key, _, _, _), executable in zip(lowered, executables):
            table[key] = executable
        self.executables = len(executables)
        self.compile_seconds = time.perf_counter() - began
        if warm:
            for (_, _, stateful, arguments, _), executable in zip(lowered, executables):
                zeros = [np.zeros(argument.shape, argument.dtype) for argument in arguments]
                jax.block_until_ready(executable(self.state, *zeros) if stateful
                                      else executable(*zeros))
            if log:
                log(f"ran each executable once in "
                    f"{time.perf_counter() - began - self.compile_seconds:.1f} s")
        return self.compile_seconds

    @staticmethod
    def _lookup(table: dict, key: tuple, what: str):
        if key not in table:
            raise ValueError(f"{what}: shape {key} is not a compiled bucket "
                             f"(compiled: {sorted(table)})")
        return table[key]

    def text_tower(self, token_ids: np.ndarray, token_mask: np.ndarray) -> TowerOutput:
        """token_ids [B, T] int32, token_mask [B, T] bool -> TowerOutput of NumPy arrays."""
        executable = self._lookup(self._text, token_ids.shape, "text tower")
        output = executable(self.state, token_ids, token_mask)
        return TowerOutput(*(np.asarray(array) for array in output))

    def maxsim(self, query_concepts: np.ndarray, query_mask: np.ndarray,
               image_concepts: np.ndarray, image_mask: np.ndarray) -> np.ndarray:
        """[B, T, C], [B, T], [B, n, R, C], [B, n, R] -> [B, n] float32."""
        key = query_mask.shape + image_mask.shape[1:2]
        executable = self._lookup(self._maxsim, key, "candidate MaxSim")
        return np.asarray(executable(query_concepts, query_mask, image_concepts, image_mask))

    def joint(self, text_activations: np.ndarray, text_mask: np.ndarray, stored: np.ndarray,
              image_mask: np.ndarray) -> np.ndarray:
        """[B, T, H], [B, T], [B, K, R, H'], [B, K, R] -> [B, K] float32 joint scores."""
        key = text_mask.shape + image_mask.shape[1:2]
        executable = self._lookup(self._joint, key, "joint layers")
        return np.asarray(executable(self.state, text_activations, text_mask, stored,
                                     image_mask))
