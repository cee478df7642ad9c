"""lateint.evaluation.harness over float32, bfloat16 and int8 INDEXes of the same model and images: every
record and the report name the storage mode; the scorers that never read the stored activations
(the dual encoder and MaxSim: concepts are float32 in every mode) rank identically; the scorers
that do (the exhaustive joint model, the staged pipeline with the exact first stage) stay within
a stated bound of float32.

Kept small: the dev split of the shared scenes corpus (24 images, 120 captions; every caption a
t2i query, every other one for the exhaustive model), one Evaluation for the three INDEXes. Most
of its ~40 s (2-core CPU) is each INDEX's Searcher compiling its 12 shapes.
"""

import numpy as np
import pytest

from lateint.evaluation import report
from lateint.evaluation.harness import Evaluation
from lateint.evaluation.protocols import RECALL_KEYS, Settings
from lateint.index import codecs
from lateint.index.first_stage import build as first_stage_build
from lateint.index.precompute import precompute

STORAGES = ("float32", "bfloat16", "int8")
IMAGES, CAPTIONS = 24, 120  # the dev split of tests/conftest.py's SCENES
READ_ACTIVATIONS = ("joint_exhaustive", "staged:exact")  # what the joint layers rank
READ_CONCEPTS = ("global", "maxsim")
EXHAUSTIVE = 60  # t2i queries of the exhaustive joint model (every other caption)
# Bounds against float32: recall points, and the share of t2i queries whose rank moved. Measured
# on the tiny model (staged:exact over all 120 queries): bfloat16 moved 7 ranks (6%), int8 20
# (17%); no recall figure moved by more than one query (0.83 points).
MAX_RECALL_POINTS = 5.0  # 6 of 120 queries, 3 of the exhaustive model's 60
MAX_MOVED = {"bfloat16": 0.2, "int8": 0.33}


@pytest.fixture(scope="module")
def evaluated(tiny_workdir, scenes_dir, tmp_path_factory):
    """{storage: (records by label, t2i ranks by label, INDEX path)}."""
    evaluation = Evaluation(
        tiny_workdir,
        scenes_dir,
        "dev",
        Settings(
            n=IMAGES,
            K=16,
            first_stages=("exact",),
            max_queries=0,
            max_exhaustive_queries=EXHAUSTIVE,
            max_exhaustive_pairs=IMAGES * EXHAUSTIVE,
            latency_queries=1,
            recall_queries=20,
            sample_queries=1,
            batch_size=128,
        ),
    )
    found = {}
    for storage in STORAGES:
        index_dir = str(tmp_path_factory.mktemp(f"evaluate_{storage}") / "index")
        precompute(tiny_workdir, scenes_dir, "dev", index_dir, storage=storage, batch_size=64)
        first_stage_build.build_from_index(index_dir, ["exact"])
        records, _ = evaluation.evaluate_index(index_dir)
        by_label = {report.label(record): record for record in records}
        found[storage] = (by_label, dict(evaluation.ranks), index_dir)
    return found


def test_every_record_and_the_report_name_the_storage_mode(evaluated):
    for storage, (records, _, index_dir) in evaluated.items():
        assert set(records) == set(READ_ACTIVATIONS + READ_CONCEPTS)
        for record in records.values():
            assert (record["storage"], record["index"]) == (storage, index_dir)
            assert record["num_images"] == IMAGES
        line = f"INDEX {index_dir}: {storage} activations, N={IMAGES}"
        listed = list(records.values())
        assert report.markdown(listed).splitlines()[0] == line
        assert report.summary(listed, []).splitlines()[0] == line
        # R = 8 regions of H' = 32 per image (the tiny model at float32: 8 * 32 * 4 bytes),
        # + one mask byte per region
        activations = records["joint_exhaustive"]["bytes_per_image"]["activations"]
        assert activations == 8 * codecs.bytes_per_region(storage, 32) + 8
    assert [
        evaluated[s][0]["joint_exhaustive"]["bytes_per_image"]["activations"] for s in STORAGES
    ] == [8 * 128 + 8, 8 * 64 + 8, 8 * (32 + 4) + 8]


def test_scorers_of_the_concepts_rank_identically_in_every_storage_mode(evaluated):
    _, reference, _ = evaluated["float32"]
    for storage in ("bfloat16", "int8"):
        records, ranks, _ = evaluated[storage]
        for name in READ_CONCEPTS:
            np.testing.assert_array_equal(ranks[name], reference[name], err_msg=storage)
            assert records[name]["recall"] == evaluated["float32"][0][name]["recall"]


@pytest.mark.parametrize("storage", ["bfloat16", "int8"])
def test_scorers_of_the_activations_stay_within_the_bound_of_float32(evaluated, storage):
    reference_records, reference_ranks, _ = evaluated["float32"]
    records, ranks, _ = evaluated[storage]
    assert records["joint_exhaustive"]["queries"]["t2i"] == EXHAUSTIVE
    assert records["staged:exact"]["queries"]["t2i"] == CAPTIONS
    for name in READ_ACTIVATIONS:
        moved = float(np.mean(ranks[name] != reference_ranks[name]))
        if name == "joint_exhaustive":  # ranks of the other queries are not computed (N)
            moved *= CAPTIONS / EXHAUSTIVE
        assert moved <= MAX_MOVED[storage], (storage, name, moved)
        full, reference = records[name]["recall"]["full"], reference_records[name]["recall"]["full"]
        for key in RECALL_KEYS + ("i2t_r1", "i2t_r5", "i2t_r10"):
            assert abs(full[key] - reference[key]) <= MAX_RECALL_POINTS, (storage, name, key)
