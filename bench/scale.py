"""Benchmark: scale-out. Precompute with W workers, first stages split over S devices.

Prints JSON lines, one per measurement:

- phase 'precompute', for each W in --workers: W `lateint.index.precompute` processes started at
  once on one INDEX. `wall_s` runs from the launch to the last exit, so it includes each
  process's start-up (JAX import, model load, one compile). `images_per_s` is N / wall_s. Each
  worker's own encode rate is parsed from its summary line. `identical_to_first` compares every
  array with the first W's INDEX.
- phase 'serve' (a child process with --devices simulated CPU devices): for each brute-force
  stage at the INDEX's N, three layouts: the single-device ExactStage the Searcher uses at S = 1,
  and ShardedExactStage at S = 1 and S = --shards. Each reports ms per query (single queries
  and batches of 16; median of --repeats, after a warm-up), the bytes on the most loaded device,
  and the share of queries whose ids equal the single-device ones. Simulated devices share this
  machine's cores, so a CPU shows the overhead of the sharded program, not a speed-up:
  `overhead_vs_single` is the ratio of ms per query.
- phase 'build', for each INDEX in --build_indexes: `lateint.index.build --first_stage=concepts`
  in a child process (k-means on a bounded sample, every region assigned in streamed blocks).
  `peak_rss_bytes` is the child's own peak resident memory (os.wait4's ru_maxrss), beside that
  of a child that only imports the binary and starts JAX (`baseline_rss_bytes`) and the bytes every region's
  float32 concepts would take at once (`all_concepts_float32_bytes`), which the build never
  holds. `wall_s` includes the child's start-up.

  python bench/scale.py --workdir=runs/scenes/model --captions=runs/scenes/data \
      --precompute_data=runs/scenes/eval/scaling/n10000/data \
      --serve_index=runs/scenes/eval/scaling/n100000/index \
      --build_indexes=runs/scenes/eval/scaling/n100000/index,/tmp/n1m/index
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Trained model workdir.")
flags.DEFINE_string("captions", None, "Corpus whose test captions are the queries.")
flags.DEFINE_string("precompute_data", None, "Corpus to precompute (its test split); '' skips.")
flags.DEFINE_list("workers", ["1", "2"], "W values for the precompute phase.")
flags.DEFINE_string("serve_index", None, "Finished INDEX with 'exact' built; '' skips.")
flags.DEFINE_integer("shards", 8, "S for the serve phase.")
flags.DEFINE_integer("devices", 8, "Simulated CPU devices of the serve phase's process.")
flags.DEFINE_integer("queries", 32, "Captions queried.")
flags.DEFINE_integer("repeats", 3, "Timed passes over the queries (median).")
flags.DEFINE_integer("n", 256, "Candidates per search.")
flags.DEFINE_string("storage", "bfloat16", "--storage of the precompute phase.")
flags.DEFINE_integer("shard_rows", 1024, "--shard_rows of the precompute phase (W <= shards).")
flags.DEFINE_list("build_indexes", [], "Finished INDEXes whose 'concepts' stage is (re)built.")
flags.DEFINE_bool("serve_child", False, "Internal: this process runs the serve phase.")

SUMMARY = re.compile(r"precomputed (\d+) images .* \(([\d.]+) images/s\)")
KMEANS = re.compile(r"k-means, (\d+) centroids over (\d+) of (\d+) regions")


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def precompute_phase() -> None:
    from lateint.index.store import read_array

    first = None
    with tempfile.TemporaryDirectory(prefix="lateint-scale-") as scratch:
        for workers in [int(value) for value in FLAGS.workers]:
            index_dir = os.path.join(scratch, f"w{workers}")
            command = [
                sys.executable,
                "-m",
                "lateint.index.precompute",
                f"--workdir={FLAGS.workdir}",
                f"--data={FLAGS.precompute_data}",
                f"--index={index_dir}",
                f"--storage={FLAGS.storage}",
                f"--shard_rows={FLAGS.shard_rows}",
                f"--num_workers={workers}",
            ]
            began = time.perf_counter()
            processes = [
                subprocess.Popen(
                    command + [f"--worker_index={i}"],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(workers)
            ]
            logs = [process.communicate()[1] for process in processes]
            wall = time.perf_counter() - began
            for process, log in zip(processes, logs):
                if process.returncode:
                    raise RuntimeError(f"precompute exited {process.returncode}: {log[-2000:]}")
            rates = [SUMMARY.search(log) for log in logs]
            roles = ("activations", "region_mask", "concepts", "global")
            arrays = {role: read_array(index_dir, role) for role in roles}
            images = int(arrays["global"].shape[0])
            identical = None
            if first is None:
                first = arrays
            else:
                identical = all((arrays[role] == first[role]).all() for role in roles)
            _emit(
                {
                    "phase": "precompute",
                    "workers": workers,
                    "images": images,
                    "wall_s": round(wall, 2),
                    "images_per_s": round(images / wall, 1),
                    "worker_images": [int(found.group(1)) for found in rates],
                    "worker_encode_images_per_s": [float(found.group(2)) for found in rates],
                    "identical_to_first": identical,
                    "includes": "launch to last exit: JAX import, model load, compile, encode, "
                    "TensorStore writes, journals, finalize",
                }
            )


def _child_peak(command: list[str]) -> tuple[int, float, str]:
    """Runs command; returns (its peak RSS in bytes, wall seconds, its stderr). Raises on exit != 0."""
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - began
        log.seek(0)
        text = log.read()
    if process.returncode:
        raise RuntimeError(f"{command[1:3]} exited {process.returncode}: {text[-2000:]}")
    return usage.ru_maxrss * 1024, wall, text  # ru_maxrss: KiB on Linux


def build_phase() -> None:
    from lateint.index.store import ActivationStore

    binary = [sys.executable, "-m", "lateint.index.build"]
    imports = "import jax, lateint.index.build; jax.devices()"  # the binary's start-up
    baseline, _, _ = _child_peak([sys.executable, "-c", imports])
    for index_dir in FLAGS.build_indexes:
        store = ActivationStore.open(index_dir)
        peak, wall, log = _child_peak(binary + [f"--index={index_dir}", "--first_stage=concepts"])
        found = KMEANS.search(log)
        _emit(
            {
                "phase": "build",
                "stage": "concepts",
                "images": store.num_images,
                "regions": int(found.group(3)),
                "centroids": int(found.group(1)),
                "kmeans_sample": int(found.group(2)),
                "wall_s": round(wall, 1),
                "peak_rss_bytes": peak,
                "baseline_rss_bytes": baseline,
                "all_concepts_float32_bytes": store.num_images
                * store.regions
                * store.concept_dim
                * 4,
                "includes": "child start-up, k-means on the sample, streamed assignment of every "
                "region, inverted lists written to TensorStore",
            }
        )


def _timed_ms(search, side, batch: int) -> float:
    """Median over FLAGS.repeats of ms per query, searching `side` in batches of `batch`."""
    import numpy as np

    from lateint.index.first_stage import QuerySide

    count = side.mask.shape[0]
    pieces = [
        QuerySide(*(np.asarray(array)[start : start + batch] for array in side))
        for start in range(0, count - batch + 1, batch)
    ]
    search(pieces[0])  # compiles this shape
    passes = []
    for _ in range(FLAGS.repeats):
        began = time.perf_counter()
        for piece in pieces:
            search(piece)
        passes.append((time.perf_counter() - began) * 1e3 / (len(pieces) * batch))
    return float(np.median(passes))


def serve_phase() -> None:
    import numpy as np

    from bench.first_stage_data import _tower_queries
    from lateint.index import manifest as manifest_lib
    from lateint.index.first_stage import exact, records, tombstones
    from lateint.serve import sharded_stages

    index_dir = FLAGS.serve_index
    manifest = manifest_lib.read_manifest(index_dir)
    record = records.committed_record(index_dir, exact.NAME, manifest)
    arrays = exact.read_arrays(index_dir, record)
    deleted = tombstones.bitmap(index_dir, record["num_images"], manifest)
    side, _ = _tower_queries(FLAGS.workdir, FLAGS.captions, "test", FLAGS.queries)
    for kind in exact.KINDS:
        held_arrays = {"global": arrays["global"]} if kind == "exact_global" else arrays
        single = exact.ExactStage(held_arrays, deleted, record, kind)  # nbytes: what it holds
        reference = single.search(side, FLAGS.n)[0]
        layouts = [("single", single, None)] + [
            (
                f"S={shards}",
                sharded_stages.ShardedExactStage(
                    arrays, deleted, record, kind, sharded_stages.mesh_for(shards)
                ),
                shards,
            )
            for shards in (1, FLAGS.shards)
        ]
        baseline = None
        for name, stage, shards in layouts:
            ms = {
                f"ms_per_query_batch_{batch}": round(
                    _timed_ms(functools.partial(stage.search, n=FLAGS.n), side, batch), 3
                )
                for batch in (1, 16)
            }
            baseline = baseline or ms
            held = stage.device_nbytes() if shards else {"cpu:0": stage.nbytes}
            ids = stage.search(side, FLAGS.n)[0]
            _emit(
                {
                    "phase": "serve",
                    "stage": kind,
                    "layout": name,
                    "images": record["num_images"],
                    "n": FLAGS.n,
                    **ms,
                    "overhead_vs_single": {
                        key: round(value / baseline[key], 2) for key, value in ms.items()
                    },
                    "largest_device_bytes": max(held.values()),
                    "devices": len(held),
                    "queries_with_single_device_ids": float(
                        np.mean((ids == reference).all(axis=1))
                    ),
                    "note": "simulated CPU devices share 2 cores: no speed-up is possible",
                }
            )


def main(argv):
    if FLAGS.serve_child:
        serve_phase()
        return
    if FLAGS.precompute_data:
        precompute_phase()
    if FLAGS.build_indexes:
        build_phase()
    if FLAGS.serve_index:
        environment = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={FLAGS.devices}",
            JAX_PLATFORMS="cpu",
        )
        child = [sys.executable, os.path.abspath(__file__), "--serve_child"]
        names = ("workdir", "captions", "serve_index", "shards", "queries", "repeats", "n")
        passed = [f"--{name}={FLAGS[name].value}" for name in names]
        subprocess.run(child + passed, check=True, env=environment, cwd=REPO)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "captions"])
    app.run(main)
