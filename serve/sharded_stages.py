"""Brute-force first stages over an INDEX whose image axis is split over the devices of a Mesh.

    mesh = mesh_for(8)                      # or "all": every device of every process
    stage = ShardedExactStage(arrays, deleted, record, "refined", mesh)
    ids, scores = stage.search(query_side, n)   # equal to ExactStage's, ids and scores

Shard s of S holds rows [s·L, (s+1)·L) of the vectors (L = ceil(N / S), for 'exact' rounded up
to whole MaxSim blocks; padding rows are dead), so device memory falls as 1/S. Each search is one
`jax.shard_map` over the mesh axis 'images':

- 'exact': every shard runs the blocked MaxSim scan of lateint.index.first_stage.exact over its rows
  and keeps its top n; the per-shard lists (ids offset by s·L) are all-gathered;
- 'exact_global': per-shard global dot products and top n, all-gathered;
- 'refined': per-shard global top P, all-gathered and cut to the global top P (the pool a single
  device takes); each shard scores by int8 MaxSim the pool members it owns, and a pmax over the
  shards gives every member its score.

The host merges the S·n gathered candidates with lateint.index.first_stage.query.top_per_query (ties:
smaller id first), as the single-device stages order theirs, so results equal ExactStage's (ids
the same, scores within float32 rounding; tests/test_searcher_sharded.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lateint.index.first_stage import exact, query

AXIS = "images"
KINDS = exact.KINDS


def spans_processes(mesh: Mesh) -> bool:
    """True when the mesh's devices belong to more than one process (jax.distributed)."""
    return len({device.process_index for device in mesh.devices.flat}) > 1


def mesh_for(shards) -> Mesh:
    """A 1-D Mesh ('images') over the first `shards` devices of jax.devices() ('all': every
    device of every process). Raises ValueError naming the device count when there are fewer."""
    devices = jax.devices()
    count = len(devices) if shards == "all" else int(shards)
    if not 1 <= count <= len(devices):
        raise ValueError(
            f"index_shards: expected 1..{len(devices)} (the devices JAX sees: "
            f"{[str(device) for device in devices[:4]]}{' ...' if len(devices) > 4 else ''}) "
            f"or 'all', got {shards!r}"
        )
    return Mesh(np.array(devices[:count]), (AXIS,))


def _placed(read, num_images: int, rows: int, mesh: Mesh, fill=0) -> jax.Array:
    """Rows [0, num_images) of read(start, stop), padded to `rows` rows with `fill`, split on
    axis 0 over the mesh. Each process reads only the rows of the shards its own devices hold
    (jax.make_array_from_callback), so under jax.distributed no host holds the whole INDEX."""
    trailing = read(0, min(1, num_images)).shape[1:]

    def shard(index):
        start, stop, _ = index[0].indices(rows)
        real = read(min(start, num_images), min(stop, num_images))
        pad = [(0, stop - start - real.shape[0])] + [(0, 0)] * len(trailing)
        return np.pad(real, pad, constant_values=fill)

    sharding = NamedSharding(mesh, P(AXIS))
    return jax.make_array_from_callback((rows,) + trailing, sharding, shard)


class ShardedExactStage:
    """'exact', 'exact_global' or 'refined' (lateint.index.first_stage.exact.ExactStage) with the
    vectors split over `mesh`. search(query_side, n) -> (ids [Q, n] int64, scores [Q, n])."""

    compiles_per_shape = True  # one shard_map per (queries, words, n): serve warms them

    def __init__(self, arrays: dict, deleted, record: dict, kind: str, mesh: Mesh):
        """arrays: {'concepts' [N, R, C], 'region_mask' [N, R], 'global' [N, C]} ('exact_global'
        needs only 'global'), each an array or a callable read(start, stop) -> rows (each
        process then reads only the rows its devices hold); deleted [N] bool (tombstones)."""
        if kind not in KINDS:
            raise ValueError(f"ShardedExactStage: kind expected one of {KINDS}, got {kind!r}")
        self.kind = self.name = kind
        self.mesh = mesh
        self.record = record
        self.num_images = record["num_images"]
        self.concept_dim = record["concept_dim"]
        self.pool = exact.pool_for(self.num_images)
        shards = mesh.size
        per_shard = -(-max(1, self.num_images) // shards)
        # 'exact' scans whole blocks: IMAGE_BLOCK images, or the power of two that holds a
        # small shard (so padding stays under 2x).
        self.block = min(exact.IMAGE_BLOCK, 1 << (per_shard - 1).bit_length())
        block = self.block if kind == "exact" else 1
        self.shard_rows = -(-per_shard // block) * block  # L
        rows = shards * self.shard_rows
        count = self.num_images

        def place(source, dtype, fill=0):
            return _placed(exact.as_reader(source, dtype), count, rows, mesh, fill)

        alive = ~np.asarray(deleted, bool)
        self._alive = place(alive, bool, fill=False)  # [S*L]
        self._global = place(arrays["global"], np.float32)  # [S*L, C]
        placed = [self._alive, self._global]
        if kind != "exact_global":
            self._region_mask = place(arrays["region_mask"], bool)  # [S*L, R]
            placed.append(self._region_mask)
        if kind == "exact":
            self._concepts = place(arrays["concepts"], np.float32)  # [S*L, R, C]
            placed.append(self._concepts)
        elif kind == "refined":
            quantized = functools.lru_cache(maxsize=2)(
                lambda start, stop: exact.quantize_int8(
                    exact.as_reader(arrays["concepts"], np.float32)(start, stop)
                )
            )  # codes and scale of one shard read its rows once
            self._codes = place(lambda start, stop: quantized(start, stop)[0], np.int8)
            self._scale = place(lambda start, stop: quantized(start, stop)[1], np.float32)
            placed += [self._codes, self._scale]
        self._placed = placed

    @property
    def nbytes(self) -> int:
        """Bytes held on all devices together."""
        return sum(array.nbytes for array in self._placed)

    def device_nbytes(self) -> dict[str, int]:
        """{device: bytes of this stage's shards on it}: 1/S of `nbytes` each."""
        held: dict[str, int] = {}
        for array in self._placed:
            for shard in array.addressable_shards:
                held[str(shard.device)] = held.get(str(shard.device), 0) + shard.data.nbytes
        return held

    def held_rows(self) -> list[tuple[int, int]]:
        """[start, stop) of the shards this process's devices hold (padding rows included)."""
        return sorted(
            (shard.index[0].indices(self.shard_rows * self.mesh.size)[:2])
            for shard in self._alive.addressable_shards
        )

    def search(self, query_side: query.QuerySide, n: int, pool: int | None = None):
        """As ExactStage.search: (ids [Q, n] int64, scores [Q, n] float32), best first, padded
        with -1 / -inf; 'refined' reranks the global top `pool` (default self.pool)."""
        query_side = query.check_query_side(query_side, self.concept_dim, self.name)
        n = query.check_count(n, self.name)
        num_queries = query_side.mask.shape[0]
        if self.kind == "refined":
            size = min(int(pool or self.pool), self.num_images)
            ids, scores = _refined(self.mesh, size)(
                query_side.global_vector,
                query_side.concepts,
                query_side.mask,
                self._global,
                self._codes,
                self._scale,
                self._region_mask,
                self._alive,
            )  # [Q, P] each
        elif self.kind == "exact_global":
            ids, scores = _global_top(self.mesh, min(n, self.shard_rows))(
                query_side.global_vector, self._global, self._alive
            )  # [Q, S*n]
        else:
            blocks = self.shard_rows // self.block
            ids, scores = _maxsim_search(self.mesh, n, blocks, self.block)(
                query_side.concepts, query_side.mask, self._concepts, self._region_mask, self._alive
            )  # [Q, S*n]
        ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float32)
        found = (ids >= 0) & np.isfinite(scores)
        rows = np.broadcast_to(np.arange(num_queries)[:, None], ids.shape)
        return query.top_per_query(rows[found], ids[found], scores[found], num_queries, n)


def _offset(local_rows: int):
    return jax.lax.axis_index(AXIS) * local_rows


def _gathered(ids, scores):
    """Per-shard [Q, m] lists -> all shards' [Q, S*m] (shard order)."""
    ids = jax.lax.all_gather(ids, AXIS, axis=1, tiled=True)
    return ids, jax.lax.all_gather(scores, AXIS, axis=1, tiled=True)


@functools.cache
def _maxsim_search(mesh: Mesh, n: int, blocks: int, block: int):
    def per_shard(words, word_mask, concepts, region_mask, alive):  # local rows [L, ...]
        shape = (blocks, block)
        scores, ids = exact.maxsim_top(
            words,
            word_mask,
            concepts.reshape(shape + concepts.shape[1:]),
            region_mask.reshape(shape + region_mask.shape[1:]),
            alive.reshape(shape),
            n,
        )  # [Q, n], local ids or -1
        ids = jnp.where(ids >= 0, ids + _offset(concepts.shape[0]), -1)
        return _gathered(ids, scores)

    return _jitted(mesh, per_shard, (P(), P(), P(AXIS), P(AXIS), P(AXIS)))


@functools.cache
def _global_top(mesh: Mesh, n: int):
    def per_shard(query_global, vectors, alive):  # [Q, C], local [L, C], [L]
        scores = exact.global_scores(query_global, vectors, alive)
        top, positions = jax.lax.top_k(scores, n)
        return _gathered(positions + _offset(vectors.shape[0]), top)

    return _jitted(mesh, per_shard, (P(), P(AXIS), P(AXIS)))


@functools.cache
def _refined(mesh: Mesh, pool: int):
    def per_shard(query_global, words, word_mask, vectors, codes, scale, region_mask, alive):
        local_rows = vectors.shape[0]
        scores = exact.global_scores(query_global, vectors, alive)  # [Q, L]
        top, positions = jax.lax.top_k(scores, min(pool, local_rows))
        candidates, candidate_scores = _gathered(positions + _offset(local_rows), top)
        pool_scores, order = jax.lax.top_k(candidate_scores, pool)  # the global top P [Q, P]
        pool_ids = jnp.take_along_axis(candidates, order, axis=1)
        local = pool_ids - _offset(local_rows)
        owned = (local >= 0) & (local < local_rows) & jnp.isfinite(pool_scores)
        refined = exact.refine_scores(
            jnp.clip(local, 0, local_rows - 1), owned, words, word_mask, codes, scale, region_mask
        )
        refined = jax.lax.pmax(refined, AXIS)  # every member's score, from its owner
        pool_ids = jnp.where(jnp.isfinite(pool_scores), pool_ids, -1)
        return pool_ids, refined

    specs = (P(), P(), P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS), P(AXIS))
    return _jitted(mesh, per_shard, specs)


def _jitted(mesh: Mesh, per_shard, in_specs):
    # check_vma off: the MaxSim scan's carry starts replicated and becomes per-shard; the
    # outputs are replicated by construction (all_gather, pmax).
    return jax.jit(
        jax.shard_map(
            per_shard, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()), check_vma=False
        )
    )
