"""Exact first stages (the recall reference): brute-force MaxSim and global dot products.

The stage keeps its own float32 copy of the vectors (lateint.index.first_stage.exact_copy:
build, add, compact and its readers, re-exported here). Two searchers read it: 'exact'
(MaxSim, lateint.scoring.maxsim, blocked over images on the accelerator, running top-n) and
'exact_global' (global dot products).

A third searcher, 'refined', reads the same copy: the global-vector top P (one matrix product)
reranked by MaxSim over int8 region concepts quantized at load (per region, symmetric scale).
It holds C + 5 bytes per region and 4C per image in memory instead of 4C per region, and on the
real-tower benchmark (bench/first_stage.py) recalls the exact MaxSim top 32 within its first
64 results at N = 100k with P = 1024 (docs/benchmarks.md). P defaults to pool_for(N).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lateint import scoring
from lateint.index.first_stage import query, records, tombstones
from lateint.index.first_stage.exact_copy import (  # noqa: F401 (re-exported)
    ARRAYS,
    NAME,
    PREFIX,
    add,
    as_reader,
    build,
    compact,
    read_arrays,
    row_readers,
)

KINDS = ("exact", "exact_global", "refined")
IMAGE_BLOCK = 256  # images scored per step of the MaxSim scan
QUANTIZE_BLOCK = 4096  # images 'refined' quantizes at a time from a reader
QUERY_BLOCK = 32  # most queries per compiled call; fewer are padded to a power of two, so a
# handful of compiles serves every batch size


@functools.partial(jax.jit, static_argnums=5)
def maxsim_top(words, word_mask, concepts, region_mask, alive, n):
    """Running top-n of MaxSim over image blocks.

    words [Qb, T, C], word_mask [Qb, T]; concepts [nb, B, R, C], region_mask [nb, B, R],
    alive [nb, B] bool -> (scores [Qb, n] float32, ids [Qb, n] int32, -1 where no image).
    """
    num_queries = words.shape[0]
    block = concepts.shape[1]

    def step(carry, inputs):
        best_scores, best_ids, first = carry
        block_concepts, block_mask, block_alive = inputs
        scores = scoring.maxsim(words, word_mask, block_concepts, block_mask)  # [Qb, B]
        scores = jnp.where(block_alive[None, :], scores, -jnp.inf)
        block_ids = jnp.broadcast_to(
            first + jnp.arange(block, dtype=jnp.int32), (num_queries, block)
        )
        # Earlier (smaller) ids come first, and top_k keeps the first of equal scores.
        merged_scores = jnp.concatenate([best_scores, scores], axis=1)
        merged_ids = jnp.concatenate([best_ids, block_ids], axis=1)
        best_scores, positions = jax.lax.top_k(merged_scores, n)
        best_ids = jnp.take_along_axis(merged_ids, positions, axis=1)
        return (best_scores, best_ids, first + block), None

    initial = (
        jnp.full((num_queries, n), -jnp.inf, jnp.float32),
        jnp.full((num_queries, n), -1, jnp.int32),
        jnp.int32(0),
    )
    (scores, ids, _), _ = jax.lax.scan(step, initial, (concepts, region_mask, alive))
    return scores, jnp.where(jnp.isneginf(scores), -1, ids)


GLOBAL_BLOCK_VALUES = 1 << 24  # floats of the [Q, block, C] product formed at once
REFINE_BLOCK_VALUES = 1 << 24  # floats of the [q, P, R, T] similarities formed at once


def pool_for(num_images: int) -> int:
    """'refined''s default pool P: 2^round(log2(N / 100)) clamped to [512, 4096] (and to N).
    Validated by bench/first_stage.py at N = 10k (P = 512) and 100k (P = 1024)."""
    rule = 1 << max(0, round(np.log2(max(1.0, num_images / 100))))
    return int(min(max(rule, 512), 4096, max(1, num_images)))


def quantize_int8(concepts) -> tuple[np.ndarray, np.ndarray]:
    """concepts [N, R, C] float -> (codes [N, R, C] int8, scale [N, R] float32): per region,
    the largest |component| maps to 127."""
    concepts = np.asarray(concepts, np.float32)
    scale = (np.abs(concepts).max(axis=-1) / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    return np.round(concepts / safe).astype(np.int8), scale


def padded_rows(concepts, num_images: int, rows: int) -> np.ndarray:
    """concepts [N, R, C] (an array, or a reader read(start, stop)) as float32 rows of a zeroed
    [rows >= N, R, C] buffer, copied QUANTIZE_BLOCK images at a time."""
    read = as_reader(concepts, np.float32)
    first = read(0, min(num_images, QUANTIZE_BLOCK))
    buffer = np.zeros((rows,) + first.shape[1:], np.float32)
    buffer[: first.shape[0]] = first
    for start in range(first.shape[0], num_images, QUANTIZE_BLOCK):
        stop = min(num_images, start + QUANTIZE_BLOCK)
        buffer[start:stop] = read(start, stop)
    return buffer


def quantize_rows(concepts, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_int8 of concepts [N, R, C] given as an array, or as a reader read(start, stop)
    -> rows quantized QUANTIZE_BLOCK images at a time (its float32 rows are never all held)."""
    if not callable(concepts):
        return quantize_int8(concepts)
    read = as_reader(concepts, np.float32)
    first = read(0, min(num_images, QUANTIZE_BLOCK))
    codes = np.empty((num_images,) + first.shape[1:], np.int8)
    scale = np.empty((num_images,) + first.shape[1:2], np.float32)
    for start in range(0, num_images, QUANTIZE_BLOCK):
        stop = min(num_images, start + QUANTIZE_BLOCK)
        block = first if start == 0 else read(start, stop)
        codes[start:stop], scale[start:stop] = quantize_int8(block)
    return codes, scale


def _global_scores(queries, vectors) -> np.ndarray:
    """queries [Q, C] . vectors [N, C] -> [Q, N] float32, each score summed over C the same way
    wherever its image sits: a matrix product's rounding depends on N and on the image's
    column, which would make the scores of an INDEX differ from its rebuild's after deletions
    renumber the images (tests/test_live_index.py)."""
    scores = np.empty((queries.shape[0], vectors.shape[0]), np.float32)
    block = max(1, GLOBAL_BLOCK_VALUES // max(1, queries.size))
    for start in range(0, vectors.shape[0], block):
        stop = min(vectors.shape[0], start + block)
        scores[:, start:stop] = (queries[:, None, :] * vectors[None, start:stop]).sum(-1)
    return scores


class ExactStage:
    """Brute force. kind 'exact': MaxSim of word and region concepts; 'exact_global': global
    dot products. search(query_side, n) -> (ids [Q, n], scores [Q, n])."""

    def __init__(self, arrays: dict, deleted, record: dict, kind: str):
        """arrays: {'concepts' [N, R, C], 'region_mask' [N, R], 'global' [N, C]}; 'concepts'
        may be a reader read(start, stop) -> rows: 'refined' then quantizes it block by block,
        'exact' copies it into its padded buffer (and puts a view of it in `arrays` for the next
        stage)."""
        self.kind = kind
        self.name = kind
        # 'exact' and 'refined' compile per (query block, words, n): serve warms those shapes.
        self.compiles_per_shape = kind in ("exact", "refined")
        self.record = record
        self.num_images = record["num_images"]
        self.concept_dim = record["concept_dim"]
        self.deleted = deleted  # [N] bool
        self.global_vectors = np.ascontiguousarray(arrays["global"], np.float32)  # [N, C]
        self.pool = pool_for(self.num_images)
        if kind == "refined":
            codes, scale = quantize_rows(arrays["concepts"], self.num_images)  # int8, [N, R]
            held = (codes, scale, np.asarray(arrays["region_mask"], bool), self.global_vectors)
            self.arrays_nbytes = sum(array.nbytes for array in held)
            self._codes, self._scale, self._region_mask, self._global = map(jnp.asarray, held)
            self._alive = jnp.asarray(~np.asarray(deleted, bool))
        elif kind == "exact_global":
            self.arrays_nbytes = self.global_vectors.nbytes
        if kind == "exact":
            # Padded to whole blocks of IMAGE_BLOCK (padding images are dead), read into the
            # padded buffer block by block: one host copy of the concepts, not three.
            padded = -(-self.num_images // IMAGE_BLOCK) * IMAGE_BLOCK
            pad = padded - self.num_images
            concepts = padded_rows(arrays["concepts"], self.num_images, padded)  # [N', R, C]
            arrays["concepts"] = concepts[: self.num_images]  # a view, for a stage sharing arrays
            self.arrays_nbytes = sum(
                np.asarray(arrays[name]).nbytes for name in ("concepts", "region_mask", "global")
            )
            region_mask = np.pad(arrays["region_mask"], ((0, pad), (0, 0)))
            alive = np.pad(~deleted, (0, pad))
            self._concepts = jnp.asarray(concepts.reshape(-1, IMAGE_BLOCK, *concepts.shape[1:]))
            self._region_mask = jnp.asarray(
                region_mask.reshape(-1, IMAGE_BLOCK, region_mask.shape[1])
            )
            self._alive = jnp.asarray(alive.reshape(-1, IMAGE_BLOCK))

    @classmethod
    def load(cls, index_dir: str, kind: str = "exact", manifest: dict | None = None):
        """manifest: read the generation it publishes (default: the stage.json record)."""
        if kind not in KINDS:
            raise ValueError(f"ExactStage.load: kind expected one of {KINDS}, got {kind!r}")
        record = records.committed_record(index_dir, NAME, manifest)
        names = ("global",) if kind == "exact_global" else ("region_mask", "global")
        arrays = read_arrays(index_dir, record, names)
        if kind != "exact_global":  # read (exact) or quantized (refined) block by block
            arrays.update(row_readers(index_dir, record, ("concepts",)))
        return cls(
            arrays,
            tombstones.bitmap(index_dir, record["num_images"], manifest),
            record,
            kind,
        )

    @property
    def nbytes(self) -> int:
        return self.arrays_nbytes

    def search(self, query_side: query.QuerySide, n: int, pool: int | None = None):
        """Exact top n (ties: smaller id first); 'refined': the top n of its pool.

        Args:
          query_side: QuerySide; 'exact' uses concepts [Q, T, C] + mask [Q, T], 'exact_global'
            uses global_vector [Q, C], 'refined' all three.
          pool: 'refined' only: the global top P it reranks (default self.pool).
        Returns:
          (ids [Q, n] int64, scores [Q, n] float32), padded with -1 / -inf when fewer than n
          images are alive.
        """
        query_side = query.check_query_side(query_side, self.concept_dim, self.name)
        n = query.check_count(n, self.name)
        if self.kind == "refined":
            return self._refined(query_side, n, int(pool or self.pool))
        if self.kind == "exact_global":
            scores = _global_scores(query_side.global_vector, self.global_vectors)  # [Q, N]
            alive = np.broadcast_to(~self.deleted[None, :], scores.shape)
            return query.top_dense(scores.astype(np.float32), alive, n)
        words, mask = query_side.concepts, query_side.mask
        num_queries = words.shape[0]
        ids = np.full((num_queries, n), query.PAD_ID, np.int64)
        scores = np.full((num_queries, n), query.PAD_SCORE, np.float32)
        kept = min(n, self._alive.size)
        for start in range(0, num_queries, QUERY_BLOCK):
            stop = min(num_queries, start + QUERY_BLOCK)
            pad = min(QUERY_BLOCK, 1 << (stop - start - 1).bit_length()) - (stop - start)
            block_words = np.pad(words[start:stop], ((0, pad), (0, 0), (0, 0)))
            block_mask = np.pad(mask[start:stop], ((0, pad), (0, 0)))
            block_scores, block_ids = maxsim_top(
                block_words, block_mask, self._concepts, self._region_mask, self._alive, kept
            )
            scores[start:stop, :kept] = np.asarray(block_scores)[: stop - start]
            ids[start:stop, :kept] = np.asarray(block_ids)[: stop - start]
        return ids, scores

    def _refined(self, query_side: query.QuerySide, n: int, pool: int):
        """Global top `pool` (alive images), reranked by int8 MaxSim; top n of those. Runs the
        same XLA computations as serve.sharded_stages does per shard, so a sharded corpus
        ranks near-ties in the same order."""
        size = min(pool, int((~self.deleted).sum()))
        num_queries = query_side.mask.shape[0]
        if size == 0:
            return (
                np.full((num_queries, n), query.PAD_ID, np.int64),
                np.full((num_queries, n), query.PAD_SCORE, np.float32),
            )
        words, mask = query_side.concepts, query_side.mask  # [Q, T, C], [Q, T]
        per_query = size * words.shape[1] * self._codes.shape[1]
        step = max(1, REFINE_BLOCK_VALUES // max(1, per_query))
        ids, scores = [], []
        for start in range(0, num_queries, step):
            rows = slice(start, start + step)
            pool_scores, candidates = _global_pool(
                query_side.global_vector[rows], self._global, self._alive, size
            )  # [q, P]
            refined = refine_scores(
                candidates,
                jnp.isfinite(pool_scores),
                words[rows],
                mask[rows],
                self._codes,
                self._scale,
                self._region_mask,
            )
            ids.append(np.asarray(candidates, np.int64))
            scores.append(np.asarray(refined, np.float32))
        ids, scores = np.concatenate(ids), np.concatenate(scores)
        found = np.isfinite(scores)
        query_index = np.broadcast_to(np.arange(num_queries)[:, None], ids.shape)
        return query.top_per_query(query_index[found], ids[found], scores[found], num_queries, n)


def global_scores(query_global, vectors, alive):
    """[Q, C] . [N, C] -> [Q, N] float32 (XLA, full precision), -inf where alive [N] is False."""
    scores = jnp.dot(query_global, vectors.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(alive[None, :], scores, -jnp.inf)


@functools.partial(jax.jit, static_argnums=3)
def _global_pool(query_global, vectors, alive, pool: int):
    """The global top `pool`: (scores [Q, P], ids [Q, P] int32)."""
    return jax.lax.top_k(global_scores(query_global, vectors, alive), pool)


@jax.jit
def refine_scores(rows, owned, words, word_mask, codes, scale, region_mask):
    """'refined''s int8 MaxSim of pool members.

    rows [Q, P] int (rows of codes; any row where not owned), owned [Q, P] bool; words
    [Q, T, C], word_mask [Q, T]; codes [N, R, C] int8, scale [N, R], region_mask [N, R]
    -> [Q, P] float32, -inf where not owned. An image without regions scores 0.
    """
    similarity = (
        jnp.einsum(
            "qprc,qtc->qprt",
            codes[rows].astype(jnp.float32),
            words,
            precision=jax.lax.Precision.HIGHEST,
        )
        * scale[rows][..., None]
    )  # [Q, P, R, T]
    similarity = jnp.where(region_mask[rows][..., None], similarity, -jnp.inf)
    best = jnp.where(word_mask[:, None, :], similarity.max(axis=2), 0.0)  # [Q, P, T]
    best = jnp.where(jnp.isfinite(best), best, 0.0)
    return jnp.where(owned, best.sum(-1), -jnp.inf)
