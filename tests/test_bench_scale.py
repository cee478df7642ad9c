"""bench/scale.py, one tiny run: W = 2 precompute workers give the W = 1 arrays, and the sharded
stages (8 simulated devices) give the single-device ids while holding 1/8 a device."""

import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_scale_bench_reports_identical_results_and_per_device_bytes(
    tiny_workdir, scenes_dir, concepts_index, tmp_path
):
    index_dir = str(tmp_path / "index")
    shutil.copytree(concepts_index, index_dir)
    from lateint.index.first_stage import build as first_stage_build

    first_stage_build.build_from_index(index_dir, ["exact"])
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bench", "scale.py"),
            f"--workdir={tiny_workdir}",
            f"--captions={scenes_dir}",
            f"--precompute_data={scenes_dir}",
            "--shard_rows=64",  # 200 images: 4 shards, 2 a worker
            f"--serve_index={index_dir}",
            f"--build_indexes={index_dir}",
            "--queries=16",
            "--repeats=1",
            "--n=64",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    precompute = {
        record["workers"]: record for record in records if record["phase"] == "precompute"
    }
    assert sorted(precompute) == [1, 2]
    assert precompute[2]["identical_to_first"] is True
    assert sorted(precompute[2]["worker_images"]) == [72, 128] and precompute[1]["images"] == 200
    serve = {(r["stage"], r["layout"]): r for r in records if r["phase"] == "serve"}
    assert len(serve) == 3 * 3
    for (stage, layout), record in serve.items():
        assert record["queries_with_single_device_ids"] == 1.0, (stage, layout)
        assert record["devices"] == (8 if layout == "S=8" else 1)
    for stage in ("exact_global", "refined"):  # 200 images: 25 a device
        whole = serve[(stage, "S=1")]["largest_device_bytes"]
        assert serve[(stage, "S=8")]["largest_device_bytes"] * 8 == whole
    (build,) = [record for record in records if record["phase"] == "build"]
    assert build["images"] == 200 and build["centroids"] >= 1
    assert 0 < build["kmeans_sample"] <= build["regions"]
    assert build["peak_rss_bytes"] >= build["baseline_rss_bytes"] > 0
