"""Fuzzes the real server from its OpenAPI schema with schemathesis: no 5xx, responses match the
schema, invalid inputs are refused.

The 'positive_data_acceptance' check is left out on purpose: the schema cannot state the
cross-field bounds k <= K <= n, so some schema-valid requests are rightly refused with 422.
"""

import json
import os
import subprocess
import sys

import httpx
import pytest

from launcher import ServerProcess

# schemathesis 4.x (pyproject.toml pins >=4.32,<5): its CLI writes the run report as JSON
# (--report=json), which this test reads instead of parsing the console text.
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@pytest.fixture(scope="module")
def server(tiny_workdir, concepts_index):
    """The server over the shared float32 'concepts' INDEX (it only reads it)."""
    flags = [
        "--query_length_buckets=16",
        "--query_batch_buckets=1,4",
        "--candidate_buckets=256",
        "--rerank_buckets=16,32",
        "--default_n=256",
        "--default_K=16",
        "--max_queue=64",
        "--request_timeout_ms=30000",
    ]  # a 503 from a slow shared machine is no finding
    with ServerProcess(tiny_workdir, concepts_index, flags) as server:
        server.wait_ready()
        yield server


def _server_errors(server) -> float:
    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("lateint_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _run_schemathesis(url: str, folder) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs the CLI against `url` and returns it with its JSON run report."""
    assert os.path.exists(SCHEMATHESIS), (
        f"{SCHEMATHESIS} is missing: install the test extras (pip install -e '.[test]')"
    )
    report = folder / "schemathesis.json"
    command = [
        SCHEMATHESIS,
        "run",
        url,
        "--checks",
        ",".join(CHECKS),
        "--max-examples=40",
        "--seed=7",
        "--generation-database=none",
        "--workers=1",
        f"--phases={','.join(PHASES)}",
        "--request-timeout=30",
        "--no-color",
        "--report=json",
        f"--report-json-path={report}",
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=str(folder)
    )
    output = (completed.stdout + completed.stderr)[-6000:]
    assert report.exists(), output
    return completed, json.loads(report.read_text())


def test_schemathesis_finds_no_server_error(server, tmp_path):
    completed, report = _run_schemathesis(server.url + "/openapi.json", tmp_path)
    output = (completed.stdout + completed.stderr)[-6000:]
    assert report["schemathesis_version"].split(".")[0] == "4", report["schemathesis_version"]
    assert completed.returncode == 0 and report["exit_code"] == 0, output
    assert report["complete"] and report["stop_reason"] == "completed", output
    assert report["failures"] == [] and report["errors"] == [], report["failures"][:5]
    operations = report["operations"]
    assert operations["errored"] == 0 and operations["tested"] == operations["selected"] >= 3
    # The run did exercise the API: every phase asked for ran, and enough cases were sent.
    assert {phase: report["phases"][phase]["status"] for phase in PHASES} == dict.fromkeys(
        PHASES, "success"
    ), report["phases"]
    cases = report["test_cases"]
    assert cases["generated"] >= 100 and cases["errored"] == 0, cases
    assert cases["with_failures"] == 0 and cases["unique_failures"] == 0, cases
    # The server's own count agrees, and it still answers.
    assert _server_errors(server) == 0
    assert httpx.get(server.url + "/healthz").status_code == 200
    response = httpx.post(server.url + "/search", json={"query": "two horses", "k": 3})
    assert response.status_code == 200 and len(response.json()["results"]) == 3
