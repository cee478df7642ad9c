"""manifest.json validation, fingerprints, ids.txt and the progress journal."""

import copy
import json
import os

import numpy as np
import pytest

from lateint.index import codecs, manifest, manifest_schema


def _manifest(**overrides):
    value = {
        "format_version": manifest.FORMAT_VERSION,
        "complete": False,
        "created": "2026-01-01T00:00:00+00:00",
        "finalized": None,
        "model_fingerprint": "abc123",
        "split_layer": 2,
        "storage": {"activations_dtype": "int8", "compression_dim": 0, "concepts_dtype": "float32"},
        "shapes": {"images": 3, "regions": 4, "hidden": 8, "concept_dim": 5},
        "layout": {"shard_rows": 2, "inner_rows": 1},
        "arrays": {
            "activations": "activations",
            "activation_scale": "activation_scale",
            "region_mask": "region_mask",
            "concepts": "concepts",
            "global": "global",
        },
        "counts": {"images": 3, "regions": None},
        "ids": {"file": "ids.txt", "count": 3, "sha256": "0" * 64},
        "source": {"data": "data/scenes", "split": "dev"},
    }
    value.update(overrides)
    return value


def test_write_read_round_trip_and_completeness(tmp_path):
    directory = str(tmp_path)
    with pytest.raises(manifest.IncompleteIndexError, match="manifest.json is missing"):
        manifest.read_manifest(directory)
    manifest.write_manifest(directory, _manifest())
    assert manifest.read_manifest(directory, require_complete=False)["split_layer"] == 2
    with pytest.raises(manifest.IncompleteIndexError, match="'complete' is false.*0 of 3 images"):
        manifest.read_manifest(directory)
    with pytest.raises(ValueError, match="'counts.regions' expected an int once complete"):
        manifest.write_manifest(directory, _manifest(complete=True))
    manifest.write_manifest(directory, _manifest(complete=True, counts={"images": 3, "regions": 9}))
    assert manifest.read_manifest(directory)["complete"] is True
    assert sorted(os.listdir(directory)) == [manifest.MANIFEST_FILE]  # no temporary left


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("model_fingerprint"), "missing field 'model_fingerprint'"),
        (lambda m: m.update(split_layer="2"), "'split_layer' expected int, got str"),
        (lambda m: m.update(format_version=99), "'format_version' expected 1, got 99"),
        (
            lambda m: m["storage"].update(activations_dtype="fp8"),
            r"'storage.activations_dtype' expected 'float32', 'bfloat16' or 'int8', got 'fp8'",
        ),
        (lambda m: m["shapes"].pop("regions"), "missing field 'shapes.regions'"),
        (lambda m: m["shapes"].update(hidden=-1), r"'shapes.hidden' expected an int >= 0, got -1"),
        (lambda m: m["ids"].update(count=4), r"'ids.count' expected 3 \(shapes.images\), got 4"),
        (lambda m: m["arrays"].pop("activation_scale"), "int8 storage needs"),
        (
            lambda m: m["arrays"].update(concepts="/abs/concepts"),
            "'arrays.concepts' must be a relative",
        ),
        (lambda m: m["arrays"].update(concepts="../other/concepts"), "must be a relative"),
        (
            lambda m: m["arrays"].update(extra="extra"),
            r"unknown field 'arrays.extra'; expected fields among \['activations', ",
        ),
        (lambda m: m.update(corpus={"split": "dev"}), "missing field 'corpus.images'"),
        (lambda m: m.update(complete=1), "'complete' expected bool, got int 1"),
        (lambda m: m.update(storage=[]), r"'storage' expected an object, got list \[\]"),
        (lambda m: m.update(generation=-1), "'generation' expected an int >= 0, got -1"),
        (lambda m: m["layout"].update(shard_rows=0), "'layout.shard_rows' expected an int >= 1"),
    ],
)
def test_validation_names_field_expected_and_got(tmp_path, change, message):
    value = _manifest()
    change(value)
    with pytest.raises(ValueError, match=message):
        manifest.write_manifest(str(tmp_path), value)
    assert not os.path.exists(tmp_path / manifest.MANIFEST_FILE)


def test_every_problem_is_named_in_one_message(tmp_path):
    value = _manifest()
    value["shapes"]["hidden"] = -1
    del value["ids"]["sha256"]
    value["split_layer"] = "2"
    with pytest.raises(manifest.IndexRefusedError) as refusal:
        manifest.write_manifest(str(tmp_path), value)
    message = str(refusal.value)
    assert message.startswith(os.path.join(str(tmp_path), manifest.MANIFEST_FILE) + ": ")
    for problem in (
        "field 'split_layer' expected int, got str '2'",
        "field 'shapes.hidden' expected an int >= 0, got -1",
        "missing field 'ids.sha256'",
    ):
        assert problem in message
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        manifest.validate_manifest([1, 2])


def test_a_valid_manifest_parses_to_the_typed_model():
    typed = manifest_schema.IndexManifest.model_validate(_manifest(generation=3))
    assert typed.shapes.images == 3 and typed.storage.activations_dtype == "int8"
    assert typed.arrays.global_ == "global" and typed.generation == 3
    assert manifest.ARRAY_ROLES == (
        "activations",
        "activation_scale",
        "region_mask",
        "concepts",
        "global",
    )


def test_read_rejects_invalid_json(tmp_path):
    (tmp_path / manifest.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        manifest.read_manifest(str(tmp_path))


def test_check_fingerprint_names_both():
    manifest.check_fingerprint(_manifest(), "abc123")
    with pytest.raises(ValueError, match="'abc123' does not match .* fingerprint 'def456'"):
        manifest.check_fingerprint(_manifest(), "def456")


def test_ids_round_trip_and_tamper_check(tmp_path):
    directory = str(tmp_path)
    entry = manifest.write_ids(directory, ["COCO_1", "img 2", "ünïcode"])
    assert entry["file"] == "ids.txt" and entry["count"] == 3
    value = _manifest(ids=entry)
    assert manifest.read_ids(directory, value) == ["COCO_1", "img 2", "ünïcode"]
    (tmp_path / "ids.txt").write_text("COCO_1\nimg 2\nchanged\n")
    with pytest.raises(ValueError, match="sha256 expected"):
        manifest.read_ids(directory, value)
    with pytest.raises(ValueError, match="line break"):
        manifest.write_ids(directory, ["a\nb"])
    assert manifest.write_ids(directory, [])["count"] == 0


def test_progress_journal(tmp_path):
    directory = str(tmp_path)
    assert manifest.completed_ranges(directory) == []
    assert manifest.missing_ranges(directory, 10) == [(0, 10)]
    manifest.mark_completed(directory, 4, 6)
    manifest.mark_completed(directory, 0, 2)
    manifest.mark_completed(directory, 2, 4)  # touches both neighbours: merged
    assert manifest.completed_ranges(directory) == [(0, 6)]
    manifest.mark_completed(directory, 8, 10)
    assert manifest.missing_ranges(directory, 10) == [(6, 8)]
    journal = json.loads((tmp_path / manifest.PROGRESS_FILE).read_text())
    assert journal == {"completed": [[0, 6], [8, 10]]}
    (tmp_path / manifest.PROGRESS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="progress.json: expected"):
        manifest.completed_ranges(directory)


def test_merge_ranges():
    assert manifest.merge_ranges([(5, 7), (0, 3), (3, 4), (6, 9), (2, 2)]) == [(0, 4), (5, 9)]


def test_array_layout_follows_storage():
    layout = manifest.array_layout(_manifest())
    assert layout == {
        "activations": ((3, 4, 8), np.dtype(np.int8)),
        "activation_scale": ((3, 4), np.dtype(np.float32)),
        "region_mask": ((3, 4), np.dtype(np.bool_)),
        "concepts": ((3, 4, 5), np.dtype(np.float32)),
        "global": ((3, 5), np.dtype(np.float32)),
    }
    bf16 = copy.deepcopy(_manifest())
    bf16["storage"]["activations_dtype"] = "bfloat16"
    del bf16["arrays"]["activation_scale"]
    assert "activation_scale" not in manifest.array_layout(bf16)
    assert manifest.array_layout(bf16)["activations"] == ((3, 4, 8), codecs.numpy_dtype("bfloat16"))
