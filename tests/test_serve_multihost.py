"""Several hosts (issue 16 item 4): two `lateint.serve.main` processes on 127.0.0.1 joined by
jax.distributed (CPU, gloo), two simulated devices each, the INDEX split over the four: process 0
answers HTTP and the other follows its batches; the answers equal one process's Searcher."""

import concurrent.futures
import re
import shutil
import time

import httpx
import numpy as np
import pytest

from lateint.index import delete
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher
from tests.launcher import ServerProcess, free_port

BUCKETS = Buckets(
    query_lengths=(16, 32),
    query_batches=(1, 4),
    candidates=(64, 256),
    rerank=(16,),
    default_n=64,
    default_K=16,
)
BUCKET_FLAGS = [
    "--query_length_buckets=16,32",
    "--query_batch_buckets=1,4",
    "--candidate_buckets=64,256",
    "--rerank_buckets=16",
    "--default_n=64",
    "--default_K=16",
]
QUERIES = [
    "two horses",
    "a cat to the left of a dog",
    "three small birds above a frog and a big red seven",
    "a seven",
    "show me a zebra",
]
STAGES = ("refined", "exact", "exact_global", "concepts")


def _search(url: str, query: str, stage: str) -> dict:
    body = {"query": query, "k": 8, "options": {"n": 64, "K": 16, "first_stage": stage}}
    response = httpx.post(url + "/search", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _pair(workdir: str, index_dir: str, folder, buckets=BUCKET_FLAGS) -> list[ServerProcess]:
    """Two processes of one jax.distributed group (not started): process 0 serves HTTP."""
    coordinator = f"127.0.0.1:{free_port()}"
    environment = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    return [
        ServerProcess(
            workdir,
            index_dir,
            flags=[
                "--distributed",
                f"--coordinator_address={coordinator}",
                "--num_processes=2",
                f"--process_id={process}",
                "--index_shards=all",
                "--compilation_cache_dir=",
                "--max_wait_ms=200",
                *buckets,
            ],
            log_path=str(folder / f"process-{process}.log"),
            env=environment,
        )
        for process in (0, 1)
    ]


@pytest.fixture(scope="module")
def served_index(concepts_index, tmp_path_factory):
    """A copy of the shared INDEX (the reload test deletes images from it)."""
    copy = str(tmp_path_factory.mktemp("multihost-index") / "index")
    shutil.copytree(concepts_index, copy)
    return copy


@pytest.fixture(scope="module")
def two_processes(tiny_workdir, served_index, tmp_path_factory):
    processes = _pair(tiny_workdir, served_index, tmp_path_factory.mktemp("multihost"))
    try:
        for process in processes:
            process.start()
        processes[0].wait_ready(timeout=600)
        yield processes
    finally:
        for process in processes:
            process.terminate()


@pytest.fixture(scope="module")
def one_process(tiny_workdir, served_index):
    searcher = Searcher.load(tiny_workdir, served_index, BUCKETS)
    yield searcher
    searcher.close()


def _answers_equal(url: str, searcher, stage: str) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(len(QUERIES)) as pool:  # batched together
        answers = list(pool.map(lambda query: _search(url, query, stage), QUERIES))
    expected = searcher.search(QUERIES, k=8, n=64, K=16, first_stage=stage)
    for query, answer, result in zip(QUERIES, answers, expected):
        assert [hit["id"] for hit in answer["results"]] == [hit.id for hit in result.hits], query
        np.testing.assert_allclose(
            [hit["score"] for hit in answer["results"]],
            [hit.score for hit in result.hits],
            atol=1e-5,
        )
    assert max(answer["batch_size"] for answer in answers) > 1  # a leader's batch, followed
    return answers


@pytest.mark.parametrize("stage", STAGES)
def test_two_hosts_answer_as_one_process(two_processes, one_process, stage):
    _answers_equal(two_processes[0].url, one_process, stage)


def test_a_reload_reaches_every_process(two_processes, one_process, tiny_workdir, served_index):
    """Delete images, POST /admin/reload to the leader: both processes load the new generation
    (else their collectives would differ) and answer as one process on it."""
    url = two_processes[0].url
    top = _search(url, QUERIES[0], "refined")["results"]
    deleted = [hit["id"] for hit in top[:3]]
    delete.delete_images(served_index, deleted)
    response = httpx.post(url + "/admin/reload", timeout=300)
    assert response.status_code == 200, response.text
    assert response.json()["generation"] == one_process.generation + 1
    moved = f"generation {one_process.generation} -> {one_process.generation + 1}"
    deadline = time.monotonic() + 120  # the follower logs once its own stages are loaded
    while moved not in two_processes[1].log_tail(10**7):  # the follower loaded it too
        assert time.monotonic() < deadline, two_processes[1].log_tail(3000)
        time.sleep(0.2)
    fresh = Searcher.load(tiny_workdir, served_index, BUCKETS)
    try:
        for stage in STAGES:
            answers = _answers_equal(url, fresh, stage)
            assert not {hit["id"] for answer in answers for hit in answer["results"]} & set(deleted)
            assert {answer["generation"] for answer in answers} == {fresh.generation}
    finally:
        fresh.close()


def test_each_process_holds_half_and_the_follower_stops_with_the_leader(two_processes, one_process):
    leader, follower = two_processes
    _search(leader.url, QUERIES[0], "refined")
    logs = [process.log_tail(10**7) for process in two_processes]
    for process, log in enumerate(logs):
        held = re.findall(rf"refined: process {process} of 2 holds rows (\[.*?\]) of 200", log)
        # 200 images over 4 devices: 50 rows a shard, two shards a process.
        assert held == [
            str([(100 * process, 100 * process + 50), (100 * process + 50, 100 * (process + 1))])
        ]
    # The concept lists: each process read and holds only its rows' postings, together all.
    held = [
        int(re.findall(rf"concepts: process {process} holds (\d+) postings", log)[0])
        for process, log in enumerate(logs)
    ]
    assert 0 < min(held) and sum(held) == one_process.stages["concepts"].lists.num_postings
    assert "follows process 0" in logs[1]
    with pytest.raises(httpx.TransportError):  # the follower serves no HTTP
        httpx.get(follower.url + "/healthz", timeout=2)
    assert leader.terminate() == 0
    assert follower.process.wait(60) == 0
    assert re.search(r"stopped by the leader after \d+ batches", follower.log_tail())


def test_a_dead_follower_turns_the_leader_unavailable(tiny_workdir, concepts_index, tmp_path):
    """SIGKILL the follower: the leader's next search fails in its collective and answers 503
    (not 500), every later one too, /healthz turns 503; SIGTERM ends the leader, status 1."""
    one_bucket = [flag.split(",")[0] for flag in BUCKET_FLAGS]  # fewer compiles: any works
    leader, follower = _pair(tiny_workdir, concepts_index, tmp_path, one_bucket)
    try:
        leader.start()
        follower.start()
        leader.wait_ready(timeout=600, compiled=False)
        _search(leader.url, QUERIES[0], "refined")
        follower.process.kill()
        follower.process.wait(30)
        for _ in range(2):
            body = {"query": QUERIES[1], "k": 8}
            response = httpx.post(leader.url + "/search", json=body, timeout=120)
            assert response.status_code == 503, response.text
            assert "restart every process" in response.json()["error"]
        assert httpx.get(leader.url + "/healthz", timeout=30).status_code == 503
        assert leader.terminate() == 1  # the group was broken: not a clean stop
    finally:
        leader.terminate()
        follower.terminate()
