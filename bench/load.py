r"""Benchmark: a bounded load against a real lateint.serve.main on 127.0.0.1, phase by phase.

Prints one JSON object: for each concurrency level (default 1, 32, 128, 400) a phase of
--phase_seconds in which that many closed-loop clients send /search requests (a client that gets
a 503 waits its Retry-After, capped at --max_retry_after_s, like a polite client). Per phase:
requests, status counts, client timeouts and connection errors, latency p50/p99/max of every
answer and of the 200s as the clients saw them, the same from the server's own histogram
(arrival at the app to answer: the difference is time in the kernel, uvicorn and the clients,
which share the machine), the shed share (503s / requests), and GET /healthz right after. At the
end: /livez, then SIGTERM and the exit status. Targets (issue 13): no status but 200 and 503, no
timeouts, p99 <= 3x p50 at concurrency 32, 503s answered within the deadline, alive afterwards.

  python bench/load.py --workdir=runs/scenes/model --index=runs/scenes/index \
      [--levels=1,32,128,400] [--phase_seconds=10] [--request_timeout_ms=2000]

Without --workdir/--index it builds bench/serve.py's small setup first (its flags --images,
--scratch, --server_flag, --k, --first_stage and --max_batch apply here too).
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
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

# bench/serve.py's setup builder, query source and flags (--workdir, --index, --images, ...).
_spec = importlib.util.spec_from_file_location(
    "bench_serve", os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py")
)
serve_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_bench)

FLAGS = flags.FLAGS
flags.DEFINE_list("levels", ["1", "32", "128", "400"], "Concurrent clients, one phase each.")
flags.DEFINE_float("phase_seconds", 10.0, "Length of each phase.")
flags.DEFINE_float("request_timeout_ms", 2000.0, "The server's --request_timeout_ms.")
flags.DEFINE_float("client_timeout_s", 30.0, "A client gives up (a 'timeout') after this.")
flags.DEFINE_float("max_retry_after_s", 1.0, "Longest wait of a client after a 503.")
flags.DEFINE_integer("max_queue", 256, "The server's --max_queue.")


def _server_buckets(url: str) -> dict:
    """{status: {le seconds: cumulative count}} of lateint_search_latency_seconds."""
    buckets: dict = collections.defaultdict(dict)
    for line in httpx.get(url + "/metrics", timeout=FLAGS.client_timeout_s).text.splitlines():
        if not line.startswith("lateint_search_latency_seconds_bucket{"):
            continue
        labels, value = line[line.index("{") + 1 : line.index("}")], float(line.rsplit(" ", 1)[1])
        fields = dict(part.split("=", 1) for part in labels.split(","))
        le = float(fields["le"].strip('"'))  # "+Inf" -> inf
        buckets[fields["status"].strip('"')][le] = value
    return buckets


def _server_view(before: dict, after: dict, deadline_ms: float) -> dict:
    """Per status, from the server's histogram: answers in the phase, the bucket bounds that
    hold the median and the 99th percentile (ms), and the share answered within the deadline."""
    view = {}
    for status, cumulative in after.items():
        bounds = sorted(cumulative)
        counts = [cumulative[le] - before.get(status, {}).get(le, 0.0) for le in bounds]
        total = counts[-1]
        if total <= 0:
            continue

        def bound(quantile, bounds=bounds, counts=counts, total=total):
            return next(
                round(le * 1e3, 1) for le, count in zip(bounds, counts) if count >= quantile * total
            )

        within = max(
            (count for le, count in zip(bounds, counts) if le * 1e3 <= deadline_ms), default=0.0
        )
        view[status] = {
            "answers": int(total),
            "p50_at_most_ms": bound(0.5),
            "p99_at_most_ms": bound(0.99),
            "within_deadline_share": round(within / total, 3),
        }
    return view


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    array = np.array(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 1),
        "p99": round(float(np.percentile(array, 99)), 1),
        "max": round(float(array.max()), 1),
    }


async def phase(
    url: str, queries: list[str], concurrency: int, seconds: float, k: int, options: dict
) -> dict:
    """`concurrency` closed-loop clients for `seconds`; statistics of what they got back."""
    statuses: collections.Counter = collections.Counter()
    latencies, ok_latencies, shed_latencies = [], [], []
    failures: collections.Counter = collections.Counter()
    stop_at = time.perf_counter() + seconds
    counter = iter(range(1 << 62))

    async def client_loop(client: httpx.AsyncClient):
        while time.perf_counter() < stop_at:
            body = {"query": queries[next(counter) % len(queries)], "k": k, "options": options}
            started = time.perf_counter()
            try:
                response = await client.post(url + "/search", json=body)
            except httpx.TimeoutException:
                failures["timeout"] += 1
                continue
            except httpx.TransportError as error:
                failures[type(error).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            elapsed = (time.perf_counter() - started) * 1e3
            statuses[response.status_code] += 1
            latencies.append(elapsed)
            if response.status_code == 200:
                ok_latencies.append(elapsed)
            elif response.status_code == 503:
                shed_latencies.append(elapsed)
                retry = float(response.headers.get("retry-after", "1") or 1)
                await asyncio.sleep(min(retry, FLAGS.max_retry_after_s))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=FLAGS.client_timeout_s, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - began
        health = await client.get(url + "/healthz", timeout=FLAGS.client_timeout_s)
    answered = sum(statuses.values())
    total = answered + sum(failures.values())
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests": total,
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "client_failures": dict(failures),
        "errors_other_than_503": total - statuses[200] - statuses[503],
        "ok_per_s": round(statuses[200] / wall, 1),
        "shed_share": round(statuses[503] / total, 3) if total else None,
        "latency_ms": _percentiles(latencies),
        "latency_ms_200": _percentiles(ok_latencies),
        "latency_ms_503": _percentiles(shed_latencies),
        "healthz_after": {
            "status": health.status_code,
            "body": health.json().get("status") or health.json(),
        },
    }


def run(workdir: str, index_dir: str, levels: list[int]) -> dict:
    from launcher import ServerProcess

    server_flags = [
        f"--max_batch={FLAGS.max_batch}",
        f"--max_queue={FLAGS.max_queue}",
        f"--request_timeout_ms={FLAGS.request_timeout_ms:g}",
        *FLAGS.server_flag,
    ]
    queries = serve_bench.corpus_queries(index_dir)
    options = {"first_stage": FLAGS.first_stage} if FLAGS.first_stage else {}
    server = ServerProcess(workdir, index_dir, server_flags).start()
    try:
        health = server.wait_ready(timeout=1800)
        asyncio.run(phase(server.url, queries, 4, 2.0, FLAGS.k, options))  # warm-up, untimed
        phases = []
        for concurrency in levels:
            before = _server_buckets(server.url)
            row = asyncio.run(
                phase(server.url, queries, concurrency, FLAGS.phase_seconds, FLAGS.k, options)
            )
            row["server_side"] = _server_view(
                before, _server_buckets(server.url), FLAGS.request_timeout_ms
            )
            logging.info("c=%d: %s", concurrency, json.dumps(row))
            phases.append(row)
        alive = httpx.get(server.url + "/livez", timeout=30).status_code == 200
    finally:
        exit_status = server.terminate()
    return {
        "server_flags": server_flags,
        "images": health["images"],
        "first_stage": FLAGS.first_stage or health["default_first_stage"],
        "phases": phases,
        "alive_after": alive,
        "exit_status_after_sigterm": exit_status,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if (FLAGS.workdir is None) != (FLAGS.index is None):
        raise app.UsageError("give both --workdir and --index, or neither (builds a setup)")
    pylogging.getLogger("httpx").setLevel(pylogging.WARNING)
    levels = [int(value) for value in FLAGS.levels]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as temporary:
        if FLAGS.workdir is None:
            workdir, index_dir = serve_bench.build_small_setup(
                FLAGS.scratch or temporary, FLAGS.images
            )
            setup = f"self-built: {FLAGS.images} scenes images, 3-layer H=128 model (split 1)"
        else:
            workdir, index_dir = FLAGS.workdir, FLAGS.index
            setup = f"{workdir} + {index_dir}"
        load_before = os.getloadavg()
        result = run(workdir, index_dir, levels)
    by_level = {row["concurrency"]: row for row in result["phases"]}
    at_32 = by_level.get(32, {}).get("latency_ms_200", {})
    print(
        json.dumps(
            {
                "benchmark": "load",
                "setup": setup,
                "cpus": os.cpu_count(),
                "load_average_1m": {
                    "before": round(load_before[0], 2),
                    "after": round(os.getloadavg()[0], 2),
                },
                "phase_seconds": FLAGS.phase_seconds,
                "request_timeout_ms": FLAGS.request_timeout_ms,
                **result,
                "p99_over_p50_at_32": round(at_32["p99"] / at_32["p50"], 2)
                if at_32.get("p50")
                else None,
                "errors_other_than_503": sum(
                    row["errors_other_than_503"] for row in result["phases"]
                ),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
