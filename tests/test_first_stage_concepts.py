"""The concept inverted list against exact MaxSim; add and delete against a rebuild."""

import numpy as np
import pytest

from lateint import retrieval_metrics, scoring
from lateint.index.first_stage import (
    ArraySource,
    QuerySide,
    add,
    build_stages,
    concepts,
    concepts_lists,
    delete,
    open_first_stage,
    postings,
    records,
    synthetic,
)

NUM_IMAGES = 240


@pytest.fixture(scope="module")
def corpus():
    """Clustered images [240, 5 regions, 24 dims] and 16 queries of up to 6 words."""
    topics = synthetic.topics(40, 24, seed=0)
    data = synthetic.images(topics, NUM_IMAGES, 5, min_regions=1, seed=1)
    queries, _ = synthetic.queries(data, topics, 16, 6, seed=2)
    return data, queries


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("concepts"))
    build_stages(index_dir, ArraySource(*corpus[0]), ["concepts"])
    return index_dir


def exact_scores(data, queries):
    """[Q, N] exact MaxSim."""
    return np.asarray(
        scoring.maxsim(queries.concepts, queries.mask, data.concepts, data.region_mask)
    )


def exact_top(scores, n, allowed=None):
    """Reference top n ids per row: descending score, then ascending id."""
    allowed = np.ones(scores.shape[1], bool) if allowed is None else allowed
    rows = []
    for row in scores:
        candidates = np.flatnonzero(allowed)
        order = np.lexsort((candidates, -row[candidates]))
        rows.append(candidates[order][:n])
    return np.array(rows)


def subset(data, images):
    return synthetic.SyntheticImages(
        data.concepts[images], data.region_mask[images], data.global_vectors[images]
    )


def test_one_centroid_per_region_and_all_probed_is_exact_maxsim(corpus, tmp_path):
    data, queries = corpus
    regions = data.concepts[data.region_mask]
    build_stages(
        str(tmp_path), ArraySource(*data), ["concepts"], {"concepts": {"centroids": regions}}
    )
    stage = open_first_stage(str(tmp_path), "concepts", nprobe=regions.shape[0])
    ids, scores = stage.search(queries, NUM_IMAGES)
    reference = exact_scores(data, queries)
    has_region = data.region_mask.any(axis=1)
    assert (ids >= 0).sum(axis=1).tolist() == [has_region.sum()] * ids.shape[0]
    np.testing.assert_allclose(
        scores,
        np.take_along_axis(reference, np.maximum(ids, 0), 1) * (ids >= 0)
        + np.where(ids >= 0, 0, -np.inf),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(ids[:, :20], exact_top(reference, 20, has_region))


def test_all_centroids_probed_returns_every_image_with_a_region(corpus, built):
    data, queries = corpus
    stage = open_first_stage(built, "concepts", nprobe=10_000)
    ids, _ = stage.search(queries, NUM_IMAGES)
    expected = set(np.flatnonzero(data.region_mask.any(axis=1)).tolist())
    for row in ids:
        assert set(row[row >= 0].tolist()) == expected
    reference = exact_top(exact_scores(data, queries), 10)
    assert retrieval_metrics.first_stage_recall(ids, reference) == 1.0


def test_recall_against_exact_grows_with_nprobe(corpus, built):
    data, queries = corpus
    reference = exact_top(exact_scores(data, queries), 10)
    recalls = {
        nprobe: retrieval_metrics.first_stage_recall(
            open_first_stage(built, "concepts", nprobe=nprobe).search(queries, 60)[0], reference
        )
        for nprobe in (1, 8)
    }
    assert recalls[8] >= 0.9, recalls
    assert recalls[1] < recalls[8], recalls


def test_centroid_rule_and_record(built):
    record = records.read_record(built, "concepts")
    # 4·sqrt(715 real regions) = 107 -> 2^7.
    assert record["num_centroids"] == 128 and record["num_images"] == NUM_IMAGES
    assert record["parameters"]["centroid_rule"].startswith("2^round")


@pytest.mark.parametrize("compact", [False, True])
def test_add_equals_rebuild_with_the_same_centroids(corpus, tmp_path, monkeypatch, compact):
    data, queries = corpus
    incremental, rebuilt = str(tmp_path / "incremental"), str(tmp_path / "rebuilt")
    build_stages(incremental, ArraySource(*subset(data, np.arange(150))), ["concepts"])
    if compact:
        monkeypatch.setattr(postings, "MIN_COMPACT_POSTINGS", 0)
    add(incremental, ArraySource(*subset(data, np.arange(150, 200))), 150)
    add(incremental, ArraySource(*subset(data, np.arange(200, NUM_IMAGES))), 200)
    record = records.read_record(incremental, "concepts")
    assert record["num_images"] == NUM_IMAGES
    # Without compaction both adds sit in generation 0's delta; with it, the first add (more
    # than a quarter of the base) rewrites the base as generation 1.
    assert record["generation"] == int(compact) and record["delta_postings"] > 0
    centroids = open_first_stage(incremental, "concepts").centroids
    build_stages(rebuilt, ArraySource(*data), ["concepts"], {"concepts": {"centroids": centroids}})
    left, right = (open_first_stage(path, "concepts") for path in (incremental, rebuilt))
    np.testing.assert_array_equal(left.lists.offsets, right.lists.offsets)
    np.testing.assert_array_equal(left.lists.images, right.lists.images)
    np.testing.assert_array_equal(left.lists.weights, right.lists.weights)
    for nprobe in (2, 8):
        for got, expected in zip(
            left.search(queries, 50, nprobe), right.search(queries, 50, nprobe)
        ):
            np.testing.assert_array_equal(got, expected)


def test_add_rejects_a_wrong_start_and_repeats_are_skipped(corpus, tmp_path):
    data, _ = corpus
    index_dir = str(tmp_path)
    build_stages(index_dir, ArraySource(*subset(data, np.arange(100))), ["concepts"])
    with pytest.raises(ValueError, match="must start at id 100; got start=90"):
        add(index_dir, ArraySource(*subset(data, np.arange(100, 120))), 90)
    new = ArraySource(*subset(data, np.arange(100, 120)))
    assert set(add(index_dir, new, 100)) == {"concepts"}
    assert add(index_dir, new, 100) == {}  # a re-run after success changes nothing


def test_delete_equals_rebuild_without_the_deleted(corpus, built, tmp_path):
    data, queries = corpus
    index_dir = str(tmp_path / "deleted")
    centroids = open_first_stage(built, "concepts").centroids
    build_stages(
        index_dir, ArraySource(*data), ["concepts"], {"concepts": {"centroids": centroids}}
    )
    deleted = np.random.default_rng(5).choice(NUM_IMAGES, 40, replace=False)
    assert delete(index_dir, deleted) == 40
    kept = np.setdiff1d(np.arange(NUM_IMAGES), deleted)
    rebuilt = str(tmp_path / "rebuilt")
    build_stages(
        rebuilt,
        ArraySource(*subset(data, kept)),
        ["concepts"],
        {"concepts": {"centroids": centroids}},
    )
    after = open_first_stage(index_dir, "concepts").search(queries, 80, 8)
    reference = open_first_stage(rebuilt, "concepts").search(queries, 80, 8)
    assert not np.isin(after[0], deleted).any()
    np.testing.assert_array_equal(
        after[0], np.where(reference[0] >= 0, kept[np.maximum(reference[0], 0)], -1)
    )
    np.testing.assert_array_equal(after[1], reference[1])


def test_padding_and_queries_without_words(corpus, built):
    data, queries = corpus
    mask = queries.mask.copy()
    mask[0] = False
    ids, scores = open_first_stage(built, "concepts", nprobe=1).search(
        QuerySide(queries.concepts, mask, queries.global_vector), NUM_IMAGES + 5
    )
    assert (ids[0] == -1).all() and np.isneginf(scores[0]).all()
    assert (ids[1:, -5:] == -1).all()  # never more than N candidates
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == (queries.mask.shape[0], NUM_IMAGES + 5)


def test_search_rejects_bad_queries(corpus, built):
    _, queries = corpus
    stage = open_first_stage(built, "concepts")
    with pytest.raises(ValueError, match=r"concepts expected \[Q, T, 24\], got shape"):
        stage.search(QuerySide(queries.concepts[..., :8], queries.mask, queries.global_vector), 5)
    with pytest.raises(ValueError, match="n expected a positive int, got 0"):
        stage.search(queries, 0)


def test_image_postings_keep_the_best_region_per_centroid():
    centroids = np.eye(3, dtype=np.float32)
    concepts_block = np.zeros((2, 3, 3), np.float32)
    concepts_block[0, 0] = [0.6, 0.8, 0.0]  # -> centroid 1, similarity 0.8
    concepts_block[0, 1] = [0.0, 1.0, 0.0]  # -> centroid 1, similarity 1.0 (kept)
    concepts_block[1, 2] = [0.0, 0.0, 1.0]  # -> centroid 2
    mask = np.array([[True, True, False], [False, False, True]])
    lists, images, weights = concepts.image_postings(concepts_block, mask, 7, centroids)
    assert lists.tolist() == [1, 2] and images.tolist() == [7, 8]
    np.testing.assert_allclose(weights, [1.0, 1.0])


def test_training_sample_is_bounded_uniform_and_streamed():
    """At most max_vectors distinct real regions, in region order, the same for a seed; all of
    them when there are fewer; read block by block (blocks of 7 images here)."""
    rng = np.random.default_rng(3)
    mask = rng.random((300, 6)) < 0.6
    concepts_array = rng.normal(size=(300, 6, 8)).astype(np.float32) * mask[..., None]
    source = ArraySource(concepts_array, mask, rng.normal(size=(300, 8)))
    real = concepts_array[mask]  # [T, C], region order
    sample, total = concepts_lists._training_vectors(source, 250, seed=5, block_rows=7)
    assert total == real.shape[0] > 250 and sample.shape == (250, 8)
    rows = [int(np.flatnonzero((real == vector).all(axis=1))[0]) for vector in sample]
    assert rows == sorted(set(rows))  # distinct, in region order
    again, _ = concepts_lists._training_vectors(source, 250, seed=5, block_rows=50)
    np.testing.assert_array_equal(sample, again)  # the blocks do not change the draw
    other, _ = concepts_lists._training_vectors(source, 250, seed=6, block_rows=7)
    assert not np.array_equal(sample, other)
    every, _ = concepts_lists._training_vectors(source, 10_000, seed=5, block_rows=7)
    np.testing.assert_array_equal(every, real)
