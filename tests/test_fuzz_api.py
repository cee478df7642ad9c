"""Fuzzes the real server from its OpenAPI schema with schemathesis: no 5xx, responses match the
schema, invalid inputs are refused.

The 'positive_data_acceptance' check is left out on purpose: the schema cannot state the
cross-field bounds k <= K <= n, so some schema-valid requests are rightly refused with 422.
"""

import os
import subprocess
import sys

import httpx
import pytest

from index.first_stage import build as first_stage_build
from index.precompute import precompute
from serve.launcher import ServerProcess

pytest.importorskip("schemathesis", reason="schemathesis is not installed "
                                           "(pip install schemathesis)")
SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection")


@pytest.fixture(scope="module")
def server(tiny_workdir, scenes_dir, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("fuzz_index"))
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    flags = ["--query_length_buckets=16", "--query_batch_buckets=1,4", "--candidate_buckets=256",
             "--rerank_buckets=16,32", "--default_n=256", "--default_K=16", "--max_queue=64",
             "--request_timeout_ms=30000"]  # a 503 from a slow shared machine is no finding
    with ServerProcess(tiny_workdir, index_dir, flags) as server:
        server.wait_ready()
        yield server


def _server_errors(server) -> float:
    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("lateint_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_schemathesis_finds_no_server_error(server, tmp_path):
    report = tmp_path / "junit.xml"
    command = [SCHEMATHESIS, "run", server.url + "/openapi.json", "--checks", ",".join(CHECKS),
               "--max-examples=40", "--seed=7", "--generation-database=none", "--workers=1",
               "--phases=examples,coverage,fuzzing,stateful", "--request-timeout=30",
               "--no-color", "--report=junit", f"--report-junit-path={report}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               cwd=str(tmp_path))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-3000:]
    generated = [line for line in output.splitlines() if "generated" in line]
    assert generated, output[-3000:]
    count = int(generated[-1].split()[0])
    assert count >= 100, generated  # the run did exercise the API
    assert report.exists()
    # The server's own count agrees, and it still answers.
    assert _server_errors(server) == 0
    assert httpx.get(server.url + "/healthz").status_code == 200
    response = httpx.post(server.url + "/search", json={"query": "two horses", "k": 3})
    assert response.status_code == 200 and len(response.json()["results"]) == 3
