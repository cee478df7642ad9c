"""Run by tests/test_searcher_sharded.py in a process with 8 simulated CPU devices.

    python tests/sharded_search_helper.py WORKDIR OUT.json INDEX [INDEX ...]

Compares, on the same inputs, one device against S devices: ShardedExactStage vs ExactStage on
random vectors (N not a multiple of S, tombstoned images, an image without regions), and
Searcher.load(shards=S) vs shards=1 on each INDEX, for each brute-force first stage. Writes the
comparisons as JSON; the test asserts on them.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lateint.index.first_stage import QuerySide, exact  # noqa: E402
from lateint.serve import sharded_stages  # noqa: E402
from lateint.serve.buckets import Buckets  # noqa: E402
from lateint.serve.searcher import Searcher  # noqa: E402

QUERIES = ["two horses", "a cat to the left of a dog", "three birds above a frog", "a seven"]
BUCKETS = Buckets(
    query_lengths=(16,),
    query_batches=(1, 4),
    candidates=(64, 256),
    rerank=(16,),
    default_n=64,
    default_K=16,
)


def _unit(values):
    return (values / np.linalg.norm(values, axis=-1, keepdims=True)).astype(np.float32)


def _compare(one, other) -> dict:
    """(ids, scores) pairs -> {'ids_equal', 'max_score_diff'} over the finite scores."""
    (ids, scores), (other_ids, other_scores) = one, other
    finite = np.isfinite(scores) & np.isfinite(other_scores)
    return {
        "ids_equal": bool(np.array_equal(ids, other_ids)),
        "same_padding": bool(np.array_equal(np.isfinite(scores), np.isfinite(other_scores))),
        "max_score_diff": float(np.abs(scores - other_scores)[finite].max(initial=0.0)),
    }


def stage_cases() -> dict:
    rng = np.random.default_rng(16)
    images, regions, dim = 603, 6, 16
    arrays = {
        "concepts": _unit(rng.normal(size=(images, regions, dim))),
        "region_mask": rng.random((images, regions)) < 0.8,
        "global": _unit(rng.normal(size=(images, dim))),
    }
    arrays["region_mask"][7] = False  # an image without regions
    deleted = rng.random(images) < 0.1
    record = {"num_images": images, "concept_dim": dim, "regions": regions}
    side = QuerySide(
        _unit(rng.normal(size=(5, 9, dim))),
        rng.random((5, 9)) < 0.7,
        _unit(rng.normal(size=(5, dim))),
    )
    cases = {}
    for kind in exact.KINDS:
        single = exact.ExactStage(arrays, deleted, record, kind)
        for shards in (1, 3, 8):
            stage = sharded_stages.ShardedExactStage(
                arrays, deleted, record, kind, sharded_stages.mesh_for(shards)
            )
            for n in (16, 700):  # 700 > the alive images: padded with -1 / -inf
                extra = {"pool": 128} if kind == "refined" else {}
                cases[f"{kind}/S={shards}/n={n}"] = _compare(
                    single.search(side, n, **extra), stage.search(side, n, **extra)
                )
            held = stage.device_nbytes()
            cases[f"{kind}/S={shards}/memory"] = {
                "devices": len(held),
                "largest_device_bytes": max(held.values()),
                "total_bytes": stage.nbytes,
                "shard_rows": stage.shard_rows,
            }
    return cases


def searcher_cases(workdir: str, index_dir: str) -> dict:
    names = ["refined", "exact", "exact_global"]
    single = Searcher.load(workdir, index_dir, BUCKETS, first_stages=names)
    sharded = Searcher.load(workdir, index_dir, BUCKETS, first_stages=names, shards="all")
    cases = {"devices": len(jax.devices()), "sharded_mesh": sharded.mesh.size}
    for name in names:
        one = single.search(QUERIES, k=10, n=64, K=16, first_stage=name)
        other = sharded.search(QUERIES, k=10, n=64, K=16, first_stage=name)
        cases[name] = {
            "ids": [[hit.id for hit in result.hits] for result in one],
            "sharded_ids": [[hit.id for hit in result.hits] for result in other],
            "max_joint_diff": max(
                abs(a.score - b.score) for x, y in zip(one, other) for a, b in zip(x.hits, y.hits)
            ),
            "max_maxsim_diff": max(
                abs(a.maxsim - b.maxsim) for x, y in zip(one, other) for a, b in zip(x.hits, y.hits)
            ),
        }
    cases["device_nbytes"] = sharded.device_nbytes()
    cases["single_nbytes"] = sum(stage.nbytes for stage in single.stages.values())
    # The concept lists on a mesh (serve.sharded_concepts; one process holds every row here).
    lists = Searcher.load(workdir, index_dir, BUCKETS, first_stages=["concepts"], shards=8)
    one = Searcher.load(workdir, index_dir, BUCKETS, first_stages=["concepts"])
    results = [
        searcher.search(QUERIES, k=10, n=64, K=16, first_stage="concepts")
        for searcher in (one, lists)
    ]
    cases["concepts"] = {
        "ids": [[hit.id for hit in result.hits] for result in results[0]],
        "sharded_ids": [[hit.id for hit in result.hits] for result in results[1]],
        "scores": [[hit.score for hit in result.hits] for result in results[0]],
        "sharded_scores": [[hit.score for hit in result.hits] for result in results[1]],
        "held_rows": lists.stages["concepts"].held_rows(),
    }
    try:
        Searcher.load(workdir, index_dir, BUCKETS, first_stages=["sq"], shards=8)
        cases["sq_refusal"] = None
    except ValueError as error:
        cases["sq_refusal"] = str(error)
    return cases


if __name__ == "__main__":
    workdir, out, *index_dirs = sys.argv[1:]
    result = {
        "stages": stage_cases(),
        "searchers": {index_dir: searcher_cases(workdir, index_dir) for index_dir in index_dirs},
    }
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
