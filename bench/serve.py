r"""Benchmark: HTTP throughput and latency of lateint.serve.main, micro-batched against unbatched.

Prints one JSON object: for each mode ('unbatched': --max_batch=1; 'batched': --max_batch=16,
--max_wait_ms=5) and each concurrency (1, 8, 32), answered requests/s (HTTP 200 only: a refused
or failed request is counted in 'errors', never as throughput), p50/p99/mean latency in ms of
the answered requests and the mean batch size, from a fixed number of requests on loopback, all
in one run. The server runs in a child process per mode (`python -m lateint.serve.main`, both started at
once); at each concurrency the two modes are measured back to back, in alternating order (the
first level unbatched first, the next batched first, ...), so neither always runs on the warmer
or the quieter machine. The load comes from this process (httpx, asyncio), so on a small machine
client and server share the CPU. The JSON's "includes" says what each figure covers.

  python bench/serve.py --workdir=runs/scenes/model --index=runs/scenes/index \
      [--requests=200] [--concurrency=1,8,32] [--server_flag=--rerank_buckets=16,32 ...]

Without --workdir/--index it first builds a small setup in a temporary folder (scenes test
split of --images images, a 3-layer H=128 model trained for 2 steps, a float32 INDEX with the
'concepts' first stage): weights barely matter for speed, shapes do.
"""

from __future__ import annotations

import asyncio
import json
import logging as pylogging
import os
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.join(_REPO, "tests"))  # launcher.py (the server child process)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (default: build a small one).")
flags.DEFINE_string("index", None, "Finished INDEX of that model (default: build one).")
flags.DEFINE_integer("requests", 200, "Timed requests per (mode, concurrency).")
flags.DEFINE_integer("warmup_requests", 20, "Untimed requests per mode before timing.")
flags.DEFINE_list("concurrency", ["1", "8", "32"], "Concurrent clients.")
flags.DEFINE_integer("max_batch", 16, "Batched mode: --max_batch of the server.")
flags.DEFINE_float("max_wait_ms", 5.0, "Batched mode: --max_wait_ms of the server.")
flags.DEFINE_integer("k", 10, "Results per request.")
flags.DEFINE_string(
    "first_stage", None, "first_stage option of every request (default: the server's)."
)
flags.DEFINE_multi_string(
    "server_flag", [], "Extra flags for lateint.serve.main (bucket sizes...)."
)
flags.DEFINE_integer("images", 1000, "Self-built setup: test-split images.")
flags.DEFINE_string(
    "scratch",
    None,
    "Self-built setup: folder to build in (default: a temporary one, deleted at exit).",
)

FALLBACK_QUERIES = [
    "two horses",
    "a cat to the left of a dog",
    "three birds above a frog",
    "a seven below a shoe",
    "one digit and two animals",
]


def build_small_setup(folder: str, images: int) -> tuple[str, str]:
    """Scenes corpus -> small trained model -> float32 INDEX with the 'concepts' stage."""
    from lateint.data import scenes
    from lateint.index.first_stage import build as first_stage_build
    from lateint.index.precompute import precompute
    from lateint.train import trainer
    from lateint.train.configs import tiny

    data, workdir, index_dir = (os.path.join(folder, name) for name in ("data", "model", "index"))
    began = time.perf_counter()
    scenes.generate(
        data,
        num_train=64,
        num_dev=16,
        num_test=images,
        seed=3,
        images=False,
        region_features="pixels",
    )
    config = tiny.get_config()
    config.data.path = data
    config.model.update(
        hidden_size=128, num_heads=4, mlp_dim=512, num_layers=3, split_layer=1, concept_dim=64
    )
    config.num_steps, config.eval_every, config.checkpoint_every = 2, 1000, 2
    trainer.train_and_evaluate(config, workdir)
    precompute(workdir, data, "test", index_dir, storage="float32", batch_size=128)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    logging.info("built the small setup in %.0f s", time.perf_counter() - began)
    return workdir, index_dir


def corpus_queries(index_dir: str) -> list[str]:
    """Captions of the INDEX's corpus (manifest source), else a fixed list."""
    from lateint.data import load_corpus
    from lateint.index.manifest import read_manifest

    source = read_manifest(index_dir).get("source") or {}
    try:
        corpus = load_corpus(os.path.join(index_dir, source["data"]), source["split"])
        return list(corpus.captions[:500]) or FALLBACK_QUERIES
    except (KeyError, TypeError, OSError, ValueError) as error:
        logging.warning("using fixed queries: corpus of %s unreadable (%s)", index_dir, error)
        return FALLBACK_QUERIES


async def run_load(
    url: str, queries: list[str], requests: int, concurrency: int, options: dict, k: int
) -> dict:
    """`requests` POSTs by `concurrency` clients in closed loop; latency stats in ms."""
    latencies, statuses, batch_sizes = [], [], []
    next_request = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient):
        for number in next_request:
            body = {"query": queries[number % len(queries)], "k": k, "options": options}
            started = time.perf_counter()
            response = await client.post(url + "/search", json=body)
            latencies.append((time.perf_counter() - started) * 1e3)
            statuses.append(response.status_code)
            if response.status_code == 200:
                batch_sizes.append(response.json()["batch_size"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    answered = np.array([latency for latency, status in zip(latencies, statuses) if status == 200])
    ok = int(answered.size)
    latency_ms = (
        None
        if not ok
        else {
            "p50": round(float(np.percentile(answered, 50)), 2),
            "p99": round(float(np.percentile(answered, 99)), 2),
            "mean": round(float(answered.mean()), 2),
        }
    )
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": ok,
        "errors": int(len(statuses) - ok),
        "error_statuses": sorted({status for status in statuses if status != 200}),
        "seconds": round(wall, 3),
        "requests_per_s": round(ok / wall, 2),
        "latency_ms": latency_ms,
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
    }


def bench_modes(
    modes: list[tuple[str, list[str]]],
    workdir: str,
    index_dir: str,
    queries: list[str],
    levels: list[int],
) -> list[dict]:
    """Starts one server per mode at once, then measures level by level, the modes back to
    back at each level in alternating order, so a change in the machine's load hits both
    alike and neither is always measured first."""
    from launcher import ServerProcess

    servers = [ServerProcess(workdir, index_dir, server_flags).start() for _, server_flags in modes]
    try:
        healths = [server.wait_ready(timeout=1800) for server in servers]
        options = {"first_stage": FLAGS.first_stage} if FLAGS.first_stage else {}
        for server in servers:
            asyncio.run(run_load(server.url, queries, FLAGS.warmup_requests, 4, options, FLAGS.k))
        rows = {name: [] for name, _ in modes}
        for level, concurrency in enumerate(levels):
            order = list(zip(modes, servers))
            if level % 2:
                order.reverse()
            for position, ((name, _), server) in enumerate(order):
                row = asyncio.run(
                    run_load(server.url, queries, FLAGS.requests, concurrency, options, FLAGS.k)
                )
                row["measured"] = "first" if position == 0 else "second"
                logging.info(
                    "%s c=%d (%s): %.1f answered req/s, %d errors, latency %s ms",
                    name,
                    concurrency,
                    row["measured"],
                    row["requests_per_s"],
                    row["errors"],
                    row["latency_ms"],
                )
                rows[name].append(row)
    finally:
        for server in servers:
            server.terminate()
    return [
        {
            "mode": name,
            "server_flags": server_flags,
            "compile_seconds": round(health["compile_seconds"], 1),
            "first_stage": FLAGS.first_stage or health["default_first_stage"],
            "images": health["images"],
            "levels": rows[name],
        }
        for (name, server_flags), health in zip(modes, healths)
    ]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if (FLAGS.workdir is None) != (FLAGS.index is None):
        raise app.UsageError("give both --workdir and --index, or neither (builds a setup)")
    levels = [int(value) for value in FLAGS.concurrency]
    pylogging.getLogger("httpx").setLevel(pylogging.WARNING)  # one INFO line per request
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temporary:
        if FLAGS.workdir is None:
            folder = FLAGS.scratch or temporary
            workdir, index_dir = build_small_setup(folder, FLAGS.images)
            setup = f"self-built: {FLAGS.images} scenes images, 3-layer H=128 model (split 1)"
        else:
            workdir, index_dir = FLAGS.workdir, FLAGS.index
            setup = f"{workdir} + {index_dir}"
        queries = corpus_queries(index_dir)
        load_before = os.getloadavg()
        common = ["--max_queue=4096", "--request_timeout_ms=0", *FLAGS.server_flag]
        modes = [
            ("unbatched", common + ["--max_batch=1", "--max_wait_ms=0"]),
            (
                "batched",
                common + [f"--max_batch={FLAGS.max_batch}", f"--max_wait_ms={FLAGS.max_wait_ms}"],
            ),
        ]
        results = bench_modes(modes, workdir, index_dir, queries, levels)
    by_mode = {
        result["mode"]: {row["concurrency"]: row for row in result["levels"]} for result in results
    }
    speedup = {
        str(level): round(
            by_mode["batched"][level]["requests_per_s"]
            / by_mode["unbatched"][level]["requests_per_s"],
            2,
        )
        if by_mode["unbatched"][level]["requests_per_s"]
        else None
        for level in levels
    }
    includes = {
        "requests_per_s": "HTTP 200 responses / wall seconds of the level (closed loop, "
        "`requests` POSTs by `concurrency` clients); non-200 are 'errors'",
        "latency_ms": "client-side send to response of the HTTP 200 responses only",
        "mean_batch_size": "micro-batch size the server reports in each 200 response",
        "measured": "whether the mode ran first or second at its level (alternating)",
        "batched_over_unbatched_throughput": "ratio of requests_per_s at each level",
    }
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "setup": setup,
                "cpus": os.cpu_count(),
                "includes": includes,
                "load_average_1m": {
                    "before": round(load_before[0], 2),
                    "after": round(os.getloadavg()[0], 2),
                },
                "requests_per_level": FLAGS.requests,
                "k": FLAGS.k,
                "modes": results,
                "batched_over_unbatched_throughput": speedup,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
