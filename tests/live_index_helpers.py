"""Shared pieces of the live-INDEX tests: corpora cut from the scenes test split, and an INDEX
built from scratch to compare a changed one against."""

import os
import subprocess
import sys

import numpy as np

from lateint.data.corpus import RegionCorpus, load_corpus
from lateint.data.precomp import write_precomp
from lateint.index.first_stage import QuerySide, postings, records
from lateint.index.first_stage import build as first_stage_build
from lateint.index.manifest import read_manifest
from lateint.index.precompute import precompute
from lateint.index.store import read_array

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["concepts", "sq", "permutation", "exact"]
OPTIONS = {"concepts": {"num_centroids": 16}, "sq": {"size": 12}, "permutation": {"size": 10}}
PRECOMPUTE = dict(storage="int8", batch_size=16, shard_rows=16)


def subset(corpus: RegionCorpus, rows) -> RegionCorpus:
    """The images `rows` [n] of `corpus` with their captions, in that order."""
    rows = np.asarray(rows)
    per_image = np.bincount(corpus.caption_image, minlength=corpus.num_images)[0]
    captions = [
        corpus.captions[row * per_image + offset] for row in rows for offset in range(per_image)
    ]
    return RegionCorpus(
        np.asarray(corpus.regions[rows]),
        np.asarray(corpus.boxes[rows]),
        np.asarray(corpus.region_counts[rows]),
        captions,
        np.repeat(np.arange(len(rows)), per_image),
        [corpus.image_ids[row] for row in rows],
    )


def write_subset(scenes_dir: str, rows, out: str) -> str:
    write_precomp(out, "test", subset(load_corpus(scenes_dir, "test"), rows))
    return out


def build_index(workdir: str, data: str, index_dir: str, centroids=None) -> str:
    """precompute + every first stage; concepts over `centroids` [K, C] when given."""
    precompute(workdir, data, "test", index_dir, **PRECOMPUTE)
    options = dict(OPTIONS)
    if centroids is not None:
        options["concepts"] = {"centroids": centroids}
    first_stage_build.build_from_index(index_dir, STAGES, options)
    return index_dir


def centroids_of(index_dir: str) -> np.ndarray:
    from lateint.index.first_stage import concepts

    manifest = read_manifest(index_dir)
    return concepts.read_centroids(
        index_dir, records.committed_record(index_dir, "concepts", manifest)
    )


def queries(concept_dim: int, count: int = 6, words: int = 5, seed: int = 3) -> QuerySide:
    """Random unit word and global vectors: every stage's search is a pure function of them."""
    rng = np.random.default_rng(seed)
    concepts = rng.standard_normal((count, words, concept_dim)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=-1, keepdims=True)
    global_vector = rng.standard_normal((count, concept_dim)).astype(np.float32)
    global_vector /= np.linalg.norm(global_vector, axis=-1, keepdims=True)
    return QuerySide(concepts, np.ones((count, words), bool), global_vector)


def stage_arrays(index_dir: str) -> dict:
    """{name: arrays} of every published stage: the CSR lists (base + delta merged), the
    dictionary, the exact stage's rows."""
    from lateint.index.first_stage import exact

    manifest = read_manifest(index_dir)
    found = {}
    for name in first_stage_build.built_stages(index_dir, manifest):
        record = records.committed_record(index_dir, name, manifest)
        if name == "exact":
            found[name] = exact.read_arrays(index_dir, record)
            continue
        lists = postings.read_lists(index_dir, records.generations_prefix(name), record)
        found[name] = {"offsets": lists.offsets, "images": lists.images, "weights": lists.weights}
        if name == "concepts":
            found[name]["centroids"] = centroids_of(index_dir)
    return found


def store_arrays(index_dir: str) -> dict:
    manifest = read_manifest(index_dir)
    return {role: read_array(index_dir, path) for role, path in manifest["arrays"].items()}


def search_all(index_dir: str, count: int = 40) -> dict:
    """{stage: (ids [Q, count], scores)} of every search name on the published generation."""
    manifest = read_manifest(index_dir)
    side = queries(manifest["shapes"]["concept_dim"])
    names = first_stage_build.built_stages(index_dir, manifest)
    return {
        name: first_stage_build.open_first_stage(index_dir, name, manifest).search(side, count)
        for name in names + ["exact_global"]
    }


def run_binary(module: str, *arguments, timeout: float = 300):
    """Runs `python -m module` from the worktree, waiting for it."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_binary(module: str, *arguments, environment: dict | None = None):
    """Starts `python -m module` from the worktree (extra `environment` variables added)."""
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **(environment or {}))
    return subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
