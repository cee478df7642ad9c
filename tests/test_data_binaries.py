"""Every binary takes the same data flags: train, precompute and evaluate on TERAN's COCO tree.

`--data` names the dataset root (data/coco) or its features folder, and TERAN's annotations,
split ids and sizes are found in the tree (tests/real_layouts.py writes it as TERAN reads it).
"""

import json
import os
import subprocess
import sys

import pytest
from real_layouts import F, write_coco

from lateint.index.store import ActivationStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every image has 3 regions, as TERAN's features_36 have 36 each; 5 captions, one image 6.
IMAGES = {
    "train": {100 + i: (640, 480, 3, 5) for i in range(8)},
    "restval": {200: (480, 640, 3, 5), 201: (500, 500, 3, 6)},
    "dev": {300 + i: (640, 427, 3, 5) for i in range(3)},
    "test": {400 + i: (427, 640, 3, 6 if i == 1 else 5) for i in range(5)},
}


def _run(module, *arguments, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("teran") / "data" / "coco")
    write_coco(root, IMAGES)
    return root


@pytest.fixture(scope="module")
def trained(coco_root, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("coco_model"))
    _run(
        "lateint.train.main",
        "--config=train/configs/tiny.py",
        f"--workdir={workdir}",
        f"--data={coco_root}",
        "--data_dev_images=2",
        "--config.data.group_batches=False",
        "--config.data.semantics=False",
        "--config.num_steps=2",
        "--config.checkpoint_every=2",
        "--config.eval_every=100",
        "--config.eval_images=8",
        "--config.rerank_k=2",
    )
    return workdir


def test_train_reads_the_tree_and_records_the_options(trained, coco_root):
    with open(os.path.join(trained, "config.json")) as file:
        config = json.load(file)
    assert config["data"]["path"] == coco_root and config["data"]["dev_images"] == 2
    with open(os.path.join(trained, "model_config.json")) as file:
        assert json.load(file)["region_feature_dim"] == F


def test_precompute_and_evaluate_take_the_same_flags(trained, coco_root, tmp_path):
    index_dir = str(tmp_path / "index")
    _run(
        "lateint.index.precompute",
        f"--workdir={trained}",
        f"--data={coco_root}/features_36",
        "--split=test",
        f"--index={index_dir}",
        "--batch_size=8",
    )
    store = ActivationStore.open(index_dir)
    assert store.image_ids == [str(400 + i) for i in range(5)]
    out = str(tmp_path / "out")
    _run(
        "lateint.evaluation.main",
        f"--workdir={trained}",
        f"--index={index_dir}",
        f"--data={coco_root}",
        "--split=test",
        "--first_stages=exact",
        "--protocol=full",
        "--n=5",
        "--K=5",
        "--max_queries=0",
        "--latency_queries=1",
        "--sample_queries=1",
        "--batch_size=8",
        f"--out={out}",
    )
    with open(os.path.join(out, "results.json")) as file:
        records = json.load(file)["records"]
    # The standard protocol: 5 captions per image (image 401 has 6 ids), every one a query.
    assert {record["queries"]["t2i_of"] for record in records} == {25}
    assert {record["corpus_images"] for record in records} == {5}
