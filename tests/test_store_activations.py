"""ActivationStore: create, write (staged, bounded in flight), journal, finalize, open, gather."""

import json

import numpy as np
import pytest

from lateint.index import manifest
from lateint.index.store import ActivationStore

N, R, H, C = 37, 5, 12, 6
SHARD = 8


def _corpus(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "activations": rng.standard_normal((N, R, H)).astype(np.float32),
        "region_mask": rng.random((N, R)) < 0.7,
        "concepts": rng.standard_normal((N, R, C)).astype(np.float32),
        "global": rng.standard_normal((N, C)).astype(np.float32),
    }


def _create(directory, storage_dtype="float32", **options):
    return ActivationStore.create(
        str(directory),
        image_ids=[f"image-{i}" for i in range(N)],
        regions=R,
        hidden=H,
        concept_dim=C,
        model_fingerprint="fp-1",
        split_layer=2,
        storage_dtype=storage_dtype,
        shard_rows=SHARD,
        source={"data": "scenes", "split": "dev"},
        **options,
    )


def _write(store, corpus, batch, order=None):
    starts = list(range(0, N, batch))
    for start in order(starts) if order else starts:
        store.write_batch(
            start, {key: value[start : start + batch] for key, value in corpus.items()}
        )


def _build(directory, corpus, storage_dtype="float32", batch=5, **options):
    store = _create(directory, storage_dtype, **options)
    _write(store, corpus, batch)
    for start, stop in store.pending_ranges():
        store.mark_completed(start, stop)
    return store.finalize()


@pytest.mark.parametrize(
    "storage_dtype, tolerance", [("float32", 0.0), ("bfloat16", 2.0**-8), ("int8", 1 / 254)]
)
def test_round_trip_each_mode(tmp_path, storage_dtype, tolerance):
    corpus = _corpus()
    final = _build(tmp_path, corpus, storage_dtype)
    assert final["complete"] and final["counts"]["regions"] == int(corpus["region_mask"].sum())
    stored = json.loads((tmp_path / "activations" / "zarr.json").read_text())
    assert stored["data_type"] == storage_dtype and stored["shape"] == [N, R, H]
    assert (tmp_path / "activation_scale").exists() == (storage_dtype == "int8")
    reader = ActivationStore.open(str(tmp_path))
    ids = np.array([36, 0, 8, 8, 17, 7])  # unsorted, repeated, across shards, last row
    activations, mask = reader.gather(ids)
    assert activations.dtype == np.float32 and activations.shape == (6, R, H)
    expected = corpus["activations"][ids]
    scale = np.abs(expected).max(-1, keepdims=True) if storage_dtype == "int8" else np.abs(expected)
    assert np.all(np.abs(activations - expected) <= tolerance * scale * (1 + 1e-5))
    np.testing.assert_array_equal(mask, corpus["region_mask"][ids])
    concepts, concept_mask = reader.gather_concepts(ids)
    np.testing.assert_array_equal(concepts, corpus["concepts"][ids])
    np.testing.assert_array_equal(concept_mask, corpus["region_mask"][ids])
    np.testing.assert_array_equal(reader.read_concepts(3, 20), corpus["concepts"][3:20])
    np.testing.assert_array_equal(reader.read_global(0, N), corpus["global"])
    np.testing.assert_array_equal(reader.read_region_mask(30, 37), corpus["region_mask"][30:])
    assert list(reader.blocks(16)) == [(0, 16), (16, 32), (32, 37)]
    assert reader.image_ids[36] == "image-36"
    empty, empty_mask = reader.gather(np.zeros(0, np.int64))
    assert empty.shape == (0, R, H) and empty_mask.shape == (0, R)


def test_bfloat16_concepts(tmp_path):
    corpus = _corpus()
    _build(tmp_path, corpus, "bfloat16", concepts_dtype="bfloat16")
    reader = ActivationStore.open(str(tmp_path))
    concepts = reader.read_concepts(0, N)
    assert concepts.dtype == np.float32
    assert np.all(np.abs(concepts - corpus["concepts"]) <= np.abs(corpus["concepts"]) * 2.0**-8)


def test_tiny_inflight_budget_and_any_write_order(tmp_path):
    corpus = _corpus(1)
    store = _create(tmp_path, "int8", inflight_bytes=64)  # smaller than any single write
    _write(store, corpus, 3, order=lambda starts: starts[::-1])  # batches straddle shards
    # One write at a time: the largest single write is one shard of float32 concepts.
    assert store.peak_inflight_bytes == SHARD * R * C * 4
    for start, stop in store.pending_ranges(unit_rows=2 * SHARD):
        store.mark_completed(start, stop)
    store.finalize()
    reference = tmp_path / "reference"
    _build(reference, corpus, "int8", batch=N)
    first, second = ActivationStore.open(str(tmp_path)), ActivationStore.open(str(reference))
    everything = np.arange(N)
    for left, right in zip(first.gather(everything), second.gather(everything)):
        np.testing.assert_array_equal(left, right)


def test_rewritten_rows_keep_the_latest_values(tmp_path):
    corpus, stale = _corpus(3), _corpus(4)
    store = _create(tmp_path)
    store.write_batch(0, {key: value[:5] for key, value in stale.items()})  # staged, partial
    store.write_batch(0, {key: value[:N] for key, value in corpus.items()})  # whole shards
    store.write_batch(36, {key: value[36:] for key, value in stale.items()})  # staged again
    store.write_batch(32, {key: value[32:] for key, value in corpus.items()})  # replaces it
    store.mark_completed(0, N)
    store.finalize()
    activations, mask = ActivationStore.open(str(tmp_path)).gather(np.arange(N))
    np.testing.assert_array_equal(activations, corpus["activations"])
    np.testing.assert_array_equal(mask, corpus["region_mask"])


def test_journal_resume_and_incomplete_refusal(tmp_path):
    corpus = _corpus(2)
    store = _create(tmp_path, "bfloat16")
    assert store.pending_ranges(unit_rows=16) == [(0, 16), (16, 32), (32, 37)]
    _write(store, corpus, SHARD)
    store.mark_completed(0, 16)
    with pytest.raises(ValueError, match="shard-aligned"):
        store.mark_completed(16, 20)
    with pytest.raises(RuntimeError, match=r"\[\(16, 37\)\] .* never marked completed"):
        store.finalize()
    with pytest.raises(manifest.IncompleteIndexError, match="'complete' is false.*16 of 37"):
        ActivationStore.open(str(tmp_path))
    resumed = ActivationStore.resume(str(tmp_path))
    assert resumed.completed_ranges() == [(0, 16)]
    assert resumed.pending_ranges() == [(16, 24), (24, 32), (32, 37)]
    for start, stop in resumed.pending_ranges():
        resumed.write_batch(start, {key: value[start:stop] for key, value in corpus.items()})
        resumed.mark_completed(start, stop)
    resumed.finalize()
    activations, _ = ActivationStore.open(str(tmp_path)).gather(np.arange(N))
    assert np.abs(activations - corpus["activations"]).max() > 0  # bf16 really stored
    with pytest.raises(FileExistsError, match="already complete"):
        ActivationStore.resume(str(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _create(tmp_path)


def test_missing_manifest_is_refused(tmp_path):
    _build(tmp_path, _corpus())
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(manifest.IncompleteIndexError, match="manifest.json is missing"):
        ActivationStore.open(str(tmp_path))


def test_manifest_disagreeing_with_arrays_is_refused(tmp_path):
    final = _build(tmp_path, _corpus())
    final["shapes"]["hidden"] = H + 1
    manifest.write_manifest(str(tmp_path), final)
    with pytest.raises(ValueError, match=r"'activations' .* expected \(\(37, 5, 13\), .*got"):
        ActivationStore.open(str(tmp_path))


def test_overwrite_starts_fresh(tmp_path):
    _build(tmp_path, _corpus(), "int8")
    (tmp_path / "first_stage").mkdir()
    store = _create(tmp_path, "float32", overwrite=True)
    assert store.pending_ranges() == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]
    assert not (tmp_path / "activation_scale").exists() and not (tmp_path / "first_stage").exists()


def test_bad_ids_and_batches(tmp_path):
    corpus = _corpus()
    _build(tmp_path, corpus)
    reader = ActivationStore.open(str(tmp_path))
    with pytest.raises(IndexError, match=r"image ids \[37, -1\] outside \[0, 37\)"):
        reader.gather([3, 37, -1])
    with pytest.raises(ValueError, match="1-D integer array"):
        reader.gather(np.array([[1, 2]]))
    with pytest.raises(ValueError, match="1-D integer array"):
        reader.gather(np.array([1.0]))
    with pytest.raises(IndexError, match=r"rows \[30, 40\) outside \[0, 37\)"):
        reader.read_concepts(30, 40)
    with pytest.raises(PermissionError, match="read-only"):
        reader.write_batch(0, corpus)
    writer = _create(tmp_path / "other")
    batch = {key: value[:4] for key, value in corpus.items()}
    with pytest.raises(ValueError, match=r"'concepts' shape expected \(4, 5, 6\), got \(4, 5, 7\)"):
        writer.write_batch(0, dict(batch, concepts=np.zeros((4, R, C + 1), np.float32)))
    with pytest.raises(ValueError, match="keys expected"):
        writer.write_batch(0, {"activations": batch["activations"]})
    with pytest.raises(IndexError, match=r"rows \[35, 39\) outside \[0, 37\)"):
        writer.write_batch(35, batch)


def test_range_reads_in_blocks_equal_the_written_rows(tmp_path, monkeypatch):
    """Ranges longer than READ_BLOCK_ROWS are read block by block (7 rows here, across shard
    boundaries, the last block partial) into one array equal to what was written."""
    from lateint.index import store as store_module

    corpus = _corpus(seed=4)
    _build(tmp_path, corpus)
    monkeypatch.setattr(store_module, "READ_BLOCK_ROWS", 7)
    store = ActivationStore.open(str(tmp_path))
    np.testing.assert_array_equal(store.read_concepts(0, N), corpus["concepts"])
    np.testing.assert_array_equal(store.read_global(3, N), corpus["global"][3:])
    np.testing.assert_array_equal(store.read_region_mask(1, N - 1), corpus["region_mask"][1:-1])
    assert store.read_concepts(5, 5).shape == (0, R, C)
