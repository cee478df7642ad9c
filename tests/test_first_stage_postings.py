"""Inverted lists (CSR build, merge, gather), on-disk generations with deltas, top-n, tombstones."""

import os

import numpy as np
import pytest

from lateint.index.first_stage import postings, query, records, tombstones


def random_postings(rng, num_lists=7, num_images=40, first_image=0):
    """Distinct (list, image) pairs with float weights, in random order."""
    pairs = rng.random((num_images, num_lists)) < 0.3
    images, lists = np.nonzero(pairs)
    order = rng.permutation(images.size)
    return (lists[order], first_image + images[order], rng.random(images.size).astype(np.float32))


def reference_lists(lists, images, weights, num_lists):
    """{list: [(image, weight), ...] ascending by image}, by plain Python."""
    table = {k: [] for k in range(num_lists)}
    for k, image, weight in zip(lists, images, weights):
        table[int(k)].append((int(image), float(weight)))
    return {k: sorted(value) for k, value in table.items()}


def as_table(inverted):
    return {
        k: list(
            zip(
                inverted.images[inverted.offsets[k] : inverted.offsets[k + 1]].tolist(),
                inverted.weights[inverted.offsets[k] : inverted.offsets[k + 1]].tolist(),
            )
        )
        for k in range(inverted.num_lists)
    }


def assert_same_lists(left, right):
    np.testing.assert_array_equal(left.offsets, right.offsets)
    np.testing.assert_array_equal(left.images, right.images)
    np.testing.assert_array_equal(left.weights, right.weights)


def test_from_postings_matches_reference(rng):
    columns = random_postings(rng)
    inverted = postings.InvertedLists.from_postings(*columns, 7)
    assert as_table(inverted) == reference_lists(*columns, 7)
    assert inverted.offsets[0] == 0 and inverted.offsets[-1] == columns[0].size
    assert inverted.images.dtype == np.int32 and inverted.weights.dtype == np.float32


def test_from_postings_rejects_bad_input():
    with pytest.raises(ValueError, match="posts twice"):
        postings.InvertedLists.from_postings([1, 1], [3, 3], [0.5, 0.5], 2)
    with pytest.raises(ValueError, match=r"list ids expected in \[0, 2\)"):
        postings.InvertedLists.from_postings([2], [0], [0.5], 2)
    with pytest.raises(ValueError, match="equal"):
        postings.InvertedLists.from_postings([0, 1], [0], [0.5], 2)


def test_merge_equals_build_of_union(rng):
    early = random_postings(rng, num_images=30)
    late = random_postings(rng, num_images=20, first_image=30)
    merged = postings.InvertedLists.from_postings(*early, 7).merge(
        postings.InvertedLists.from_postings(*late, 7)
    )
    union = [np.concatenate(pair) for pair in zip(early, late)]
    assert_same_lists(merged, postings.InvertedLists.from_postings(*union, 7))
    with pytest.raises(ValueError, match="must all exceed"):
        postings.InvertedLists.from_postings(*late, 7).merge(
            postings.InvertedLists.from_postings(*early, 7)
        )


def test_gather_returns_every_posting_of_the_probed_lists(rng):
    inverted = postings.InvertedLists.from_postings(*random_postings(rng), 7)
    probed = np.array([3, 0, 3, 6])
    probe, images, weights = inverted.gather(probed)
    table = as_table(inverted)
    expected = [(p, image, weight) for p, k in enumerate(probed) for image, weight in table[k]]
    assert list(zip(probe.tolist(), images.tolist(), weights.tolist())) == expected


def test_top_per_query_orders_breaks_ties_and_pads():
    query_index = np.array([0, 0, 0, 0, 1, 2, 2])
    image = np.array([9, 4, 7, 1, 5, 3, 8])
    score = np.array([1.0, 2.0, 2.0, -1.0, 0.5, -0.0, 0.0], np.float32)
    ids, scores = query.top_per_query(query_index, image, score, 4, 3)
    np.testing.assert_array_equal(ids, [[4, 7, 9], [5, -1, -1], [8, 3, -1], [-1, -1, -1]])
    assert scores[0].tolist() == [2.0, 2.0, 1.0] and np.isneginf(scores[1, 1:]).all()
    # Same answer whatever the input order.
    order = np.random.default_rng(3).permutation(7)
    again = query.top_per_query(query_index[order], image[order], score[order], 4, 3)
    np.testing.assert_array_equal(again[0], ids)


def test_top_dense_matches_full_sort(rng):
    scores = rng.integers(0, 4, size=(5, 50)).astype(np.float32)  # many ties
    hits = rng.random((5, 50)) < 0.7
    ids, top = query.top_dense(scores, hits, 12)
    for row in range(5):
        candidates = [(-scores[row, i], i) for i in np.flatnonzero(hits[row])]
        expected = [i for _, i in sorted(candidates)[:12]]
        assert ids[row, : len(expected)].tolist() == expected
        assert (ids[row, len(expected) :] == -1).all()


def committed(index_dir, record):
    records.write_record(index_dir, "test", dict(record, state="ready"))
    return records.read_record(index_dir, "test")


def test_delta_appends_then_compaction_equal_full_build(tmp_path, rng, monkeypatch):
    index_dir, prefix = str(tmp_path), "first_stage/test/lists"
    parts = [random_postings(rng, num_images=30, first_image=30 * part) for part in range(4)]
    record = committed(
        index_dir,
        postings.write_base(
            index_dir, prefix, 0, postings.InvertedLists.from_postings(*parts[0], 7)
        ),
    )
    record = committed(index_dir, postings.append_postings(index_dir, prefix, record, *parts[1]))
    assert record["generation"] == 0 and record["delta_postings"] == parts[1][0].size
    record = committed(index_dir, postings.append_postings(index_dir, prefix, record, *parts[2]))
    assert record["generation"] == 0  # still a delta
    monkeypatch.setattr(postings, "MIN_COMPACT_POSTINGS", 0)
    record = committed(index_dir, postings.append_postings(index_dir, prefix, record, *parts[3]))
    assert record["generation"] == 1 and record["delta_postings"] == 0
    postings.remove_stale_generations(index_dir, prefix, 1)
    assert sorted(os.listdir(records.folder(index_dir, prefix))) == ["g1"]
    union = [np.concatenate(column) for column in zip(*parts)]
    assert_same_lists(
        postings.read_lists(index_dir, prefix, record),
        postings.InvertedLists.from_postings(*union, 7),
    )


def test_uncommitted_delta_rows_are_ignored_then_compacted(tmp_path, rng):
    index_dir, prefix = str(tmp_path), "first_stage/test/lists"
    first, lost, retried = (
        random_postings(rng, num_images=20, first_image=20 * part) for part in range(3)
    )
    record = committed(
        index_dir,
        postings.write_base(index_dir, prefix, 0, postings.InvertedLists.from_postings(*first, 7)),
    )
    postings.append_postings(index_dir, prefix, record, *lost)  # killed before its commit
    assert_same_lists(
        postings.read_lists(index_dir, prefix, record),
        postings.InvertedLists.from_postings(*first, 7),
    )
    # The retried add reuses the same image ids; the stale rows must not survive.
    retried = (retried[0], retried[1] - 20, retried[2])
    record = committed(index_dir, postings.append_postings(index_dir, prefix, record, *retried))
    assert record["generation"] == 1
    union = [np.concatenate(pair) for pair in zip(first, retried)]
    assert_same_lists(
        postings.read_lists(index_dir, prefix, record),
        postings.InvertedLists.from_postings(*union, 7),
    )


def test_tombstones(tmp_path):
    index_dir = str(tmp_path)
    assert tombstones.read_deleted(index_dir).size == 0
    assert tombstones.delete(index_dir, np.array([5, 2, 5]), 10) == 2
    assert tombstones.delete(index_dir, np.array([2, 7]), 10) == 1
    assert tombstones.delete(index_dir, np.array([7]), 10) == 0
    np.testing.assert_array_equal(tombstones.read_deleted(index_dir), [2, 5, 7])
    np.testing.assert_array_equal(np.flatnonzero(tombstones.bitmap(index_dir, 12)), [2, 5, 7])
    with pytest.raises(IndexError, match=r"\[10\] outside \[0, 10\)"):
        tombstones.delete(index_dir, np.array([10]), 10)
    with pytest.raises(ValueError, match="1-D integer"):
        tombstones.delete(index_dir, np.array([1.5]), 10)
    folder = records.folder(index_dir, tombstones.PREFIX)
    assert sorted(entry for entry in os.listdir(folder) if entry.startswith("g")) == ["g1"]


def test_record_refuses_interrupted_build(tmp_path):
    index_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="not built"):
        records.read_record(index_dir, "concepts")
    records.mark_building(index_dir, "concepts", {})
    with pytest.raises(RuntimeError, match="'state' expected 'ready', got 'building'"):
        records.read_record(index_dir, "concepts")


def test_reading_some_images_postings_block_by_block_equals_keeping_them(
    tmp_path, rng, monkeypatch
):
    """read_lists(kept=) (a sharded server's process: only its rows, READ_POSTINGS at a time)
    equals the whole CSR cut with InvertedLists.keep, base and delta alike."""
    index_dir, prefix = str(tmp_path), "first_stage/test/lists"
    parts = [random_postings(rng, num_images=30, first_image=30 * part) for part in range(2)]
    record = committed(
        index_dir,
        postings.write_base(
            index_dir, prefix, 0, postings.InvertedLists.from_postings(*parts[0], 7)
        ),
    )
    record = committed(index_dir, postings.append_postings(index_dir, prefix, record, *parts[1]))
    assert record["delta_postings"] > 0
    monkeypatch.setattr(postings, "READ_POSTINGS", 5)  # many blocks, some keeping nothing
    whole = postings.read_lists(index_dir, prefix, record)
    for kept in (np.arange(60) % 3 == 0, np.arange(60) >= 45, np.zeros(60, bool)):
        got = postings.read_lists(index_dir, prefix, record, kept)
        assert_same_lists(got, whole.keep(kept))
        assert set(got.images.tolist()) == set(whole.images[kept[whole.images]].tolist())
    assert_same_lists(postings.read_lists(index_dir, prefix, record, np.ones(60, bool)), whole)
