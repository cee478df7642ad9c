"""Benchmarks every first stage against exact MaxSim and faiss IndexIVFFlat; prints JSON lines.

    python -m bench.first_stage [--images=10000,100000] [--index=INDEX] [--queries=128]

For each corpus size: one JSON line per (stage, setting) with the recall of the exact MaxSim
top-100 within the first n candidates (n in --ns; lateint.retrieval_metrics.first_stage_recall), the recall
of the exact global-vector top-100 (the global stages' own target), mean search time per query
(queries batched --batch at a time, after a warm-up call), the stage's bytes on disk and in
memory, and its build time. faiss-cpu IndexIVFFlat (inner product, nlist from the same
2^round(log2(4 sqrt(N))) rule) runs on the same global vectors in the same process.

Data: synthetic clustered concept vectors by default (index/first_stage/synthetic.py: Zipf-like
topic frequencies, noisy regions, queries that describe a target image); with --index, the
stored vectors of a finished INDEX, queried by noisy subsets of random stored images' regions
(the benchmark has no text tower). Stages are built in a scratch directory, never in INDEX.
faiss-cpu is a benchmark-only dependency (pip install faiss-cpu).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags, logging

from lateint import retrieval_metrics
from lateint.index.first_stage import ArraySource, build_stages, kmeans, open_first_stage, synthetic

_IMAGES = flags.DEFINE_list("images", ["10000"], "Synthetic corpus sizes N (e.g. 10000,100000).")
_INDEX = flags.DEFINE_string("index", None, "Benchmark a finished INDEX instead of synthetic data.")
_QUERIES = flags.DEFINE_integer("queries", 128, "Queries Q.")
_REGIONS = flags.DEFINE_integer("regions", 12, "Synthetic regions per image R (3..R real).")
_CONCEPT_DIM = flags.DEFINE_integer("concept_dim", 256, "Synthetic concept dim C.")
_TOPICS = flags.DEFINE_integer("topics", 4096, "Synthetic topic directions.")
_WORDS = flags.DEFINE_integer("words", 12, "Words per query T (2..T real).")
_NS = flags.DEFINE_list("ns", ["100", "200", "500", "1000"], "Candidate counts n.")
_CENTROIDS = flags.DEFINE_list(
    "num_centroids", ["0"], "Concept dictionary sizes K to compare; 0: the stated rule."
)
_NPROBES = flags.DEFINE_list("nprobes", ["1", "2", "4", "8", "16", "32"], "Concept nprobe values.")
_SQ_SIZES = flags.DEFINE_list(
    "sq_sizes", ["24", "48", "96", "128"], "SQ components kept per vector (of 2C)."
)
_SQ_QUANTIZATION = flags.DEFINE_integer("sq_quantization", 64, "SQ quantization factor.")
_PERMUTATION_SIZES = flags.DEFINE_list(
    "permutation_sizes", ["16", "32", "64", "128"], "Deep permutation prefix lengths."
)
_FAISS_NPROBES = flags.DEFINE_list("faiss_nprobes", ["1", "4", "16", "64"], "IVF nprobe values.")
_BATCH = flags.DEFINE_integer("batch", 16, "Queries per search call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes over the queries (fastest kept).")
_DIR = flags.DEFINE_string("dir", "/tmp/bench_first_stage", "Scratch directory (deleted first).")
REFERENCE_K = 100


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _timed_search(search, queries, n: int, batch: int):
    """search(query_side_slice, n) over all queries in batches -> (ids [Q, n], ms per query).

    The fastest of --repeats passes (after a warm-up call that compiles): the machine is shared,
    and the minimum is the least disturbed measurement.
    """
    search(type(queries)(*(part[:batch] for part in queries)), n)  # warm-up (compiles)
    best = np.inf
    for _ in range(_REPEATS.value):
        pieces = []
        began = time.perf_counter()
        for start in range(0, queries.mask.shape[0], batch):
            piece = type(queries)(*(part[start : start + batch] for part in queries))
            pieces.append(search(piece, n)[0])
        best = min(best, time.perf_counter() - began)
    return np.concatenate(pieces), 1e3 * best / queries.mask.shape[0]


def _recalls(ids, reference, global_reference, ns) -> dict:
    return {
        "recall_maxsim_top100": {
            n: round(retrieval_metrics.first_stage_recall(ids[:, :n], reference), 4) for n in ns
        },
        "recall_global_top100": {
            n: round(retrieval_metrics.first_stage_recall(ids[:, :n], global_reference), 4)
            for n in ns
        },
        "mean_candidates": round(float((ids >= 0).sum(axis=1).mean()), 1),
    }


def _load_data(images: int):
    """(SyntheticImages, QuerySide, description) for N synthetic images or the --index vectors."""
    if _INDEX.value:
        from lateint.index.store import ActivationStore

        activation_store = ActivationStore.open(_INDEX.value)
        count = activation_store.num_images
        data = synthetic.SyntheticImages(
            activation_store.read_concepts(0, count),
            activation_store.read_region_mask(0, count),
            activation_store.read_global(0, count),
        )
        regions = data.concepts[data.region_mask]
        picks = np.random.default_rng(0).choice(
            regions.shape[0], min(4096, regions.shape[0]), replace=False
        )
        queries, _ = synthetic.queries(data, regions[picks], _QUERIES.value, _WORDS.value)
        return data, queries, {"source": _INDEX.value}
    topics = synthetic.topics(_TOPICS.value, _CONCEPT_DIM.value, seed=0)
    data = synthetic.images(topics, images, _REGIONS.value, min_regions=3, seed=1)
    queries, _ = synthetic.queries(data, topics, _QUERIES.value, _WORDS.value, seed=2)
    return data, queries, {"source": "synthetic", "topics": _TOPICS.value}


def _faiss_records(data, queries, reference, global_reference, ns, common):
    import faiss  # benchmark-only dependency

    dim = data.global_vectors.shape[1]
    nlist = kmeans.number_of_centroids(data.global_vectors.shape[0])
    began = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(data.global_vectors))
    index.add(np.ascontiguousarray(data.global_vectors))
    build_seconds = time.perf_counter() - began
    index_bytes = int(faiss.serialize_index(index).nbytes)
    for nprobe in _FAISS_NPROBES.value:
        index.nprobe = int(nprobe)

        def search(query_side, n):
            return index.search(np.ascontiguousarray(query_side.global_vector), n)[::-1]

        ids, milliseconds = _timed_search(search, queries, max(ns), _BATCH.value)
        _emit(
            dict(
                common,
                stage="faiss_ivfflat_global",
                settings={"nlist": nlist, "nprobe": int(nprobe)},
                ms_per_query=round(milliseconds, 3),
                index_bytes=index_bytes,
                build_seconds=round(build_seconds, 2),
                **_recalls(ids, reference, global_reference, ns),
            )
        )


def run(images: int) -> None:
    ns = [int(n) for n in _NS.value]
    began = time.perf_counter()
    data, queries, description = _load_data(images)
    count = data.concepts.shape[0]
    common = {
        "images": count,
        "queries": queries.mask.shape[0],
        "batch": _BATCH.value,
        "regions": data.concepts.shape[1],
        "concept_dim": data.concepts.shape[2],
        "real_regions": int(data.region_mask.sum()),
        **description,
    }
    logging.info("data ready in %.1f s: %s", time.perf_counter() - began, common)
    scratch = os.path.join(_DIR.value, str(count))
    shutil.rmtree(scratch, ignore_errors=True)
    source = ArraySource(*data)
    build_seconds = {}
    began = time.perf_counter()
    build_stages(scratch, source, ["exact"])
    build_seconds["exact"] = round(time.perf_counter() - began, 2)
    exact_stage = open_first_stage(scratch, "exact")
    reference, milliseconds = _timed_search(exact_stage.search, queries, REFERENCE_K, _BATCH.value)
    global_stage = open_first_stage(scratch, "exact_global")
    global_reference, global_milliseconds = _timed_search(
        global_stage.search, queries, max(ns), _BATCH.value
    )
    exact_bytes = _folder_bytes(os.path.join(scratch, "first_stage", "exact"))
    _emit(
        dict(
            common,
            stage="exact",
            settings={},
            ms_per_query=round(milliseconds, 3),
            index_bytes=exact_bytes,
            memory_bytes=exact_stage.nbytes,
            build_seconds=build_seconds["exact"],
            **_recalls(reference, reference, global_reference[:, :REFERENCE_K], [100]),
        )
    )
    global_reference_top = global_reference[:, :REFERENCE_K]
    _emit(
        dict(
            common,
            stage="exact_global",
            settings={},
            ms_per_query=round(global_milliseconds, 3),
            index_bytes=exact_bytes,
            memory_bytes=global_stage.nbytes,
            build_seconds=build_seconds["exact"],
            **_recalls(global_reference, reference, global_reference_top, ns),
        )
    )
    del exact_stage
    for num_centroids in _CENTROIDS.value:
        began = time.perf_counter()
        build_stages(
            scratch,
            source,
            ["concepts"],
            {"concepts": {"num_centroids": int(num_centroids) or None}},
        )
        seconds = round(time.perf_counter() - began, 2)
        concept_bytes = _folder_bytes(os.path.join(scratch, "first_stage", "concepts"))
        for nprobe in _NPROBES.value:
            stage = open_first_stage(scratch, "concepts", nprobe=int(nprobe))
            ids, milliseconds = _timed_search(stage.search, queries, max(ns), _BATCH.value)
            _emit(
                dict(
                    common,
                    stage="concepts",
                    settings={
                        "nprobe": int(nprobe),
                        "num_centroids": stage.centroids.shape[0],
                        "centroid_rule": stage.record["parameters"]["centroid_rule"],
                    },
                    ms_per_query=round(milliseconds, 3),
                    index_bytes=concept_bytes,
                    memory_bytes=stage.nbytes,
                    build_seconds=seconds,
                    **_recalls(ids, reference, global_reference_top, ns),
                )
            )
    for kind, sizes in (("sq", _SQ_SIZES.value), ("permutation", _PERMUTATION_SIZES.value)):
        for size in sizes:
            began = time.perf_counter()
            build_stages(
                scratch,
                source,
                [kind],
                {kind: {"size": int(size), "quantization": _SQ_QUANTIZATION.value}},
            )
            seconds = round(time.perf_counter() - began, 2)
            stage = open_first_stage(scratch, kind)
            ids, milliseconds = _timed_search(stage.search, queries, max(ns), _BATCH.value)
            _emit(
                dict(
                    common,
                    stage=kind,
                    settings={
                        "size": int(size),
                        "sparsification": round(stage.parameters["sparsification"], 4),
                        **({"quantization": _SQ_QUANTIZATION.value} if kind == "sq" else {}),
                    },
                    ms_per_query=round(milliseconds, 3),
                    index_bytes=_folder_bytes(os.path.join(scratch, "first_stage", kind)),
                    memory_bytes=stage.nbytes,
                    build_seconds=seconds,
                    **_recalls(ids, reference, global_reference_top, ns),
                )
            )
    _faiss_records(data, queries, reference, global_reference_top, ns, common)
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    logging.info("devices: %s", jax.devices())
    sizes = [0] if _INDEX.value else [int(images) for images in _IMAGES.value]
    for images in sizes:
        began = time.perf_counter()
        run(images)
        logging.info("N=%s done in %.1f s", images, time.perf_counter() - began)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
