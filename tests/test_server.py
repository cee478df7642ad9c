"""lateint.serve.main end to end on 127.0.0.1: search, health, metrics, bad inputs, overload, SIGTERM.

Two real server processes over one INDEX: `server` (roomy queue, micro-batches of 4) for the
API, and `gated_server` (queue of 3) whose batch worker takes no batch while the test's hold file
exists (lateint.serve.main --test_hold_file): the test fills the queue, sees it full, sends a SIGTERM while
requests wait, and only then lets them through, so overload and shutdown are tested without
racing a timer.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from lateint.index.first_stage import build as first_stage_build
from lateint.index.manifest import read_manifest, write_manifest
from lateint.index.precompute import precompute
from launcher import REPOSITORY, ServerProcess

BUCKET_FLAGS = [
    "--query_length_buckets=16",
    "--query_batch_buckets=1,4",
    "--candidate_buckets=256",
    "--rerank_buckets=16,32",
    "--default_n=256",
    "--default_K=16",
    "--max_query_chars=200",
]


@pytest.fixture(scope="module")
def index_dir(tiny_workdir, scenes_dir, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("server_index"))
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    return index_dir


@pytest.fixture(scope="module")
def images_dir(scenes_dir, tmp_path_factory):
    """The corpus's images plus traps: 000008.png links to /etc/passwd, 000009.png to a real
    PNG outside the folder, 000010.png is a directory."""
    images_dir = str(tmp_path_factory.mktemp("server_images") / "images")
    shutil.copytree(os.path.join(scenes_dir, "images"), images_dir)
    outside = os.path.join(os.path.dirname(images_dir), "outside.png")
    shutil.copy(os.path.join(images_dir, "s5-test-000009.png"), outside)
    for name, target in (("s5-test-000008.png", "/etc/passwd"), ("s5-test-000009.png", outside)):
        os.remove(os.path.join(images_dir, name))
        os.symlink(target, os.path.join(images_dir, name))
    os.remove(os.path.join(images_dir, "s5-test-000010.png"))
    os.mkdir(os.path.join(images_dir, "s5-test-000010.png"))
    return images_dir


@pytest.fixture(scope="module")
def hold_file(tmp_path_factory):
    """The gated server's hold file: while it exists, that server's batch worker waits."""
    return tmp_path_factory.mktemp("gate") / "hold"


@pytest.fixture(scope="module")
def servers(tiny_workdir, index_dir, images_dir, hold_file):
    """Starts both servers at once (their compiles overlap), stops them at the end."""
    main = ServerProcess(
        tiny_workdir,
        index_dir,
        BUCKET_FLAGS
        + ["--max_batch=4", "--max_wait_ms=20", "--max_queue=64", f"--images_dir={images_dir}"],
    ).start()
    gated = ServerProcess(
        tiny_workdir,
        index_dir,
        BUCKET_FLAGS
        + [
            "--max_batch=16",
            "--max_wait_ms=5",
            "--max_queue=3",
            "--request_timeout_ms=60000",
            "--drain_s=120",  # drains until no request is open: the listener stays up for the test
            f"--test_hold_file={hold_file}",
        ],
    ).start()
    try:
        main.wait_ready()
        gated.wait_ready()
        yield main, gated
    finally:
        hold_file.unlink(missing_ok=True)
        main.terminate()
        gated.terminate()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def gated_server(servers):
    return servers[1]


def _search(server, body, **keywords) -> httpx.Response:
    return httpx.post(server.url + "/search", json=body, timeout=30, **keywords)


async def _concurrent(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(*(client.post(url + "/search", json=body) for body in bodies))


def test_search_returns_ranked_images_with_stage_timings(server):
    response = _search(server, {"query": "two horses", "k": 5})
    assert response.status_code == 200, response.text
    answer = response.json()
    results = answer["results"]
    assert [hit["rank"] for hit in results] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    assert all(hit["id"].startswith("s5-test-") for hit in results)
    assert all(hit["image_url"] == f"/images/{hit['id']}" for hit in results)
    assert set(answer["timings_ms"]) == {
        "tokenize",
        "text_tower",
        "first_stage",
        "maxsim",
        "gather",
        "joint",
        "total",
        "queue",
    }
    assert answer["settings"] == {"k": 5, "n": 256, "K": 16, "first_stage": "refined"}
    # Explicit options, and the same answer twice (exact first stage: deterministic).
    body = {
        "query": "a cat left of a dog",
        "k": 3,
        "options": {"n": 200, "K": 32, "first_stage": "exact"},
    }
    first, second = _search(server, body).json(), _search(server, body).json()
    assert first["settings"] == {"k": 3, "n": 200, "K": 32, "first_stage": "exact"}
    assert first["results"] == second["results"]
    assert first["candidates"] == 200


def test_health(server, index_dir):
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["images"] == 200
    assert health["fingerprint"] == read_manifest(index_dir)["model_fingerprint"]
    assert health["first_stages"] == ["concepts", "exact", "exact_global", "refined"]
    assert health["limits"]["max_k"] == 32 and health["limits"]["max_n"] == 256


def test_metrics_count_requests_stages_batches_and_queue(server):
    _search(server, {"query": "three birds", "k": 2})
    _search(server, {"query": "", "k": 2})
    for _ in range(2):  # non-finite numbers: a JSON 422, counted like every other answer
        httpx.post(
            server.url + "/search",
            content=b'{"query": "a dog", "k": NaN}',
            headers={"content-type": "application/json"},
        )
    text = httpx.get(server.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['lateint_requests_total{endpoint="/search",status="200"}'] >= 1
    assert samples['lateint_requests_total{endpoint="/search",status="422"}'] >= 3
    assert not any('status="500"' in name for name in samples)
    for stage in (
        "tokenize",
        "text_tower",
        "first_stage",
        "maxsim",
        "gather",
        "joint",
        "total",
        "queue",
        "request",
    ):
        assert samples[f'lateint_stage_latency_seconds_count{{stage="{stage}"}}'] >= 1
    assert samples["lateint_batch_size_count"] >= 1
    assert samples['lateint_search_latency_seconds_count{status="200"}'] >= 1
    assert samples['lateint_search_latency_seconds_count{status="422"}'] >= 3
    assert samples["lateint_queue_depth"] == 0


def test_openapi_schema_states_the_bounds(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    request = schema["components"]["schemas"]["SearchRequest"]
    assert request["required"] == ["query"]
    assert request["properties"]["query"]["maxLength"] == 200
    assert request["properties"]["k"]["maximum"] == 32
    assert {"/search", "/healthz", "/metrics", "/images/{image_id}"} <= set(schema["paths"])


BAD_REQUESTS = [
    # (body: dict -> JSON, or bytes as is; content type; status; words the message must hold)
    ({"query": "", "k": 5}, None, 422, "body.query: String should have at least 1 character"),
    ({"query": " \t ", "k": 5}, None, 422, "empty or whitespace-only"),
    ({"query": "horse " * 40}, None, 422, "at most 200 characters"),
    ({"k": 5}, None, 422, "body.query: Field required"),
    ({"query": 5}, None, 422, "body.query: Input should be a valid string"),
    ({"query": None}, None, 422, "body.query"),
    ({"query": "two horses", "k": 0}, None, 422, "body.k: Input should be greater than or equal"),
    ({"query": "two horses", "k": 33}, None, 422, "body.k: Input should be less than or equal"),
    ({"query": "two horses", "k": "5"}, None, 422, "body.k: Value error, expected an integer"),
    ({"query": "two horses", "k": 2.5}, None, 422, "expected an integer, got 2.5"),
    ({"query": "two horses", "k": True}, None, 422, "expected an integer, got bool"),
    ({"query": "two horses", "options": {"n": 0}}, None, 422, "body.options.n"),
    ({"query": "two horses", "options": {"n": 257}}, None, 422, "body.options.n"),
    ({"query": "two horses", "options": {"K": 33}}, None, 422, "body.options.K"),
    (
        {"query": "two horses", "options": {"first_stage": "sq"}},
        None,
        422,
        "body.options.first_stage",
    ),
    ({"query": "two horses", "options": {"nprobe": 3}}, None, 422, "Extra inputs"),
    ({"query": "two horses", "options": [1]}, None, 422, "body.options"),
    ({"query": "two horses", "mode": "fast"}, None, 422, "body.mode: Extra inputs"),
    ({"query": "two horses", "k": 20, "options": {"K": 10}}, None, 422, "k: expected at most K=10"),
    ({"query": "two horses", "options": {"K": 30, "n": 20}}, None, 422, "K: expected at most n=20"),
    (
        b'{"query": "a\\ud800"}',
        "application/json",
        422,
        "body.query: Input should be a valid string, unable to parse raw data as a unicode string",
    ),
    (b'{"query": ', "application/json", 422, "body: invalid JSON at character 10: Expecting"),
    (b"[1, 2]", "application/json", 422, "body: Input should be a valid dictionary"),
    (b'{"query": "caf\xe9"}', "application/json", 400, "expected UTF-8 JSON, got byte 0xe9"),
    (b'{"query": "' + b"a" * 20000 + b'"}', "application/json", 413, "at most 16384 bytes"),
    (b'{"query": "two horses"}', "text/plain", 415, "expected Content-Type application/json"),
    (b'{"query": "two horses"}', "application/x-www-form-urlencoded", 415, "got 'application/x"),
    # Python's JSON reader takes these; JSON has no such numbers (was a plain-text 500).
    (b'{"query": "a dog", "k": NaN}', "application/json", 422, "NaN is not a JSON number"),
    (b'{"query": "a dog", "k": Infinity}', "application/json", 422, "Infinity is not a JSON"),
    (
        b'{"query": "a dog", "options": {"n": -Infinity}}',
        "application/json",
        422,
        "-Infinity is not a JSON number",
    ),
    (b'{"query": "a dog", "k": 1e999}', "application/json", 422, "1e999 is beyond the float"),
    (b'{"query": NaN}', "application/json", 422, "NaN is not a JSON number"),
]


@pytest.mark.parametrize("body, content_type, status, message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    server, body, content_type, status, message
):
    if isinstance(body, dict):
        response = _search(server, body)
    else:
        response = httpx.post(
            server.url + "/search", content=body, headers={"content-type": content_type}, timeout=30
        )
    assert response.status_code == status, response.text
    assert message in response.json()["error"], response.text
    assert _search(server, {"query": "two horses", "k": 1}).status_code == 200


def test_images_are_served_for_index_ids_only(server, images_dir):
    image = httpx.get(server.url + "/images/s5-test-000007")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    for path in (
        "/images/s5-test-999999",
        "/images/..%2F..%2Fmanifest.json",
        "/images/%2Fetc%2Fpasswd",
        "/images/s5-test-000008",  # a symlink to /etc/passwd
        "/images/s5-test-000009",  # a symlink to a real PNG outside the folder
        "/images/s5-test-000010",
    ):  # a directory
        response = httpx.get(server.url + path)
        assert response.status_code == 404, path
        assert images_dir not in response.text and "/tmp" not in response.text, response.text
    assert (
        "no image file for id 's5-test-000008'"
        in httpx.get(server.url + "/images/s5-test-000008").json()["error"]
    )


def test_liveness_is_separate_and_there_is_no_cdn_docs_page(server):
    assert httpx.get(server.url + "/livez").json() == {"status": "alive"}
    assert httpx.get(server.url + "/docs").status_code == 404  # Swagger UI loads from a CDN
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_concurrent_requests_are_micro_batched(server):
    bodies = [{"query": f"{count} horses", "k": 3} for count in ("one", "two", "three", "four")]
    largest = 0
    for _ in range(5):  # a loaded machine may spread one round over several batches
        responses = asyncio.run(_concurrent(server.url, bodies))
        assert [response.status_code for response in responses] == [200] * 4
        largest = max(largest, *(response.json()["batch_size"] for response in responses))
        if largest > 1:
            break
    assert 1 < largest <= 4


async def _until(predicate, what: str, seconds: float = 120.0):
    """Polls the async `predicate()` until it is true; a deadline only turns a hang into a
    failure naming `what` (the outcome never depends on how fast the machine is)."""
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:.0f} s")
        await asyncio.sleep(0.02)


async def _queue_depth(client: httpx.AsyncClient, server) -> float:
    for line in (await client.get(server.url + "/metrics")).text.splitlines():
        if line.startswith("lateint_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no lateint_queue_depth")


def test_a_full_queue_answers_503_and_the_server_recovers(gated_server, hold_file):
    # Held: no request leaves the queue, so of 12 concurrent requests exactly 3 (max_queue) are
    # queued and exactly 9 are refused, however the 12 interleave.
    hold_file.touch()

    async def scenario():
        async with httpx.AsyncClient(
            timeout=120, limits=httpx.Limits(max_connections=20)
        ) as client:
            pending = [
                asyncio.create_task(
                    client.post(gated_server.url + "/search", json={"query": "two horses", "k": 2})
                )
                for _ in range(12)
            ]

            async def nine_refused():
                return sum(task.done() for task in pending) >= 9

            await _until(nine_refused, "9 of 12 requests answered")
            refused = [task.result() for task in pending if task.done()]
            depth = await _queue_depth(client, gated_server)
            hold_file.unlink()
            answered = await asyncio.gather(*(task for task in pending if not task.done()))
            return refused, depth, answered

    refused, depth, answered = asyncio.run(scenario())
    assert [response.status_code for response in refused] == [503] * 9
    assert depth == 3
    assert [response.status_code for response in answered] == [200] * 3
    assert all(len(response.json()["results"]) == 2 for response in answered)
    assert {response.json()["batch_size"] for response in answered} == {3}  # one batch of 3
    assert all("queue is full (3 waiting)" in response.json()["error"] for response in refused)
    assert all(response.headers["retry-after"] == "1" for response in refused)
    assert _search(gated_server, {"query": "two horses", "k": 2}).status_code == 200
    metrics = httpx.get(gated_server.url + "/metrics").text
    assert 'lateint_requests_total{endpoint="/search",status="503"} 9.0' in metrics


def test_sigterm_answers_in_flight_requests_then_exits_0(gated_server, hold_file):
    """Runs last in this module: it stops the gated server. The requests are released only
    once the server says it is shutting down, so they are answered after the SIGTERM."""
    hold_file.touch()

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as client:
            pending = [
                asyncio.create_task(
                    client.post(
                        gated_server.url + "/search", json={"query": f"{count} birds", "k": 2}
                    )
                )
                for count in ("one", "two", "three")
            ]

            async def three_queued():
                return await _queue_depth(client, gated_server) == 3

            await _until(three_queued, "3 requests queued")
            gated_server.process.terminate()  # SIGTERM

            async def shutting_down():
                health = await client.get(gated_server.url + "/healthz")
                return health.status_code == 503 and "shutting down" in health.text

            await _until(shutting_down, "/healthz reporting the shutdown")
            assert not any(task.done() for task in pending)
            hold_file.unlink()
            return await asyncio.gather(*pending)

    responses = asyncio.run(scenario())
    assert [response.status_code for response in responses] == [200] * 3
    assert all(len(response.json()["results"]) == 2 for response in responses)
    assert gated_server.process.wait(timeout=60) == 0, gated_server.log_tail()
    log = gated_server.log_tail(20000)
    assert "Finished server process" in log
    assert "Traceback" not in log


# ---- the micro-batcher alone (no model) ------------------------------------------------------


def test_batcher_fills_batches_up_to_max_batch_and_keeps_order():
    from lateint.serve.batcher import MicroBatcher

    batches = []
    batcher = MicroBatcher(
        lambda items: batches.append(list(items)) or [i * 10 for i in items],
        max_batch=4,
        max_wait_ms=200,
        max_queue=100,
    )
    futures = [batcher.submit(number) for number in range(10)]  # queued before the worker runs
    batcher.start()
    assert [future.result(timeout=10) for future in futures] == [i * 10 for i in range(10)]
    batcher.close()
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batcher_waits_at_most_max_wait_for_a_batch_to_fill():
    from lateint.serve.batcher import MicroBatcher

    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=50, max_queue=10)
    batcher.start()
    began = time.perf_counter()
    assert batcher.submit("alone").result(timeout=10) == "alone"
    assert 0.04 <= time.perf_counter() - began < 2.0
    batcher.close()


def test_batcher_failures_reach_every_caller_and_the_worker_survives():
    from lateint.serve.batcher import MicroBatcher

    def process(items):
        if "bad" in items:
            raise RuntimeError("model exploded")
        return items

    batcher = MicroBatcher(process, max_batch=2, max_wait_ms=100, max_queue=10)
    failing = [batcher.submit("bad"), batcher.submit("good")]
    batcher.start()
    for future in failing:
        with pytest.raises(RuntimeError, match="model exploded"):
            future.result(timeout=10)
    assert batcher.submit("fine").result(timeout=10) == "fine"
    batcher.close()


def test_batcher_sheds_load_and_drains_on_close():
    from lateint.serve.batcher import BatcherClosed, MicroBatcher, QueueFull

    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=10_000, max_queue=3)
    queued = [batcher.submit(number) for number in range(3)]
    with pytest.raises(QueueFull, match="3 waiting"):
        batcher.submit(99)
    assert batcher.depth == 3
    batcher.start()
    began = time.perf_counter()
    batcher.close(timeout=30)  # closing flushes the open batch instead of waiting 10 s
    assert time.perf_counter() - began < 5
    assert [future.result(timeout=0) for future in queued] == [0, 1, 2]
    with pytest.raises(BatcherClosed):
        batcher.submit(4)


@pytest.mark.parametrize("binary", ["lateint.serve.main", "lateint.index.build"])
def test_a_refused_index_is_one_line_and_exit_status_2(tiny_workdir, index_dir, tmp_path, binary):
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(index_dir, unfinished)
    manifest = read_manifest(unfinished)
    manifest.update(complete=False, finalized=None)
    write_manifest(unfinished, manifest)
    arguments = {
        "lateint.serve.main": [f"--workdir={tiny_workdir}", f"--index={unfinished}"],
        "lateint.index.build": [f"--index={unfinished}"],
    }[binary]
    completed = subprocess.run(
        [sys.executable, "-m", binary, *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    refusal = [line for line in completed.stderr.splitlines() if "refused INDEX" in line]
    assert len(refusal) == 1, completed.stderr[-3000:]
    assert refusal[0].startswith(f"{binary}: refused INDEX: ")
    assert "manifest.json: field 'complete' is false" in refusal[0]


def test_batcher_admits_by_expected_queue_time_and_drops_expired_items():
    import threading

    from lateint.serve.batcher import DeadlineExceeded, MicroBatcher, Overloaded

    gate = threading.Event()

    def process(items):
        gate.wait()
        return items

    batcher = MicroBatcher(process, max_batch=2, max_wait_ms=0, max_queue=100)
    batcher.start()
    measured = batcher.submit("measured")
    while batcher.health().busy_seconds == 0:  # the batch has started, held at the gate
        time.sleep(0.01)
    opener = threading.Timer(0.2, gate.set)  # fires after >= 0.2 s, never before
    opener.start()
    assert measured.result(timeout=30) == "measured"
    per_item = batcher.health().item_seconds  # a batch of one item
    assert per_item >= 0.2
    gate.clear()
    running = batcher.submit("running")  # an idle batcher always admits
    while batcher.health().busy_seconds == 0:
        time.sleep(0.01)
    queued = [batcher.submit(f"queued {n}", deadline=time.perf_counter() + 3600) for n in range(4)]
    with pytest.raises(Overloaded, match="overloaded: 4 requests wait ahead"):
        batcher.submit("late", deadline=time.perf_counter() + 2 * per_item)  # 5 items ahead
    # Admitted (its deadline allows for the queue ahead), then the deadline passes in the queue
    # while the gate is closed: answered DeadlineExceeded without being processed.
    deadline = time.perf_counter() + 7 * per_item  # 6 ahead of it, with the running one
    stale = batcher.submit("stale", deadline=deadline)
    while time.perf_counter() <= deadline:
        time.sleep(0.01)
    gate.set()
    assert running.result(timeout=30) == "running"
    assert [future.result(timeout=30) for future in queued] == [f"queued {n}" for n in range(4)]
    with pytest.raises(DeadlineExceeded, match="past its deadline"):
        stale.result(timeout=30)
    batcher.close()
