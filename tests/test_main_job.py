"""README's main job, `bash scripts/main_job.sh`, end to end at toy size (MAIN_JOB_SIZE=tiny):
precompute, first stages and evaluation run for real through the script's own commands, then
the server command it prints is started as printed and answers a search.

Generation and training would cost minutes, so RUN_DIR starts with copies of the session's scenes
corpus and tiny model (what those two steps write, at about the tiny sizes): the script must see
them as complete and skip them, as it does on a rerun. Set-up is skipped (LATEINT_SKIP_SETUP=1)
because it would pip-install into the running virtualenv.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from lateint.evaluation import report
from launcher import free_port

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORERS = ["joint_exhaustive", "global", "maxsim", "staged:exact", "staged:refined"]


@pytest.fixture(scope="module")
def main_job(scenes_dir, tiny_workdir, tmp_path_factory):
    """(RUN_DIR, the script's stdout) of one tiny run."""
    run_dir = str(tmp_path_factory.mktemp("main_job") / "run")
    shutil.copytree(scenes_dir, os.path.join(run_dir, "data"))
    shutil.copytree(tiny_workdir, os.path.join(run_dir, "model"))
    environment = dict(
        os.environ,
        RUN_DIR=run_dir,
        MAIN_JOB_SIZE="tiny",
        LATEINT_SKIP_SETUP="1",
        LATEINT_VENV=sys.prefix,  # the interpreter running this test
    )
    completed = subprocess.run(
        ["bash", "scripts/main_job.sh"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    return run_dir, completed.stdout


def test_the_script_skips_what_is_complete_and_runs_every_other_step(main_job):
    run_dir, stdout = main_job
    steps = re.findall(r"^=== \[\d+s\] (\d)/6 ", stdout, re.MULTILINE)
    assert steps == ["1", "2", "3", "4", "5", "6"]
    assert "skipped (LATEINT_SKIP_SETUP=1)" in stdout
    assert "already generated" in stdout and "already trained" in stdout
    assert "3/6 train train/configs/tiny.py" in stdout
    for name in ("manifest.json", "first_stage"):
        assert os.path.exists(os.path.join(run_dir, "index", name))
    for name in ("results.json", "results.md", "rsum_latency.png", "n200.json"):
        assert os.path.getsize(os.path.join(run_dir, "eval", name)) > 0


def test_the_summary_is_the_report_of_this_run(main_job):
    run_dir, stdout = main_job
    with open(os.path.join(run_dir, "eval", "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    records = results["records"]
    assert [report.label(record) for record in records] == SCORERS
    assert {record["storage"] for record in records} == {"bfloat16"}  # the script's --storage
    assert {record["num_images"] for record in records} == {200}
    queries = {report.label(record): record["queries"]["t2i"] for record in records}
    assert queries == dict.fromkeys(SCORERS, 100) | {"joint_exhaustive": 10}  # tiny sizes
    summary = report.summary(records, results["samples"])
    assert (
        summary in stdout
    )  # printed as lateint.evaluation.main's summary of exactly these records
    assert summary.splitlines()[0] == (f"INDEX {run_dir}/index: bfloat16 activations, N=200")
    table_rows = [line for line in summary.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in table_rows] == SCORERS
    samples = re.findall(r"^query: '.*' \(written for (\S+), first stage refined\)$", stdout, re.M)
    hits = re.findall(r"^  [123]\. (\S+)  -?\d+\.\d{4}", stdout, re.MULTILINE)
    with open(os.path.join(run_dir, "index", "ids.txt"), encoding="utf-8") as handle:
        ids = set(handle.read().split())
    assert len(samples) == 2 and len(hits) == 6 and set(samples + hits) <= ids


def test_the_printed_server_command_serves_the_index(main_job, tmp_path):
    run_dir, stdout = main_job
    lines = stdout.splitlines()
    command = shlex.split(lines[lines.index("Serve this index with:") + 1])
    assert command[:3] == [os.path.join(sys.prefix, "bin", "python"), "-m", "lateint.serve.main"]
    assert command[3:] == [
        f"--workdir={run_dir}/model",
        f"--index={run_dir}/index",
        "--port=8080",
    ]
    port = free_port()
    # As printed, on a free port and without writing a compilation cache into the home folder
    # (absl: the last value of a flag wins).
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*command, f"--port={port}", "--compilation_cache_dir="],
            cwd=REPOSITORY,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                health = httpx.get(url + "/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server was not ready after 300 s"
            time.sleep(0.2)
        health = health.json()
        assert (health["images"], health["model_step"]) == (200, 6)
        assert health["default_first_stage"] == "refined"
        answer = httpx.post(url + "/search", json={"query": "two horses", "k": 3}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [hit["rank"] for hit in answer.json()["results"]] == [1, 2, 3]
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "lateint search" in page.text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0  # a clean SIGTERM
