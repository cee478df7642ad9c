r"""Benchmark: seconds from `python -m lateint.serve.main` to a ready /healthz, cold and warm.

Prints one JSON object with, per mode, the seconds from launch to the first 200 on /healthz
(`ready_s`), the CPU seconds the server had used by then (`cpu_s_at_ready`, user + system of all
its threads: unlike wall time it hardly moves when other jobs share the cores, and on an idle
machine ready_s is at most about that), the server's own compile seconds before it listened,
the first search's latency, and the seconds until every bucket is compiled. Modes, one server
at a time, all with one fresh compilation cache folder:
  - background_cold: the default (--background_compile), empty cache;
  - background_warm: the same again, the cache filled by the first run;
  - all_first_cold: --nobackground_compile with an empty cache (the previous behaviour).

  python bench/startup.py --workdir=runs/scenes/model --index=runs/scenes/index \
      [--modes=background_cold,background_warm,all_first_cold]
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import shutil
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.join(_REPO, "tests"))  # launcher.py (the server child process)

import httpx  # noqa: E402
from absl import app, flags  # noqa: E402

from launcher import ServerProcess  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir.")
flags.DEFINE_string("index", None, "Finished INDEX of that model.")
flags.DEFINE_list(
    "modes",
    ["background_cold", "background_warm", "all_first_cold"],
    "Which starts to time, in this order.",
)
flags.DEFINE_string("query", "two horses to the left of a dog", "The first search.")
flags.mark_flags_as_required(["workdir", "index"])

MODES = {
    "background_cold": (["--background_compile"], True),
    "background_warm": (["--background_compile"], False),
    "all_first_cold": (["--nobackground_compile"], True),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all threads) from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_once(cache_dir: str, flags_: list[str], empty_cache: bool) -> dict:
    if empty_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    server = ServerProcess(
        FLAGS.workdir, FLAGS.index, flags_ + [f"--compilation_cache_dir={cache_dir}"]
    )
    began = time.perf_counter()
    server.start()
    try:
        health = server.wait_ready(timeout=1800, compiled=False)
        ready = time.perf_counter() - began
        cpu = cpu_seconds(server.process.pid)
        asked = time.perf_counter()
        answer = httpx.post(
            server.url + "/search", json={"query": FLAGS.query, "k": 3}, timeout=120
        ).json()
        record = {
            "ready_s": round(ready, 2),
            "cpu_s_at_ready": round(cpu, 2),
            "compile_s_before_ready": round(health["compile_seconds"], 2),
            "executables_at_ready": health["compile"]["compiled"],
            "first_search_ms": round((time.perf_counter() - asked) * 1e3, 1),
            "first_search_top3": [hit["id"] for hit in answer["results"]],
        }
        server.wait_ready(timeout=1800, compiled=True)
        record["all_compiled_s"] = round(time.perf_counter() - began, 2)
        return record
    finally:
        server.terminate()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    pylogging.getLogger("httpx").setLevel(pylogging.WARNING)  # a line per /healthz poll
    unknown = [mode for mode in FLAGS.modes if mode not in MODES]
    if unknown:
        raise app.UsageError(f"--modes: expected a subset of {list(MODES)}, got {unknown}")
    results = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="startup-cache-") as cache_dir:
        for mode in FLAGS.modes:
            server_flags, empty_cache = MODES[mode]
            results[mode] = start_once(os.path.join(cache_dir, "xla"), server_flags, empty_cache)
            results[mode]["load_average_after"] = os.getloadavg()
            print(json.dumps({mode: results[mode]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
