"""Benchmarks every first stage and its peers against exact MaxSim; prints JSON lines.

    python -m bench.first_stage --source=towers --workdir=runs/scenes/model \
        --data=runs/scenes/data --scale_dir=runs/scenes/eval/scaling --images=10000,100000
    python -m bench.first_stage [--source=synthetic] [--images=10000,100000]
    python -m bench.first_stage --source=index --index=INDEX

Sources (bench/first_stage_data.py): `towers` builds scene-distractor corpora of N images through
the trained towers and queries them with the split's captions through the text tower;
`synthetic` uses clustered synthetic vectors; `index` a finished INDEX's stored vectors.

For each N, one JSON line per (stage, setting):
- recall_exact_top{K}: recall of the exact MaxSim top K (K = --reference_k, what the joint layers
  rerank) within the first n candidates, n in --ns (lateint.retrieval_metrics.first_stage_recall);
  recall_global_top{K}: the same against the exact global-vector top K;
- ms_per_query: {batch: ms} for single queries (the first --single_queries queries, one call
  each) and batches (--batches); search only, the fastest of --repeats passes after a warm-up call
  (query encoding and the stage's load excluded);
- index_bytes(_per_image) on disk (faiss: its serialised index; MUVERA: the encodings),
  memory_bytes(_per_image) held for search, build_seconds, and the build's peak resident memory
  (build_peak_rss_bytes, and build_rss_delta_bytes over the RSS before it; bench/peak_memory.py).
Stages: lateint's `concepts` (over --nprobes x --rescore x --depths), `refined` (over --pools),
`sq`, `permutation`, the
exact brute force (`exact`, the reference, and `exact_global`); peers (bench/first_stage_peers.py):
faiss IVF-PQ over all region vectors searched per word (ColBERTv1), faiss HNSW and IVF on the
global vectors, MUVERA encodings (cross-checked against `muvera-python` when installed). Stages
are built in a scratch directory, never in an INDEX. faiss-cpu and muvera-python: the `bench`
extra.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags, logging

from bench import first_stage_data, first_stage_peers
from bench.peak_memory import PeakMemory
from lateint import retrieval_metrics
from lateint.index.first_stage import ArraySource, build_stages, open_first_stage

_SOURCE = flags.DEFINE_enum("source", "synthetic", ["synthetic", "index", "towers"], "Vectors.")
_IMAGES = flags.DEFINE_list("images", ["10000"], "Corpus sizes N (synthetic, towers).")
_INDEX = flags.DEFINE_string("index", None, "index: the INDEX; towers: the split's own INDEX.")
_WORKDIR = flags.DEFINE_string("workdir", None, "towers: the trained model.")
_DATA = flags.DEFINE_string("data", None, "towers: the corpus (a scenes precomp directory).")
_SPLIT = flags.DEFINE_string("split", "test", "towers: the split whose captions query.")
_SCALE_DIR = flags.DEFINE_string("scale_dir", None, "towers: distractor pool and indexes.")
_DISTRACTOR_SEED = flags.DEFINE_integer("distractor_seed", -1, "-1: the corpus's seed + 1.")
_QUERIES = flags.DEFINE_integer("queries", 256, "Queries Q.")
_REGIONS = flags.DEFINE_integer("regions", 12, "Synthetic regions per image R (3..R real).")
_CONCEPT_DIM = flags.DEFINE_integer("concept_dim", 256, "Synthetic concept dim C.")
_TOPICS = flags.DEFINE_integer("topics", 4096, "Synthetic topic directions.")
_WORDS = flags.DEFINE_integer("words", 12, "Synthetic words per query T (2..T real).")
_REFERENCE_K = flags.DEFINE_integer("reference_k", 32, "K of the exact top K to recall.")
_NS = flags.DEFINE_list("ns", ["64", "128", "256", "1024"], "Candidate counts n.")
_STAGES = flags.DEFINE_list(
    "stages",
    [
        "concepts",
        "refined",
        "sq",
        "permutation",
        "faiss_ivfpq_tokens",
        "faiss_hnsw_global",
        "faiss_ivfflat_global",
        "muvera",
    ],
    "What to run besides the exact references.",
)
_CENTROIDS = flags.DEFINE_list("num_centroids", ["0"], "Concept dictionary sizes; 0: the rule.")
_NPROBES = flags.DEFINE_list("nprobes", ["2", "4", "8", "16", "32"], "Concept nprobe values.")
_RESCORE = flags.DEFINE_list("rescore", ["none", "weighted"], "Concept rescoring modes.")
_DEPTHS = flags.DEFINE_list("depths", ["0"], "Concept rescoring depths (0: every candidate).")
_SQ_SIZES = flags.DEFINE_list("sq_sizes", ["48", "128"], "SQ components kept per vector.")
_SQ_QUANTIZATION = flags.DEFINE_integer("sq_quantization", 64, "SQ quantization factor.")
_PERMUTATION_SIZES = flags.DEFINE_list("permutation_sizes", ["32", "128"], "Prefix lengths.")
_FAISS_NPROBES = flags.DEFINE_list("faiss_nprobes", ["4", "16", "64"], "IVF nprobe values.")
_HNSW_EF = flags.DEFINE_list("hnsw_ef", ["64", "256", "1024"], "HNSW efSearch values.")
_PQ_NPROBES = flags.DEFINE_list("pq_nprobes", ["8", "32"], "Token IVF-PQ nprobe values.")
_PQ_DEPTHS = flags.DEFINE_list("pq_depths", ["64", "256", "1024"], "Token IVF-PQ k' per word.")
_MUVERA = flags.DEFINE_list(
    "muvera", ["10x3x16", "20x4x8"], "MUVERA repetitions x simhash bits x projection (0: none)."
)
_POOLS = flags.DEFINE_list("pools", ["0", "512", "1024", "2048"], "refined pools P (0: the rule).")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Queries per search call to time.")
_SINGLE_QUERIES = flags.DEFINE_integer("single_queries", 32, "Queries timed one at a time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes (fastest kept).")
_DIR = flags.DEFINE_string("dir", "/tmp/bench_first_stage", "Scratch directory (deleted first).")


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _slice(queries, start: int, stop: int):
    return type(queries)(*(part[start:stop] for part in queries))


def _ids_only(stage):
    """A lateint stage's search as the peers' (ids only)."""
    return lambda query_side, n: stage.search(query_side, n)[0]


def _search_all(search, queries, n: int, batch: int) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(search(_slice(queries, start, start + batch), n))
            for start in range(0, queries.mask.shape[0], batch)
        ]
    )


def _timings(search, queries, n: int) -> tuple[np.ndarray, dict]:
    """(ids [Q, n] of every query, {batch: ms per query}); see the module docstring."""
    milliseconds, ids = {}, None
    for batch in sorted(int(value) for value in _BATCHES.value):
        subset = queries if batch > 1 else _slice(queries, 0, _SINGLE_QUERIES.value)
        search(_slice(subset, 0, batch), n)  # warm-up (compiles)
        best = np.inf
        for _ in range(_REPEATS.value):
            began = time.perf_counter()
            found = _search_all(search, subset, n, batch)
            best = min(best, time.perf_counter() - began)
        milliseconds[str(batch)] = round(1e3 * best / subset.mask.shape[0], 3)
        if batch > 1:
            ids = found
    if ids is None:
        ids = _search_all(search, queries, n, 16)
    return ids, milliseconds


def _recalls(ids, reference, global_reference, ns) -> dict:
    k = reference.shape[1]
    return {
        f"recall_exact_top{k}": {
            n: round(retrieval_metrics.first_stage_recall(ids[:, :n], reference), 4) for n in ns
        },
        f"recall_global_top{k}": {
            n: round(retrieval_metrics.first_stage_recall(ids[:, :n], global_reference), 4)
            for n in ns
        },
        "mean_candidates": round(float((ids[:, : max(ns)] >= 0).sum(axis=1).mean()), 1),
    }


class Run:
    """One corpus size: the references, then every stage, each emitted as one JSON line."""

    def __init__(self, data, queries, common):
        self.data, self.queries, self.common = data, queries, common
        self.ns = [int(n) for n in _NS.value]
        self.count = data.concepts.shape[0]

    def emit(self, stage, settings, search, sizes, build) -> np.ndarray:
        ids, milliseconds = _timings(search, self.queries, max(self.ns))
        _emit(
            dict(
                self.common,
                stage=stage,
                settings=settings,
                ms_per_query=milliseconds,
                index_bytes=sizes["index_bytes"],
                index_bytes_per_image=round(sizes["index_bytes"] / self.count, 1),
                memory_bytes=sizes["memory_bytes"],
                memory_bytes_per_image=round(sizes["memory_bytes"] / self.count, 1),
                **build,
                **_recalls(ids, self.reference, self.global_reference, self.ns),
            )
        )
        return ids

    def build(self, function, *args, **kwargs):
        """Runs a build; returns (its result, {build_seconds, build_peak_rss_bytes, ...})."""
        began = time.perf_counter()
        with PeakMemory() as peak:
            result = function(*args, **kwargs)
        return result, {
            "build_seconds": round(time.perf_counter() - began, 2),
            "build_peak_rss_bytes": peak.peak_bytes,
            "build_rss_delta_bytes": peak.delta_bytes,
        }

    def lateint_stage(self, scratch, source, kind, options, open_options, settings):
        folder = os.path.join(scratch, "first_stage", kind)
        _, build = self.build(build_stages, scratch, source, [kind], {kind: options})
        disk = _folder_bytes(folder)
        for extra, values in open_options:
            stage = open_first_stage(scratch, kind, **values)
            sizes = {"index_bytes": disk, "memory_bytes": stage.nbytes}
            self.emit(kind, dict(settings(stage), **extra), _ids_only(stage), sizes, build)

    def references(self, scratch, source):
        k = _REFERENCE_K.value
        _, build = self.build(build_stages, scratch, source, ["exact"])
        self.reference_build = build  # 'refined' reads the same copy
        disk = _folder_bytes(os.path.join(scratch, "first_stage", "exact"))
        exact = open_first_stage(scratch, "exact")
        self.reference = _search_all(_ids_only(exact), self.queries, k, 16)
        glob = open_first_stage(scratch, "exact_global")
        self.global_reference = _search_all(_ids_only(glob), self.queries, k, 16)
        for stage in (exact, glob):
            sizes = {"index_bytes": disk, "memory_bytes": stage.nbytes}
            self.emit(stage.name, {}, _ids_only(stage), sizes, build)

    def peers(self, generator):
        """Each peer's first step builds it (timed); every later step only yields a setting."""
        began = time.perf_counter()
        with PeakMemory() as peak:
            first = next(generator, None)
        build = {
            "build_seconds": round(time.perf_counter() - began, 2),
            "build_peak_rss_bytes": peak.peak_bytes,
            "build_rss_delta_bytes": peak.delta_bytes,
        }
        if first is None:
            return
        for stage, settings, search, sizes in [first, *generator]:
            self.emit(stage, settings, search, sizes, build)


def _muvera_configurations():
    triples = []
    for text in _MUVERA.value:
        repetitions, bits, projection = (int(part) for part in text.split("x"))
        triples.append((repetitions, bits, projection or None))
    return triples


def run(images: int) -> None:
    began = time.perf_counter()
    options = {
        "source": _SOURCE.value,
        "index": _INDEX.value,
        "workdir": _WORKDIR.value,
        "data": _DATA.value,
        "split": _SPLIT.value,
        "scale_dir": _SCALE_DIR.value,
        "distractor_seed": _DISTRACTOR_SEED.value,
        "sizes": [int(value) for value in _IMAGES.value],
        "queries": _QUERIES.value,
        "regions": _REGIONS.value,
        "concept_dim": _CONCEPT_DIM.value,
        "topics": _TOPICS.value,
        "words": _WORDS.value,
    }
    data, queries, description = first_stage_data.load(options, images)
    common = {
        "images": data.concepts.shape[0],
        "queries": queries.mask.shape[0],
        "reference_k": _REFERENCE_K.value,
        "regions": data.concepts.shape[1],
        "concept_dim": data.concepts.shape[2],
        "real_regions": int(data.region_mask.sum()),
        "real_words": int(np.asarray(queries.mask).sum()),
        "timing": "search only, after a warm-up call; fastest of the repeats",
        **description,
    }
    logging.info("data ready in %.1f s: %s", time.perf_counter() - began, common)
    scratch = os.path.join(_DIR.value, str(common["images"]))
    shutil.rmtree(scratch, ignore_errors=True)
    source = ArraySource(*data)
    bench = Run(data, queries, common)
    bench.references(scratch, source)
    wanted = set(_STAGES.value)
    if "refined" in wanted:
        stage = open_first_stage(scratch, "refined")
        disk = _folder_bytes(os.path.join(scratch, "first_stage", "exact"))
        for pool in (int(value) for value in _POOLS.value):
            settings = {"pool": pool or stage.pool, "pool_rule": not pool}
            bench.emit(
                "refined",
                settings,
                lambda query_side, n, pool=pool: stage.search(query_side, n, pool or None)[0],
                {"index_bytes": disk, "memory_bytes": stage.nbytes},
                bench.reference_build,
            )
    if "concepts" in wanted:
        for num_centroids in _CENTROIDS.value:
            combinations = [
                (
                    {"nprobe": int(p), "rescore": mode, "depth": int(depth) or None},
                    {"nprobe": int(p), "rescore": mode, "depth": int(depth) or None},
                )
                for p in _NPROBES.value
                for mode in _RESCORE.value
                for depth in (_DEPTHS.value if mode != "none" else ["0"])
            ]
            bench.lateint_stage(
                scratch,
                source,
                "concepts",
                {"num_centroids": int(num_centroids) or None},
                combinations,
                lambda stage: {
                    "num_centroids": stage.centroids.shape[0],
                    "centroid_rule": stage.record["parameters"]["centroid_rule"],
                },
            )
    for kind, sizes in (("sq", _SQ_SIZES.value), ("permutation", _PERMUTATION_SIZES.value)):
        if kind not in wanted:
            continue
        for size in sizes:
            options = {"size": int(size), "quantization": _SQ_QUANTIZATION.value}
            bench.lateint_stage(
                scratch,
                source,
                kind,
                options,
                [({}, {})],
                lambda stage, size=size, kind=kind: {
                    "size": int(size),
                    "sparsification": round(stage.parameters["sparsification"], 4),
                    **({"quantization": _SQ_QUANTIZATION.value} if kind == "sq" else {}),
                },
            )
    if "faiss_ivfpq_tokens" in wanted:
        bench.peers(
            first_stage_peers.faiss_ivfpq_tokens(
                data, [int(v) for v in _PQ_NPROBES.value], [int(v) for v in _PQ_DEPTHS.value]
            )
        )
    if "faiss_hnsw_global" in wanted:
        bench.peers(first_stage_peers.faiss_global(data, "hnsw", [int(v) for v in _HNSW_EF.value]))
    if "faiss_ivfflat_global" in wanted:
        bench.peers(
            first_stage_peers.faiss_global(data, "ivfflat", [int(v) for v in _FAISS_NPROBES.value])
        )
    if "muvera" in wanted:
        for configuration in _muvera_configurations():
            bench.peers(first_stage_peers.muvera(data, configuration, queries))
    shutil.rmtree(scratch, ignore_errors=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    logging.info("devices: %s", jax.devices())
    sizes = [0] if _SOURCE.value == "index" else [int(images) for images in _IMAGES.value]
    for images in sizes:
        began = time.perf_counter()
        run(images)
        logging.info("N=%s done in %.1f s", images, time.perf_counter() - began)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
