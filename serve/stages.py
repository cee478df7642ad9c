"""The first stages a Searcher can use on one INDEX, loaded once and warmed for every bucket.

Stages built by `python -m index.build` are opened through index.first_stage. The brute-force
'exact' (MaxSim over every stored concept) and 'exact_global' (global dot products) are always
available: when index.build did not build 'exact', they run over the activation store's own
concept and global arrays, so the pipeline works on any finished INDEX.
"""

from __future__ import annotations

import itertools

import numpy as np

from index.first_stage import QuerySide, SEARCH_NAMES, built_stages, open_first_stage
from index.first_stage import exact as exact_stage
from index.first_stage import tombstones
from index.store import ActivationStore

EXACT_NAMES = ("exact", "exact_global")


def _exact_from_store(store: ActivationStore, kind: str, arrays: dict):
    """An ExactStage over the activation store's vectors (no INDEX/first_stage needed)."""
    if not arrays:
        arrays["concepts"] = store.read_concepts(0, store.num_images)      # [N, R, C]
        arrays["region_mask"] = store.read_region_mask(0, store.num_images)  # [N, R]
        arrays["global"] = store.read_global(0, store.num_images).astype(np.float32)  # [N, C]
    record = {"num_images": store.num_images, "concept_dim": store.concept_dim,
              "regions": store.regions}
    return exact_stage.ExactStage(
        arrays, tombstones.bitmap(store.index_dir, store.num_images, store.manifest), record, kind)


def available_names(index_dir: str, manifest: dict | None = None) -> list[str]:
    """Search names usable on this INDEX (the generation `manifest` publishes, if given): the
    built stages plus the exact ones, in SEARCH_NAMES order."""
    built = set(built_stages(index_dir, manifest))
    if "exact" in built:
        built.add("exact_global")
    return [name for name in SEARCH_NAMES if name in built or name in EXACT_NAMES]


def load_stages(store: ActivationStore, names) -> dict:
    """{name: stage with search(QuerySide, n) -> (ids [Q, n] int64, scores [Q, n])}.

    Raises ValueError naming the INDEX and the usable names when a name is not available, and
    lets a stage's own error (e.g. an interrupted build) through.
    """
    index_dir = store.index_dir
    usable = available_names(index_dir, store.manifest)
    names = list(names)
    unknown = [name for name in names if name not in usable]
    if unknown or not names:
        raise ValueError(f"first stages {names}: expected a non-empty subset of {usable} for "
                         f"INDEX {index_dir!r} (build others with python -m index.build "
                         f"--index={index_dir} --first_stage=...)")
    built = set(built_stages(index_dir, store.manifest))
    stages, shared_arrays = {}, {}
    for name in names:
        if name in EXACT_NAMES and "exact" not in built:
            stages[name] = _exact_from_store(store, name, shared_arrays)
        else:
            stages[name] = open_first_stage(index_dir, name, store.manifest)
    return stages


def warm_up(stages: dict, query_lengths, counts, max_queries: int, concept_dim: int) -> None:
    """Runs each stage once per (query length, candidate count, query count) so that stages
    which jit (the exact MaxSim scan) compile before the first request.

    Query counts: the powers of two below max_queries, and max_queries (the exact stage pads
    its query blocks to powers of two).
    """
    query_counts = sorted({1 << power for power in range(max_queries.bit_length())
                           if 1 << power <= max_queries} | {max_queries})
    for stage in stages.values():
        for length, queries in itertools.product(query_lengths, query_counts):
            concepts = np.zeros((queries, length, concept_dim), np.float32)
            concepts[:, :, 0] = 1.0
            mask = np.zeros((queries, length), bool)
            mask[:, :3] = True
            global_vector = np.zeros((queries, concept_dim), np.float32)
            global_vector[:, 0] = 1.0
            for count in counts:
                stage.search(QuerySide(concepts, mask, global_vector), count)
