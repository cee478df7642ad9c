"""`python -m lateint.index.build` on a real INDEX written by lateint.index.store, then every stage searched."""

import os
import subprocess
import sys

import numpy as np
import pytest

from lateint import retrieval_metrics
from lateint.index.first_stage import (
    ArraySource,
    add,
    build_stages,
    delete,
    open_first_stage,
    records,
    synthetic,
)
from lateint.index.store import ActivationStore

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES, REGIONS, DIM, HIDDEN = 150, 4, 16, 8


@pytest.fixture(scope="module")
def corpus():
    topics = synthetic.topics(30, DIM, seed=0)
    data = synthetic.images(topics, NUM_IMAGES, REGIONS, min_regions=1, seed=1)
    queries, _ = synthetic.queries(data, topics, 8, 5, seed=2)
    return data, queries


def write_index(index_dir, data):
    """A finished INDEX holding `data` (activations are random: the first stages ignore them)."""
    activation_store = ActivationStore.create(
        index_dir,
        image_ids=[f"scene-{i}" for i in range(NUM_IMAGES)],
        regions=REGIONS,
        hidden=HIDDEN,
        concept_dim=DIM,
        model_fingerprint="test",
        split_layer=1,
        storage_dtype="float32",
        shard_rows=64,
    )
    activations = np.random.default_rng(0).standard_normal((NUM_IMAGES, REGIONS, HIDDEN))
    activation_store.write_batch(
        0,
        {
            "activations": activations.astype(np.float32),
            "region_mask": data.region_mask,
            "concepts": data.concepts,
            "global": data.global_vectors,
        },
    )
    for start, stop in activation_store.pending_ranges():
        activation_store.mark_completed(start, stop)
    activation_store.finalize()


def run_build(*arguments):
    environment = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([REPOSITORY, os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-m", "lateint.index.build", *arguments],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_binary_builds_every_stage_from_the_index(corpus, tmp_path):
    data, queries = corpus
    index_dir = str(tmp_path / "index")
    write_index(index_dir, data)
    result = run_build(
        f"--index={index_dir}",
        "--first_stage=concepts,sq,permutation,exact",
        "--num_centroids=32",
        "--sq_size=12",
        "--permutation_size=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built first stage 'concepts'" in result.stderr
    concept_record = records.read_record(index_dir, "concepts")
    assert concept_record["num_centroids"] == 32 and concept_record["num_images"] == NUM_IMAGES
    assert records.read_record(index_dir, "sq")["parameters"]["size"] == 12
    reference, _ = open_first_stage(index_dir, "exact").search(queries, 10)
    for name in ("concepts", "sq", "permutation", "exact_global", "refined"):
        stage = open_first_stage(index_dir, name)
        ids, scores = stage.search(queries, NUM_IMAGES)
        assert ids.shape == scores.shape == (8, NUM_IMAGES) and stage.num_images == NUM_IMAGES
    exhaustive = open_first_stage(index_dir, "concepts", nprobe=32).search(queries, NUM_IMAGES)
    assert retrieval_metrics.first_stage_recall(exhaustive[0], reference) == 1.0
    # Add and delete through every stage at once equal a rebuild on the final set.
    more = synthetic.images(synthetic.topics(30, DIM, seed=0), 20, REGIONS, seed=9)
    assert set(add(index_dir, ArraySource(*more), NUM_IMAGES)) == {
        "concepts",
        "sq",
        "permutation",
        "exact",
    }
    delete(index_dir, np.array([3, 160]))
    kept = np.setdiff1d(np.arange(NUM_IMAGES + 20), [3, 160])
    union = [np.concatenate(pair)[kept] for pair in zip(data, more)]
    rebuilt = str(tmp_path / "rebuilt")
    centroids = open_first_stage(index_dir, "concepts").centroids
    build_stages(
        rebuilt,
        ArraySource(*union),
        ["concepts", "sq", "permutation", "exact"],
        {"concepts": {"centroids": centroids}, "sq": {"size": 12}, "permutation": {"size": 10}},
    )
    for name in ("concepts", "sq", "permutation", "exact", "exact_global", "refined"):
        got_ids, got_scores = open_first_stage(index_dir, name).search(queries, 30)
        ids, scores = open_first_stage(rebuilt, name).search(queries, 30)
        np.testing.assert_array_equal(
            got_ids, np.where(ids >= 0, kept[np.maximum(ids, 0)], -1), err_msg=name
        )
        np.testing.assert_array_equal(got_scores, scores, err_msg=name)


def test_binary_rejects_unknown_stage_and_stray_arguments(corpus, tmp_path):
    index_dir = str(tmp_path / "index")
    write_index(index_dir, corpus[0])
    result = run_build(f"--index={index_dir}", "--first_stage=concepts,bm25")
    assert result.returncode != 0 and "stage names expected" in result.stderr
    result = run_build(f"--index={index_dir}", "extra")
    assert result.returncode != 0 and "unexpected arguments" in result.stderr


def test_unfinished_index_is_refused(tmp_path):
    index_dir = str(tmp_path / "index")
    ActivationStore.create(
        index_dir,
        image_ids=["a"],
        regions=REGIONS,
        hidden=HIDDEN,
        concept_dim=DIM,
        model_fingerprint="test",
        split_layer=1,
        storage_dtype="float32",
    )
    result = run_build(f"--index={index_dir}", "--first_stage=sq")
    assert result.returncode != 0 and "complete" in result.stderr.lower()
