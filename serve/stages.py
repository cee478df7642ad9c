"""The first stages a Searcher can use on one INDEX, loaded once and warmed.

Stages built by `python -m lateint.index.build` are opened through lateint.index.first_stage. The brute-force
'exact' (MaxSim over every stored concept), 'exact_global' (global dot products) and 'refined'
(the global top P reranked by int8 MaxSim) are always available: when lateint.index.build did not build 'exact', they run over the activation store's own
concept and global arrays, so the pipeline works on any finished INDEX. A stage whose search
compiles per query shape ('exact') is wrapped in a WarmedStage: it only ever runs shapes that
`warm_up` compiled, padding a search up to one of them.
"""

from __future__ import annotations

import itertools

import numpy as np

from lateint.index.first_stage import (
    SEARCH_NAMES,
    QuerySide,
    built_stages,
    open_first_stage,
    records,
    tombstones,
)
from lateint.index.first_stage import exact as exact_stage
from lateint.index.store import ActivationStore
from lateint.serve import sharded_concepts, sharded_stages
from lateint.serve.buckets import Buckets, bucket_for

EXACT_NAMES = ("exact", "exact_global", "refined")
SHARDABLE_NAMES = ("concepts",) + EXACT_NAMES  # what load_stages splits over a mesh


def _exact_from_store(store: ActivationStore, kind: str, arrays: dict, mesh=None):
    """An ExactStage over the activation store's vectors (no INDEX/first_stage needed); with
    a mesh of several devices, a ShardedExactStage over them, which reads only the rows of
    this process's shards."""
    sharded = mesh is not None and mesh.size > 1
    if not arrays:
        # Concepts stay a reader: 'refined' quantizes it block by block, 'exact' copies it in blocks.
        arrays["concepts"] = store.read_concepts
        if sharded:
            arrays.update({"region_mask": store.read_region_mask, "global": store.read_global})
        else:
            arrays["region_mask"] = store.read_region_mask(0, store.num_images)  # [N, R]
            arrays["global"] = store.read_global(0, store.num_images).astype(np.float32)
    record = {
        "num_images": store.num_images,
        "concept_dim": store.concept_dim,
        "regions": store.regions,
    }
    deleted = tombstones.bitmap(store.index_dir, store.num_images, store.manifest)
    if sharded:
        return sharded_stages.ShardedExactStage(arrays, deleted, record, kind, mesh)
    return exact_stage.ExactStage(arrays, deleted, record, kind)


def _sharded_built_exact(store: ActivationStore, kind: str, arrays: dict, mesh):
    """A ShardedExactStage over the built 'exact' stage's copy (which holds added images),
    reading only the rows of this process's shards."""
    record = records.committed_record(store.index_dir, exact_stage.NAME, store.manifest)
    if not arrays:
        arrays.update(exact_stage.row_readers(store.index_dir, record))
    deleted = tombstones.bitmap(store.index_dir, record["num_images"], store.manifest)
    return sharded_stages.ShardedExactStage(arrays, deleted, record, kind, mesh)


def available_names(index_dir: str, manifest: dict | None = None) -> list[str]:
    """Search names usable on this INDEX (the generation `manifest` publishes, if given): the
    built stages plus the exact ones, in SEARCH_NAMES order."""
    built = set(built_stages(index_dir, manifest))
    return [name for name in SEARCH_NAMES if name in built or name in EXACT_NAMES]


def load_stages(store: ActivationStore, names, mesh=None) -> dict:
    """{name: stage with search(QuerySide, n) -> (ids [Q, n] int64, scores [Q, n])}; a stage
    that compiles per shape comes wrapped in a WarmedStage with no shape warmed yet. mesh (of
    several devices): the brute-force stages split the image axis over it (serve.sharded_stages),
    the concept lists their postings over its processes (serve.sharded_concepts).

    Raises ValueError naming the INDEX and the usable names when a name is not available (or,
    with a mesh, cannot be sharded), and lets a stage's own error (e.g. an interrupted build)
    through.
    """
    index_dir = store.index_dir
    usable = available_names(index_dir, store.manifest)
    sharded = mesh is not None and mesh.size > 1
    if sharded:
        usable = [name for name in usable if name in SHARDABLE_NAMES]
    names = list(names)
    unknown = [name for name in names if name not in usable]
    if unknown or not names:
        raise ValueError(
            f"first stages {names}: expected a non-empty subset of {usable} for "
            f"INDEX {index_dir!r}"
            + (
                f" sharded over {mesh.size} devices (sq and permutation are not sharded)"
                if sharded
                else " (build others with python -m lateint.index.build "
                f"--index={index_dir} --first_stage=...)"
            )
        )
    built = set(built_stages(index_dir, store.manifest))
    stages, shared_arrays = {}, {}
    for name in names:
        if sharded and name == "concepts":  # postings split by process (sharded_concepts)
            stages[name] = sharded_concepts.ShardedConceptStage.load(
                index_dir, mesh, store.manifest
            )
        elif sharded and "exact" in built:
            stages[name] = _sharded_built_exact(store, name, shared_arrays, mesh)
        elif name in EXACT_NAMES and "exact" not in built:
            stages[name] = _exact_from_store(store, name, shared_arrays, mesh)
        else:
            stages[name] = open_first_stage(index_dir, name, store.manifest)
        if getattr(stages[name], "compiles_per_shape", False):
            stages[name] = WarmedStage(stages[name])
    return stages


def query_counts(max_queries: int) -> list[int]:
    """Query counts a stage is warmed for: the powers of two below max_queries, and max_queries
    (the exact stage pads its query blocks to powers of two)."""
    return sorted(
        {1 << power for power in range(max_queries.bit_length()) if 1 << power <= max_queries}
        | {max_queries}
    )


def every_shape(buckets: Buckets) -> list[tuple[int, int, int]]:
    """Every (queries, words T, n) a Searcher passes to a first stage, small ones first."""
    return sorted(
        itertools.product(
            query_counts(buckets.max_batch), buckets.query_lengths, buckets.candidates
        )
    )


def first_shapes(buckets: Buckets) -> list[tuple[int, int, int]]:
    """The shape that holds every search of one query (warmed before a Searcher answers)."""
    return [(1, buckets.max_length, buckets.max_n)]


def later_shapes(buckets: Buckets) -> list[tuple[int, int, int]]:
    """The other shapes, a default query's first."""
    default = (1, buckets.query_lengths[0], bucket_for(buckets.default_n, buckets.candidates, "n"))
    first = set(first_shapes(buckets))
    return sorted(
        (shape for shape in every_shape(buckets) if shape not in first),
        key=lambda shape: (shape != default, shape),
    )


class WarmedStage:
    """A first stage that compiles per query shape (ExactStage 'exact', `compiles_per_shape`),
    searched only with shapes it has already run: a search is padded up to the cheapest warmed
    (queries, words, n) that holds it (extra queries repeat query 0, extra words are masked) and
    its results are cut back; more queries than any warmed shape holds run in pieces. So no
    search waits for XLA. Other attributes are the stage's."""

    def __init__(self, stage):
        self.stage = stage
        self.warmed: set[tuple[int, int, int]] = set()

    def __getattr__(self, name):
        return getattr(self.stage, name)

    def warm(self, shape: tuple[int, int, int], concept_dim: int) -> None:
        """Runs one search of `shape` (queries, words, n) on a dummy query, then allows it."""
        queries, length, count = shape
        concepts = np.zeros((queries, length, concept_dim), np.float32)
        concepts[:, :, 0] = 1.0
        mask = np.zeros((queries, length), bool)
        mask[:, : min(3, length)] = True
        global_vector = np.zeros((queries, concept_dim), np.float32)
        global_vector[:, 0] = 1.0
        self.stage.search(QuerySide(concepts, mask, global_vector), count)
        self.warmed = self.warmed | {shape}  # one assignment: searching threads see old or new

    def search(self, query_side: QuerySide, n: int):
        """The stage's search(query_side, n) -> (ids [Q, n], scores [Q, n]) on a warmed shape."""
        queries, length = np.shape(query_side.mask)
        fitting = [shape for shape in self.warmed if shape[1] >= length and shape[2] >= n]
        if not fitting:
            raise ValueError(
                f"{self.stage.name}.search: shape {(queries, length, n)} is larger "
                f"than every warmed one ({sorted(self.warmed)})"
            )
        holding = [shape for shape in fitting if shape[0] >= queries]
        if not holding:  # in pieces of the most queries a warmed shape holds
            step = max(shape[0] for shape in fitting)
            pieces = [
                self.search(
                    QuerySide(*(np.asarray(array)[start : start + step] for array in query_side)), n
                )
                for start in range(0, queries, step)
            ]
            return tuple(np.concatenate([piece[part] for piece in pieces]) for part in (0, 1))
        rows, words, count = min(holding, key=lambda shape: shape[0] * shape[1] * shape[2])
        order = np.concatenate([np.arange(queries), np.zeros(rows - queries, np.int64)])
        concepts, mask, global_vector = (np.asarray(array)[order] for array in query_side)
        grow = ((0, 0), (0, words - length))
        padded = QuerySide(np.pad(concepts, grow + ((0, 0),)), np.pad(mask, grow), global_vector)
        ids, scores = self.stage.search(padded, count)
        return ids[:queries, :n], scores[:queries, :n]


def warm_up(stages: dict, shapes, concept_dim: int) -> None:
    """Runs each WarmedStage once per shape (queries, words, n) it has not run yet, so that
    those searches compile now and are allowed from then on."""
    for stage in stages.values():
        if isinstance(stage, WarmedStage):
            for shape in shapes:
                if shape not in stage.warmed:
                    stage.warm(shape, concept_dim)
