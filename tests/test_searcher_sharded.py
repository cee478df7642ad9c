"""A corpus sharded over a device mesh (issue 16 item 3): with 8 simulated CPU devices, the
brute-force first stages and the Searcher give one device's answers, and each device holds 1/S.

The comparisons run in a child process (tests/sharded_search_helper.py), since the number of
simulated devices is fixed when JAX starts."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lateint.index import delete
from lateint.index.first_stage import build as first_stage_build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, "tests", "sharded_search_helper.py")


@pytest.fixture(scope="module")
def comparisons(tiny_workdir, concepts_index, tmp_path_factory):
    """The helper's JSON over the shared INDEX ('exact' not built: the stages read the store)
    and a copy with 'exact' built and 20 images deleted (the stages read the stage's copy)."""
    folder = tmp_path_factory.mktemp("sharded")
    edited = str(folder / "edited")
    shutil.copytree(concepts_index, edited)
    first_stage_build.build_from_index(edited, ["exact"])
    ids = [line.strip() for line in open(os.path.join(edited, "ids.txt"), encoding="utf-8")]
    delete.delete_images(edited, ids[5:200:10])
    out = str(folder / "comparisons.json")
    process = subprocess.run(
        [sys.executable, HELPER, tiny_workdir, out, concepts_index, edited],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle), {"shared": concepts_index, "edited": edited}


def test_sharded_stages_equal_one_device(comparisons):
    stages = comparisons[0]["stages"]
    checked = [name for name in stages if not name.endswith("/memory")]
    assert len(checked) == 3 * 3 * 2  # kinds x S in {1, 3, 8} x n in {16, 700}
    for name in checked:
        case = stages[name]
        assert case["ids_equal"] and case["same_padding"], (name, case)
        assert case["max_score_diff"] <= 1e-5, (name, case)


def test_each_device_holds_its_share(comparisons):
    """Against the same stage on one device: 1/S of its bytes, up to the padding of the last
    shard (603 images: 201 a shard at S = 3, 76 at S = 8; 'exact' rounds up to 256 / 128)."""
    stages = comparisons[0]["stages"]
    for kind in ("exact", "exact_global", "refined"):
        whole = stages[f"{kind}/S=1/memory"]
        assert whole["devices"] == 1
        for shards in (3, 8):
            memory = stages[f"{kind}/S={shards}/memory"]
            assert memory["devices"] == shards
            padding = memory["shard_rows"] * shards / whole["shard_rows"]
            expected = whole["largest_device_bytes"] / shards * padding
            assert memory["largest_device_bytes"] == pytest.approx(expected, rel=0.01), kind
            if kind != "exact":
                assert memory["shard_rows"] == -(-603 // shards)
    searchers = comparisons[0]["searchers"]
    shared = searchers[comparisons[1]["shared"]]
    assert shared["devices"] == shared["sharded_mesh"] == 8
    # 200 images: 25 a device, 'exact' padded to a 32-image block.
    assert 0 < shared["device_nbytes"] <= shared["single_nbytes"] * 32 / 200


@pytest.mark.parametrize("which", ["shared", "edited"])
@pytest.mark.parametrize("stage", ["refined", "exact", "exact_global"])
def test_sharded_searcher_answers_as_one_device(comparisons, which, stage):
    case = comparisons[0]["searchers"][comparisons[1][which]][stage]
    assert case["sharded_ids"] == case["ids"]
    assert all(len(ids) == 10 for ids in case["ids"])
    assert case["max_joint_diff"] <= 1e-5 and case["max_maxsim_diff"] <= 1e-5


def test_edited_index_answers_without_the_deleted_images(comparisons):
    edited = comparisons[1]["edited"]
    ids = [line.strip() for line in open(os.path.join(edited, "ids.txt"), encoding="utf-8")]
    deleted = set(ids[5:200:10])
    for stage in ("refined", "exact", "exact_global"):
        case = comparisons[0]["searchers"][edited][stage]
        assert not deleted & {hit for hits in case["sharded_ids"] for hit in hits}


def test_the_concept_lists_on_a_mesh_answer_as_one_device(comparisons):
    """serve.sharded_concepts on 8 devices of one process: it holds every row and answers as
    the unsharded lists (the split over processes is tests/test_serve_multihost.py's)."""
    case = comparisons[0]["searchers"][comparisons[1]["shared"]]["concepts"]
    assert case["sharded_ids"] == case["ids"] and all(len(ids) == 10 for ids in case["ids"])
    assert case["sharded_scores"] == case["scores"]
    assert case["held_rows"] == [[25 * s, 25 * s + 25] for s in range(8)]  # 200 images / 8


def test_stages_that_cannot_be_sharded_are_refused_by_name(comparisons):
    refusal = comparisons[0]["searchers"][comparisons[1]["shared"]]["sq_refusal"]
    assert refusal is not None and "sharded over 8 devices" in refusal
    assert "'concepts', 'exact', 'exact_global', 'refined'" in refusal or "concepts" in refusal
