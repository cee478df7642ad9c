"""'refined': the global top P reranked by int8 MaxSim (index/first_stage/exact.py)."""

import numpy as np
import pytest

from lateint import scoring
from lateint.index.first_stage import ArraySource, build_stages, delete, open_first_stage, synthetic
from lateint.index.first_stage import exact as exact_stage

NUM_IMAGES = 400


@pytest.fixture(scope="module")
def corpus():
    """Clustered images [400, 6 regions, 24 dims] and 20 queries of up to 8 words."""
    topics = synthetic.topics(80, 24, seed=7)
    data = synthetic.images(topics, NUM_IMAGES, 6, min_regions=1, seed=8)
    queries, _ = synthetic.queries(data, topics, 20, 8, seed=9)
    return data, queries


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("refined"))
    build_stages(index_dir, ArraySource(*corpus[0]), ["exact"])
    return index_dir


def dequantized_maxsim(data, queries):
    """[Q, N] MaxSim over the int8 codes times their scales (what 'refined' ranks by)."""
    codes, scale = exact_stage.quantize_int8(data.concepts)
    regions = codes.astype(np.float32) * scale[..., None]
    return np.asarray(scoring.maxsim(queries.concepts, queries.mask, regions, data.region_mask))


def test_quantization_error_is_at_most_half_a_step(corpus):
    data, _ = corpus
    codes, scale = exact_stage.quantize_int8(data.concepts)
    error = np.abs(codes.astype(np.float32) * scale[..., None] - data.concepts)
    assert (error <= scale[..., None] / 2 + 1e-7).all()
    assert np.abs(codes).max() == 127


def test_a_pool_of_every_image_ranks_by_int8_maxsim(corpus, built):
    data, queries = corpus
    stage = open_first_stage(built, "refined")
    ids, scores = stage.search(queries, 30, pool=NUM_IMAGES)
    reference = dequantized_maxsim(data, queries)
    for row in range(ids.shape[0]):
        order = np.lexsort((np.arange(NUM_IMAGES), -reference[row]))[:30]
        np.testing.assert_allclose(scores[row], reference[row, order], rtol=1e-5, atol=1e-5)
        untied = np.abs(np.diff(reference[row, order])) > 1e-5
        assert (ids[row][:-1][untied] == order[:-1][untied]).all()
    # ... which is exact MaxSim up to the quantization: the top 10 agree almost everywhere.
    exact_ids, _ = open_first_stage(built, "exact").search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids[:, :10], exact_ids)])
    assert overlap >= 0.95


def test_results_come_from_the_global_top_pool(corpus, built):
    _, queries = corpus
    global_ids, _ = open_first_stage(built, "exact_global").search(queries, 40)
    ids, _ = open_first_stage(built, "refined").search(queries, 25, pool=40)
    for row in range(ids.shape[0]):
        assert set(ids[row].tolist()) <= set(global_ids[row].tolist())
    # A pool smaller than n pads with -1.
    small, small_scores = open_first_stage(built, "refined").search(queries, 25, pool=10)
    assert ((small >= 0).sum(axis=1) == 10).all() and np.isneginf(small_scores[:, 10:]).all()


def test_deleted_images_never_return(corpus, tmp_path):
    data, queries = corpus
    build_stages(str(tmp_path), ArraySource(*data), ["exact"])
    first, _ = open_first_stage(str(tmp_path), "refined").search(queries, 5, pool=NUM_IMAGES)
    deleted = np.unique(first[:, 0])
    delete(str(tmp_path), deleted)
    after, _ = open_first_stage(str(tmp_path), "refined").search(queries, 50, pool=NUM_IMAGES)
    assert not np.isin(after, deleted).any()


def test_pool_rule():
    assert [exact_stage.pool_for(n) for n in (300, 1000, 10_000, 100_000, 10**6, 10**8)] == [
        300,
        512,
        512,
        1024,
        4096,
        4096,
    ]


def test_quantizing_from_a_reader_block_by_block_equals_the_whole_array(corpus, built, monkeypatch):
    """'refined' loaded from the stage's TensorStore arrays (concepts read 64 images at a time,
    400 = 6 blocks and a partial one) holds the codes of the whole array and answers alike."""
    data, queries = corpus
    monkeypatch.setattr(exact_stage, "QUANTIZE_BLOCK", 64)
    reads = []

    def reader(start, stop):
        reads.append((start, stop))
        return data.concepts[start:stop]

    codes, scale = exact_stage.quantize_rows(reader, NUM_IMAGES)
    whole_codes, whole_scale = exact_stage.quantize_int8(data.concepts)
    np.testing.assert_array_equal(codes, whole_codes)
    np.testing.assert_array_equal(scale, whole_scale)
    assert max(stop - start for start, stop in reads) == 64 and reads[-1] == (384, 400)
    loaded = open_first_stage(built, "refined")  # ExactStage.load: concepts from a reader
    in_memory = exact_stage.ExactStage(
        {"concepts": data.concepts, "region_mask": data.region_mask, "global": data.global_vectors},
        np.zeros(NUM_IMAGES, bool),
        loaded.record,
        "refined",
    )
    assert loaded.nbytes == in_memory.nbytes
    for one, other in zip(loaded.search(queries, 10), in_memory.search(queries, 10)):
        np.testing.assert_array_equal(one, other)
