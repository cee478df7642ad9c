"""lateint.index.add / delete / compact against an INDEX built from scratch: every array, every search.

precompute A, add B, delete C, compact == precompute (A + B) - C with A's concept dictionary;
compact --recluster == the same rebuild with a dictionary trained on (A + B) - C. Bad ids are
refused, naming them.
"""

import os

import numpy as np
import pytest
from live_index_helpers import (
    build_index,
    centroids_of,
    search_all,
    stage_arrays,
    store_arrays,
    write_subset,
)

from lateint.index.add import add_images
from lateint.index.compact import compact_index
from lateint.index.delete import delete_images
from lateint.index.first_stage import build as first_stage_build
from lateint.index.manifest import read_ids, read_manifest

A_ROWS, B_ROWS = np.arange(0, 120), np.arange(120, 200)
DELETED_ROWS = np.array([3, 17, 64, 119, 120, 150, 199])  # rows of the scenes test split


@pytest.fixture(scope="module")
def corpora(scenes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("live_corpora")
    kept = np.setdiff1d(np.concatenate([A_ROWS, B_ROWS]), DELETED_ROWS)
    return {
        name: write_subset(scenes_dir, rows, str(root / name))
        for name, rows in (("a", A_ROWS), ("b", B_ROWS), ("kept", kept))
    }


@pytest.fixture(scope="module")
def changed(tiny_workdir, corpora, tmp_path_factory):
    """(index after add + delete, ids deleted, manifest before compact); then compacted."""
    index_dir = build_index(
        tiny_workdir, corpora["a"], str(tmp_path_factory.mktemp("live") / "index")
    )
    add_images(tiny_workdir, corpora["b"], "test", index_dir, batch_size=16)
    ids = read_ids(index_dir, read_manifest(index_dir))
    deleted_ids = [ids[row] for row in DELETED_ROWS]
    delete_images(index_dir, deleted_ids)
    return index_dir, deleted_ids


@pytest.fixture(scope="module")
def rebuilt(tiny_workdir, corpora, changed, tmp_path_factory):
    return build_index(
        tiny_workdir,
        corpora["kept"],
        str(tmp_path_factory.mktemp("rebuilt") / "index"),
        centroids=centroids_of(changed[0]),
    )


def test_add_and_delete_search_like_a_rebuild_before_compaction(changed, rebuilt):
    index_dir, deleted_ids = changed
    manifest = read_manifest(index_dir)
    assert manifest["generation"] == 3  # build, add, delete
    assert manifest["shapes"]["images"] == 200 and manifest["counts"]["deleted"] == 7
    kept = np.setdiff1d(np.arange(200), DELETED_ROWS)
    got, expected = search_all(index_dir), search_all(rebuilt)
    for name, (ids, scores) in expected.items():
        mapped = np.where(ids >= 0, kept[np.maximum(ids, 0)], -1)
        np.testing.assert_array_equal(got[name][0], mapped, err_msg=name)
        np.testing.assert_array_equal(got[name][1], scores, err_msg=name)


def test_add_records_how_well_the_first_dictionary_fits_the_new_images(changed):
    from lateint.index.first_stage import concepts, records

    index_dir, _ = changed
    record = records.committed_record(index_dir, "concepts", read_manifest(index_dir))
    fit = record["fit"]
    assert fit["added_postings"] > 0 and 0 < fit["added"] <= 1 and 0 < fit["trained"] <= 1
    assert "added postings vs" in concepts.recluster_advice(record)
    worse = dict(record, fit=dict(fit, trained=0.85, added=0.85 - 0.06))
    assert concepts.recluster_advice(worse).endswith("lateint.index.compact --recluster is advised")
    close = dict(record, fit=dict(fit, trained=0.85, added=0.85 - 0.04))
    assert concepts.recluster_advice(close).endswith("the dictionary still fits")


def test_compact_equals_a_rebuild_with_the_first_dictionary(changed, rebuilt):
    index_dir, deleted_ids = changed
    manifest = compact_index(index_dir)
    assert manifest["generation"] == 4 and manifest["shapes"]["images"] == 193
    assert read_ids(index_dir, manifest) == read_ids(rebuilt, read_manifest(rebuilt))
    assert not set(deleted_ids) & set(read_ids(index_dir, manifest))
    assert manifest["counts"]["regions"] == read_manifest(rebuilt)["counts"]["regions"]
    for role, array in store_arrays(rebuilt).items():
        np.testing.assert_array_equal(store_arrays(index_dir)[role], array, err_msg=role)
    got_stages, expected_stages = stage_arrays(index_dir), stage_arrays(rebuilt)
    assert set(got_stages) == set(expected_stages) == {"concepts", "sq", "permutation", "exact"}
    for name, arrays in expected_stages.items():
        for key, array in arrays.items():
            np.testing.assert_array_equal(got_stages[name][key], array, err_msg=f"{name} {key}")
    got, expected = search_all(index_dir), search_all(rebuilt)
    for name in expected:
        for position in range(2):
            np.testing.assert_array_equal(
                got[name][position], expected[name][position], err_msg=name
            )
    # The generation before (its arrays at the top level) stays for servers not yet reloaded.
    assert sorted(os.listdir(os.path.join(index_dir, "store"))) == ["g4"]
    assert os.path.isdir(os.path.join(index_dir, "activations"))


def test_recluster_equals_a_rebuild_with_a_dictionary_trained_on_every_image(
    tiny_workdir, corpora, changed, tmp_path
):
    index_dir, _ = changed
    manifest = compact_index(index_dir, recluster=True)
    assert manifest["generation"] == 5
    # Only this generation's files and the one before's remain.
    assert sorted(os.listdir(os.path.join(index_dir, "store"))) == ["g4", "g5"]
    assert not os.path.exists(os.path.join(index_dir, "activations"))
    assert sorted(os.listdir(os.path.join(index_dir, "ids"))) == ["g4.txt", "g5.txt"]
    fresh = build_index(tiny_workdir, corpora["kept"], str(tmp_path / "fresh"))
    np.testing.assert_array_equal(centroids_of(index_dir), centroids_of(fresh))
    got, expected = search_all(index_dir)["concepts"], search_all(fresh)["concepts"]
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_duplicate_and_unknown_ids_are_refused_by_name(tiny_workdir, corpora, changed):
    index_dir, deleted_ids = changed
    before = read_manifest(index_dir)
    with pytest.raises(ValueError, match="already in .*s5-test-"):
        add_images(tiny_workdir, corpora["kept"], "test", index_dir, batch_size=16)
    with pytest.raises(ValueError, match=r"not in .*\['no-such-image', 'nor-this'\]"):
        delete_images(index_dir, ["no-such-image", read_ids(index_dir, before)[0], "nor-this"])
    assert read_manifest(index_dir) == before
    assert first_stage_build.built_stages(index_dir, before) == [
        "concepts",
        "sq",
        "permutation",
        "exact",
    ]


def test_an_add_with_another_models_checkpoint_is_refused_naming_both(
    tiny_workdir, corpora, tmp_path
):
    """Images encoded by another model would be scored against this INDEX's as if comparable:
    lateint.index.add refuses before it writes anything."""
    from flax import nnx

    from lateint.checkpoint import load_model, read_model_config, save_model
    from lateint.index.manifest import IndexRefusedError
    from lateint.index.precompute import precompute
    from lateint.model import SplitEncoder

    index_dir = str(tmp_path / "index")
    precompute(tiny_workdir, corpora["a"], "test", index_dir, storage="float32", batch_size=64)
    other = str(tmp_path / "other_model")  # the tiny model's config, other weights
    save_model(other, SplitEncoder(read_model_config(tiny_workdir), nnx.Rngs(3)))
    ours, theirs = load_model(tiny_workdir)[1]["fingerprint"], load_model(other)[1]["fingerprint"]
    assert ours != theirs
    before = sorted(os.listdir(index_dir)), read_manifest(index_dir)
    with pytest.raises(IndexRefusedError, match=f"{ours!r} does not match .* {theirs!r}"):
        add_images(other, corpora["b"], "test", index_dir, batch_size=16)
    assert (sorted(os.listdir(index_dir)), read_manifest(index_dir)) == before  # no add.json
