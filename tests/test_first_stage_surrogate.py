"""Surrogate text (scalar quantization, deep permutations) and the exact stages."""

import numpy as np
import pytest

from lateint import retrieval_metrics, scoring
from lateint.index import store
from lateint.index.first_stage import (
    ArraySource,
    QuerySide,
    add,
    build_stages,
    delete,
    exact,
    open_first_stage,
    records,
    surrogate,
    synthetic,
)

NUM_IMAGES = 240
DIM = 24


@pytest.fixture(scope="module")
def corpus():
    topics = synthetic.topics(40, DIM, seed=0)
    data = synthetic.images(topics, NUM_IMAGES, 5, min_regions=0, seed=1)
    queries, _ = synthetic.queries(data, topics, 16, 6, seed=2)
    return data, queries


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("surrogate"))
    build_stages(index_dir, ArraySource(*corpus[0]), ["sq", "permutation", "exact"])
    return index_dir


def subset(data, images):
    return synthetic.SyntheticImages(
        data.concepts[images], data.region_mask[images], data.global_vectors[images]
    )


def dense_frequencies(vectors, kind, size, quantization=0):
    """Reference term frequencies [B, 2C], row by row in plain Python."""
    result = np.zeros((vectors.shape[0], 2 * vectors.shape[1]))
    for row, vector in enumerate(vectors):
        values = np.concatenate([np.maximum(vector, 0), np.maximum(-vector, 0)])
        ranked = sorted(range(values.size), key=lambda term: -values[term])[:size]
        for position, term in enumerate(ranked):
            if kind == "sq":
                result[row, term] = np.floor(quantization * values[term])
            elif values[term] > 0:
                result[row, term] = size - position
    return result


def reference_top(scores, allowed, n):
    rows = []
    for row in scores:
        candidates = np.flatnonzero(allowed(row))
        order = np.lexsort((candidates, -row[candidates]))
        rows.append(
            np.pad(candidates[order][:n], (0, max(0, n - candidates.size)), constant_values=-1)
        )
    return np.array(rows)


@pytest.mark.parametrize("kind, size, quantization", [("sq", 10, 64), ("permutation", 8, 0)])
def test_surrogate_terms_match_reference(rng, kind, size, quantization):
    vectors = rng.standard_normal((20, DIM)).astype(np.float32)
    rows, terms, frequencies = surrogate.surrogate_terms(vectors, kind, size, quantization)
    dense = np.zeros((20, 2 * DIM))
    dense[rows, terms] = frequencies
    np.testing.assert_array_equal(dense, dense_frequencies(vectors, kind, size, quantization))
    assert frequencies.dtype == np.uint16 and (frequencies > 0).all()


@pytest.mark.parametrize("kind", ["sq", "permutation"])
def test_search_equals_brute_force_surrogate_scores(corpus, built, kind):
    data, queries = corpus
    stage = open_first_stage(built, kind)
    parameters = stage.parameters
    documents = dense_frequencies(
        data.global_vectors, kind, parameters["size"], parameters["quantization"]
    )
    query_terms = dense_frequencies(
        queries.global_vector, kind, parameters["query_size"], parameters["quantization"]
    )
    scores = query_terms @ documents.T  # [Q, N]
    ids, got = stage.search(queries, 30)
    np.testing.assert_array_equal(ids, reference_top(scores, lambda row: row > 0, 30))
    np.testing.assert_array_equal(got[ids >= 0], np.take_along_axis(scores, ids, 1)[ids >= 0])


@pytest.mark.parametrize("kind, minimum", [("sq", 0.95), ("permutation", 0.9)])
def test_recall_against_exact_global(corpus, built, kind, minimum):
    _, queries = corpus
    reference, _ = open_first_stage(built, "exact_global").search(queries, 10)
    ids, _ = open_first_stage(built, kind).search(queries, 60)
    assert retrieval_metrics.first_stage_recall(ids, reference) >= minimum


def test_exact_stages_equal_references(corpus, built):
    data, queries = corpus
    maxsim = np.asarray(
        scoring.maxsim(queries.concepts, queries.mask, data.concepts, data.region_mask)
    )
    ids, scores = open_first_stage(built, "exact").search(queries, NUM_IMAGES + 3)
    np.testing.assert_array_equal(
        ids[:, :NUM_IMAGES], reference_top(maxsim, lambda row: row == row, NUM_IMAGES)
    )
    np.testing.assert_allclose(
        scores[:, :NUM_IMAGES], -np.sort(-maxsim, axis=1), rtol=1e-6, atol=1e-6
    )
    assert (ids[:, NUM_IMAGES:] == -1).all() and np.isneginf(scores[:, NUM_IMAGES:]).all()
    # An image without regions is still a (last) candidate of exact MaxSim.
    empty = np.flatnonzero(~data.region_mask.any(axis=1))
    assert empty.size and np.isin(ids[0, -3 - empty.size : -3], empty).all()
    dots = queries.global_vector @ data.global_vectors.T
    ids, scores = open_first_stage(built, "exact_global").search(queries, 25)
    np.testing.assert_array_equal(ids, reference_top(dots, lambda row: row == row, 25))


@pytest.mark.parametrize("kind", ["sq", "permutation", "exact", "exact_global"])
def test_add_and_delete_equal_rebuild(corpus, tmp_path, kind):
    data, queries = corpus
    built_name = "exact" if kind == "exact_global" else kind
    incremental = str(tmp_path / "incremental")
    build_stages(incremental, ArraySource(*subset(data, np.arange(100))), [built_name])
    add(incremental, ArraySource(*subset(data, np.arange(100, 170))), 100)
    add(incremental, ArraySource(*subset(data, np.arange(170, NUM_IMAGES))), 170)
    deleted = np.random.default_rng(4).choice(NUM_IMAGES, 30, replace=False)
    delete(incremental, deleted)
    kept = np.setdiff1d(np.arange(NUM_IMAGES), deleted)
    rebuilt = str(tmp_path / "rebuilt")
    build_stages(rebuilt, ArraySource(*subset(data, kept)), [built_name])
    got_ids, got_scores = open_first_stage(incremental, kind).search(queries, 40)
    ids, scores = open_first_stage(rebuilt, kind).search(queries, 40)
    assert not np.isin(got_ids, deleted).any()
    np.testing.assert_array_equal(got_ids, np.where(ids >= 0, kept[np.maximum(ids, 0)], -1))
    np.testing.assert_array_equal(got_scores, scores)


def test_exact_add_compacts_rows_left_by_a_killed_add(corpus, tmp_path):
    data, queries = corpus
    index_dir = str(tmp_path)
    build_stages(index_dir, ArraySource(*subset(data, np.arange(100))), ["exact"])
    base = "first_stage/exact/g0"
    stale = subset(data, np.arange(150, 160))  # rows appended, record never committed
    for name, rows in zip(exact.ARRAYS, stale):
        store.append_array(index_dir, f"{base}/{name}", rows)
    assert open_first_stage(index_dir, "exact").num_images == 100
    add(index_dir, ArraySource(*subset(data, np.arange(100, NUM_IMAGES))), 100)
    assert records.read_record(index_dir, "exact")["generation"] == 1
    rebuilt = str(tmp_path / "rebuilt")
    build_stages(rebuilt, ArraySource(*data), ["exact"])
    for got, expected in zip(
        open_first_stage(index_dir, "exact").search(queries, 20),
        open_first_stage(rebuilt, "exact").search(queries, 20),
    ):
        np.testing.assert_array_equal(got, expected)


def test_bad_parameters_and_queries(corpus, built, tmp_path):
    data, queries = corpus
    with pytest.raises(ValueError, match="quantization expected in"):
        build_stages(str(tmp_path), ArraySource(*data), ["sq"], {"sq": {"quantization": 9999}})
    with pytest.raises(ValueError, match=r"global_vector expected \(16, 24\)"):
        open_first_stage(built, "sq").search(
            QuerySide(queries.concepts, queries.mask, queries.global_vector[:3]), 5
        )
    with pytest.raises(ValueError, match="stage names expected"):
        open_first_stage(built, "bm25")
    with pytest.raises(FileNotFoundError, match="'concepts' is not built"):
        open_first_stage(built, "concepts")
