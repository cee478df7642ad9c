"""Centroid interaction (index/first_stage/interaction.py) against a per-pair computation."""

import numpy as np
import pytest

from lateint.index.first_stage import (
    ArraySource,
    add,
    build_stages,
    delete,
    open_first_stage,
    synthetic,
)

NUM_IMAGES = 300


@pytest.fixture(scope="module")
def corpus():
    """Clustered images [300, 6 regions, 16 dims] and 12 queries of up to 7 words."""
    topics = synthetic.topics(60, 16, seed=3)
    data = synthetic.images(topics, NUM_IMAGES, 6, min_regions=1, seed=4)
    queries, _ = synthetic.queries(data, topics, 12, 7, seed=5)
    return data, queries


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("interaction"))
    build_stages(index_dir, ArraySource(*corpus[0]), ["concepts"], {"concepts": {"seed": 1}})
    return index_dir


def reference_scores(stage, data, queries, weighted):
    """[Q, N] by definition: per word, the max over the image's distinct centroids c of
    word·c (times the best cosine of the image's regions assigned to c when weighted)."""
    centroids = stage.centroids
    result = np.zeros((queries.mask.shape[0], data.concepts.shape[0]), np.float32)
    for image in range(data.concepts.shape[0]):
        regions = data.concepts[image][data.region_mask[image]]
        if not len(regions):
            continue
        cosines = regions @ centroids.T
        assigned = cosines.argmax(axis=1)
        best = {}
        for region, centroid in enumerate(assigned):
            best[centroid] = max(best.get(centroid, -np.inf), cosines[region, centroid])
        for query in range(queries.mask.shape[0]):
            words = queries.concepts[query][queries.mask[query]]
            values = np.array(
                [
                    [word @ centroids[c] * (w if weighted else 1.0) for c, w in best.items()]
                    for word in words
                ]
            ).reshape(len(words), -1)
            result[query, image] = values.max(axis=1).sum() if len(words) else 0.0
    return result


def test_forward_index_is_the_transpose_of_the_lists(built):
    stage = open_first_stage(built, "concepts", rescore="centroid")
    forward, lists = stage.forward, stage.lists
    pairs = {
        (int(image), k, float(weight))
        for k in range(lists.num_lists)
        for image, weight in zip(
            lists.images[lists.offsets[k] : lists.offsets[k + 1]],
            lists.weights[lists.offsets[k] : lists.offsets[k + 1]],
        )
    }
    transposed = {
        (image, int(c), float(w))
        for image in range(NUM_IMAGES)
        for c, w in zip(
            forward.centroids[image, : forward.counts[image]],
            forward.weights[image, : forward.counts[image]],
        )
    }
    # Padding: centroid K (one past the last list), weight 1.
    padding = np.arange(forward.centroids.shape[1]) >= forward.counts[:, None]
    assert (forward.centroids[padding] == lists.num_lists).all()
    assert (forward.weights[padding] == 1.0).all()
    assert pairs == transposed and len(pairs) == lists.num_postings


@pytest.mark.parametrize("mode", ["centroid", "weighted"])
def test_rescored_candidates_carry_the_interaction_score(corpus, built, mode):
    data, queries = corpus
    stage = open_first_stage(built, "concepts", nprobe=2, rescore=mode)
    plain = open_first_stage(built, "concepts", nprobe=2)
    reference = reference_scores(stage, data, queries, mode == "weighted")
    ids, scores = stage.search(queries, NUM_IMAGES)
    plain_ids, _ = plain.search(queries, NUM_IMAGES)
    for row in range(ids.shape[0]):
        found = ids[row][ids[row] >= 0]
        # The same candidates as the lists (those reached by a probed centroid) ...
        assert set(found.tolist()) == set(plain_ids[row][plain_ids[row] >= 0].tolist())
        # ... each with its interaction score, best first, ties by the smaller id.
        np.testing.assert_allclose(scores[row, : found.size], reference[row, found], atol=1e-5)
        order = np.lexsort((found, -reference[row, found]))
        expected = reference[row, found[order]]
        np.testing.assert_allclose(scores[row, : found.size], expected, atol=1e-5)
    # Rescoring reorders: the interaction sees centroids the words did not probe.
    assert not np.array_equal(ids, plain_ids)


def test_weighted_with_every_centroid_probed_equals_the_list_score(corpus, built):
    data, queries = corpus
    everything = open_first_stage(built, "concepts").centroids.shape[0]
    plain = open_first_stage(built, "concepts", nprobe=everything)
    rescored = open_first_stage(built, "concepts", nprobe=everything, rescore="weighted")
    ids, scores = plain.search(queries, 50)
    rescored_ids, rescored_scores = rescored.search(queries, 50)
    np.testing.assert_allclose(rescored_scores, scores, atol=1e-5)
    # Ids agree wherever the score is not tied with a neighbour's.
    untied = np.abs(np.diff(scores, axis=1)) > 1e-4
    assert np.mean(ids[:, :-1][untied] == rescored_ids[:, :-1][untied]) > 0.99


def test_depth_rescores_only_the_list_top(corpus, built):
    data, queries = corpus
    stage = open_first_stage(built, "concepts", nprobe=2, rescore="weighted", depth=20)
    plain = open_first_stage(built, "concepts", nprobe=2)
    reference = reference_scores(stage, data, queries, True)
    ids, scores = stage.search(queries, 40)
    plain_ids, _ = plain.search(queries, 20)
    for row in range(ids.shape[0]):
        found = ids[row][ids[row] >= 0]
        assert set(found.tolist()) == set(plain_ids[row][plain_ids[row] >= 0].tolist())
        np.testing.assert_allclose(scores[row, : found.size], reference[row, found], atol=1e-5)


def test_rescoring_follows_adds_and_deletes(corpus, tmp_path):
    data, queries = corpus
    first = 200
    head = synthetic.SyntheticImages(*(part[:first] for part in data))
    tail = synthetic.SyntheticImages(*(part[first:] for part in data))
    build_stages(str(tmp_path), ArraySource(*head), ["concepts"], {"concepts": {"seed": 1}})
    add(str(tmp_path), ArraySource(*tail), first)
    deleted = [3, 250]
    delete(str(tmp_path), deleted)
    stage = open_first_stage(str(tmp_path), "concepts", nprobe=3, rescore="weighted")
    reference = reference_scores(stage, data, queries, True)
    ids, scores = stage.search(queries, NUM_IMAGES)
    assert not np.isin(ids, deleted).any()
    assert (ids >= first).any()
    for row in range(ids.shape[0]):
        found = ids[row][ids[row] >= 0]
        np.testing.assert_allclose(scores[row, : found.size], reference[row, found], atol=1e-5)


def test_bad_rescore_settings_are_refused(built):
    with pytest.raises(ValueError, match="rescore expected one of"):
        open_first_stage(built, "concepts", rescore="plaid")
    with pytest.raises(ValueError, match="depth expected a positive int"):
        open_first_stage(built, "concepts", rescore="weighted", depth=0)
