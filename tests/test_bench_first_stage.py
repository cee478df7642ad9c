"""bench/first_stage.py and its peers: the encodings and the aggregation they rank by, and one
tiny end-to-end run of the benchmark (synthetic vectors, the stages that need no faiss)."""

import json
import os
import subprocess
import sys

import numpy as np

from bench import first_stage_plot
from bench.first_stage_peers import _union_sum_of_best
from bench.muvera_fde import FdeEncoder
from bench.peak_memory import PeakMemory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clouds(seed, count, length, dim):
    generator = np.random.default_rng(seed)
    vectors = generator.standard_normal((count, length, dim)).astype(np.float32)
    mask = generator.random((count, length)) < 0.7
    mask[:, 0] = True
    return vectors * mask[:, :, None], mask


def test_fde_of_one_partition_is_mean_of_regions_times_sum_of_words():
    images, image_mask = _clouds(0, 9, 5, 8)
    words, word_mask = _clouds(1, 4, 6, 8)
    encoder = FdeEncoder(8, repetitions=1, simhash_bits=0)
    scores = encoder.queries(words, word_mask) @ encoder.documents(images, image_mask).T
    means = images.sum(1) / image_mask.sum(1, keepdims=True)
    np.testing.assert_allclose(scores, words.sum(1) @ means.T, rtol=1e-5, atol=1e-5)


def test_fde_of_one_region_per_image_is_repetitions_times_maxsim():
    images, _ = _clouds(2, 7, 1, 8)
    image_mask = np.ones((7, 1), bool)
    words, word_mask = _clouds(3, 3, 5, 8)
    encoder = FdeEncoder(8, repetitions=4, simhash_bits=3)
    scores = encoder.queries(words, word_mask) @ encoder.documents(images, image_mask).T
    # Every partition holds (or is filled with) the image's only region.
    exact = words.sum(1) @ images[:, 0].T
    np.testing.assert_allclose(scores, 4 * exact, rtol=1e-4, atol=1e-4)


def test_token_union_sums_each_words_best_hit_per_image():
    owner = np.array([0, 0, 1, 2, 2, 3])  # region -> image
    query_of_word = np.array([0, 0, 1])
    hits = np.array([[0, 1, 2], [4, 3, -1], [5, 2, 0]])  # region ids per word (-1: none)
    similarity = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.0], [0.5, 0.4, 0.3]], np.float32)
    ids = _union_sum_of_best(query_of_word, owner, similarity, hits, 2, 4)
    # Query 0: image 0 = 0.9 (word 0 best of two regions), image 1 = 0.1, image 2 = 0.7 (word 1).
    assert ids[0].tolist() == [0, 2, 1, -1]
    # Query 1: image 3 = 0.5, image 1 = 0.4, image 0 = 0.3.
    assert ids[1].tolist() == [3, 1, 0, -1]


def test_peak_memory_sees_an_allocation():
    with PeakMemory(interval=0.001) as peak:
        block = np.ones(64 << 20, np.uint8)  # 64 MiB, touched
        block.sum()
    del block
    assert peak.delta_bytes >= 48 << 20


def test_synthetic_run_emits_every_stage_with_its_figures(tmp_path):
    command = [
        sys.executable, "-m", "bench.first_stage", "--images=800", "--queries=24",
        "--single_queries=3", "--repeats=1", "--nprobes=2,64", "--rescore=none,weighted",
        "--stages=concepts,sq,permutation,muvera,refined", "--sq_sizes=48", "--pools=0,64",
        "--permutation_sizes=32", "--muvera=4x2x8", "--concept_dim=32", "--topics=200",
        f"--dir={tmp_path}", "--ns=16,64",
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    stages = [
        (r["stage"], r["settings"].get("nprobe"), r["settings"].get("rescore")) for r in records
    ]
    assert stages[:2] == [("exact", None, None), ("exact_global", None, None)]
    assert ("concepts", 2, "weighted") in stages and ("concepts", 64, "none") in stages
    assert {"sq", "permutation", "muvera", "refined"} <= {stage for stage, _, _ in stages}
    for record in records:
        recall = record["recall_exact_top32"]
        assert set(recall) == {"16", "64"} and all(0 <= v <= 1 for v in recall.values())
        assert set(record["ms_per_query"]) == {"1", "16"}
        assert record["images"] == 800 and record["index_bytes"] > 0
        assert record["build_peak_rss_bytes"] >= record["build_rss_delta_bytes"] >= 0
    exact = records[0]["recall_exact_top32"]
    assert exact == {"16": 0.5, "64": 1.0}  # the reference against itself: 16 of 32, then all
    by_setting = {(r["stage"], r["settings"].get("nprobe"), r["settings"].get("rescore")): r
                  for r in records}  # fmt: skip
    # Probing all 64 centroids recovers more of the exact top 32 than probing 2.
    wide, narrow = by_setting[("concepts", 64, "none")], by_setting[("concepts", 2, "none")]
    assert wide["recall_exact_top32"]["64"] > narrow["recall_exact_top32"]["64"]
    # The recall-latency plot of these lines.
    lines = tmp_path / "first_stage.jsonl"
    lines.write_text(result.stdout)
    png = tmp_path / "first_stage.png"
    first_stage_plot.plot(first_stage_plot.load(str(lines)), str(png), 64, "16")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
