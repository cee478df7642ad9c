"""The server under failure and overload, deterministically: a real Searcher over a real INDEX,
served by uvicorn on 127.0.0.1 in this process, with a gate the test opens in front of the batch
worker (no timing windows: every assertion holds however slow the machine is).

Covers: a damaged store (500 naming the array and range, no server path; /healthz 503 with the
reason while /livez stays 200), a stuck worker, deadline admission (--request_timeout_ms):
requests that cannot be answered in time get a 503 instead of waiting, and the SIGTERM drain:
connections made after the signal, while a request is still open, are still answered.
"""

import asyncio
import dataclasses
import os
import shutil
import threading

import httpx
import pytest
import uvicorn

from lateint.serve.app import ServerSettings, create_app
from lateint.serve.buckets import Buckets
from lateint.serve.main import DrainingServer
from lateint.serve.searcher import Searcher
from launcher import free_port

BUCKETS = Buckets(
    query_lengths=(16,),
    query_batches=(1, 4),
    candidates=(256,),
    rerank=(16,),
    default_n=256,
    default_K=16,
)


class GatedSearcher:
    """A real Searcher whose `run` (called by the batch worker) waits until the gate is open."""

    def __init__(self, searcher: Searcher):
        self._searcher = searcher
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch reached the gate

    def run(self, items):
        self.entered.set()
        self.gate.wait()
        return self._searcher.run(items)

    def __getattr__(self, name):
        return getattr(self._searcher, name)


class InProcessServer:
    """lateint.serve.main's server (DrainingServer) over `searcher`, in a thread of this process."""

    def __init__(self, searcher, settings: ServerSettings, drain_s: float = 60.0):
        self.app = create_app(searcher, settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = DrainingServer(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            ),
            self.app.state.readiness,
            drain_s,
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError("in-process server did not start")

    def __exit__(self, *exception):
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def searcher(tiny_workdir, concepts_index):
    return Searcher.load(tiny_workdir, concepts_index, BUCKETS)


def _search(url, query="two horses", timeout=60):
    return httpx.post(url + "/search", json={"query": query, "k": 2}, timeout=timeout)


async def _behind_the_gate(url, gated: GatedSearcher, count: int, open_after: bool):
    """Sends one search and waits until its batch is held at the (closed) gate, then `count`
    more at once; opens the gate once those are answered if open_after. Returns (the first
    response, the others' responses)."""
    async with httpx.AsyncClient(timeout=60) as client:
        first = asyncio.create_task(client.post(url + "/search", json={"query": "one dog", "k": 2}))
        while not gated.entered.is_set() and not first.done():
            await asyncio.sleep(0.01)
        rest = await asyncio.gather(
            *(
                client.post(url + "/search", json={"query": f"{n} dogs", "k": 2})
                for n in range(count)
            )
        )
        if open_after:
            gated.gate.set()
        return await first, rest


def test_a_damaged_store_fails_searches_without_paths_and_healthz_says_why(
    tiny_workdir, concepts_index, tmp_path
):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(concepts_index, damaged)
    searcher = Searcher.load(tiny_workdir, damaged, BUCKETS)
    with InProcessServer(searcher, ServerSettings()) as server:
        assert httpx.get(server.url + "/healthz", timeout=60).status_code == 200
        for entry in os.listdir(os.path.join(damaged, "region_mask")):  # every shard file
            if entry != "zarr.json":
                shutil.rmtree(os.path.join(damaged, "region_mask", entry))
        searcher.view = dataclasses.replace(  # the same generation, read with no warm cache
            searcher.view, store=type(searcher.store).open(damaged, cache_bytes=0)
        )
        response = _search(server.url)
        assert response.status_code == 500, response.text
        message = response.json()["error"]
        assert "index array 'region_mask' is unreadable for images [0, 200)" in message
        assert damaged not in response.text and str(tmp_path) not in response.text
        health = httpx.get(server.url + "/healthz", timeout=60)
        assert health.status_code == 503, health.text
        assert any(
            "'region_mask' is unreadable" in reason for reason in health.json()["reasons"]
        ), health.text
        assert damaged not in health.text
        assert httpx.get(server.url + "/livez").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'lateint_requests_total{endpoint="/search",status="500"} 1.0' in metrics
        assert 'lateint_requests_total{endpoint="/healthz",status="503"} 1.0' in metrics


def test_requests_past_the_deadline_get_503_and_a_stuck_worker_shows_in_healthz(searcher):
    gated = GatedSearcher(searcher)
    settings = ServerSettings(max_batch=4, max_wait_ms=1, max_queue=64, request_timeout_ms=300)
    with InProcessServer(gated, settings) as server:
        assert _search(server.url).status_code == 200  # gate open: answered
        gated.gate.clear()
        gated.entered.clear()

        # every one answered while the gate is still closed
        first, rest = asyncio.run(_behind_the_gate(server.url, gated, 12, open_after=False))
        responses = [first, *rest]
        assert [response.status_code for response in responses] == [503] * 13
        assert all(response.headers["retry-after"] == "1" for response in responses)
        assert all(
            "within request_timeout_ms=300" in response.json()["error"]
            or "overloaded" in response.json()["error"]
            for response in responses
        )
        # The held batch has now run longer than the whole exchange above (>= 300 ms).
        server.app.state.readiness.stuck_seconds = 0.25
        health = httpx.get(server.url + "/healthz", timeout=60)
        assert health.status_code == 503
        assert "the batch worker has been on one batch" in health.json()["error"]
        assert httpx.get(server.url + "/livez").status_code == 200
        gated.gate.set()
        server.app.state.readiness.stuck_seconds = 30.0
        batcher = server.app.state.batcher
        while batcher.health().busy_seconds:  # until the held batch (>= 300 ms) is done
            threading.Event().wait(0.01)
        # That batch of one took >= 300 ms, so the moving average per item is >= 0.3 x 300 ms:
        # with 4 or more requests queued ahead, a new one cannot finish within 300 ms and is
        # refused at once, before it waits.
        gated.gate.clear()
        gated.entered.clear()

        first, responses = asyncio.run(_behind_the_gate(server.url, gated, 16, open_after=True))
        assert first.status_code in (200, 503)  # answered, in time or not
        assert [response.status_code for response in responses] == [503] * 16
        assert any("overloaded" in response.json()["error"] for response in responses)
        assert _search(server.url).status_code == 200  # and the server recovers
        assert httpx.get(server.url + "/healthz", timeout=60).status_code == 200


def test_sigterm_drains_answering_new_connections_with_connection_close(searcher):
    import signal

    gated = GatedSearcher(searcher)
    with InProcessServer(gated, ServerSettings(request_timeout_ms=0)) as server:
        gated.gate.clear()

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                held = asyncio.create_task(
                    client.post(server.url + "/search", json={"query": "one dog", "k": 2})
                )
                while not gated.entered.is_set():  # the request is open, held at the gate
                    await asyncio.sleep(0.01)
                server.server.handle_exit(signal.SIGTERM, None)  # what the signal handler does
                async with httpx.AsyncClient(timeout=60) as fresh:  # a new connection
                    health = await fresh.get(server.url + "/healthz")
                    alive = await fresh.get(server.url + "/livez")
                    late = asyncio.create_task(
                        fresh.post(server.url + "/search", json={"query": "two dogs", "k": 2})
                    )
                    await asyncio.sleep(0)
                    while server.app.state.batcher.depth == 0 and not late.done():
                        await asyncio.sleep(0.01)  # until the late request waits in the queue
                    gated.gate.set()
                    return await held, health, alive, await late

        held, health, alive, late = asyncio.run(scenario())
        assert health.status_code == 503 and "shutting down" in health.json()["error"]
        assert alive.status_code == 200
        assert held.status_code == 200 and late.status_code == 200, late.text
        assert late.headers["connection"] == "close"
        server.thread.join(60)  # nothing open any more: the drain ends, the server stops
        assert not server.thread.is_alive()
