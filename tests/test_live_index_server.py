"""A real server on 127.0.0.1 keeps answering while the INDEX changes under it.

Bounded load (3 clients, each one request at a time) runs while lateint.index.add adds images (then
POST /admin/reload) and the lateint.index.delete binary deletes the top hits (its --reload_url tells
the server): 0 errors, every answer
names one generation (header and body agree, a client never sees it go back), and once the
delete's generation answers, the deleted ids never appear again.
"""

import threading
import time

import httpx
import numpy as np
import pytest
from live_index_helpers import build_index, run_binary, write_subset

from lateint.index.add import add_images
from lateint.index.manifest import read_manifest
from launcher import ServerProcess

BUCKET_FLAGS = [
    "--query_length_buckets=16",
    "--query_batch_buckets=1,4",
    "--candidate_buckets=64",
    "--rerank_buckets=16",
    "--default_n=64",
    "--default_K=16",
    "--max_batch=4",
    "--max_wait_ms=5",
]
QUERIES = ["two horses", "a cat left of a dog", "three birds", "a small fish", "one frog"]
CLIENTS = 3


def _load(url: str, stop: threading.Event, answers: list, errors: list) -> None:
    """One client: requests in a loop until `stop`, keeping (time sent, generation, ids) of each
    answer."""
    with httpx.Client(timeout=60) as client:
        turn = 0
        while not stop.is_set():
            body = {
                "query": QUERIES[turn % len(QUERIES)],
                "k": 10,
                "options": {"first_stage": ["concepts", "exact"][turn % 2]},
            }
            turn += 1
            sent = time.monotonic()
            try:
                response = client.post(url + "/search", json=body)
            except httpx.HTTPError as error:
                errors.append(repr(error))
                continue
            if response.status_code != 200:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
            answer = response.json()
            if int(response.headers["x-index-generation"]) != answer["generation"]:
                errors.append(
                    f"header {response.headers['x-index-generation']} != body "
                    f"{answer['generation']}"
                )
            answers.append((sent, answer["generation"], [hit["id"] for hit in answer["results"]]))


def _reload(server) -> dict:
    response = httpx.post(server.url + "/admin/reload", timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def index_dir(tiny_workdir, scenes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_subset(scenes_dir, np.arange(0, 120), str(root / "a"))
    write_subset(scenes_dir, np.arange(120, 200), str(root / "b"))
    return build_index(tiny_workdir, str(root / "a"), str(root / "index"))


def test_add_and_delete_under_load_without_errors_or_mixed_generations(
    tiny_workdir, index_dir, tmp_path
):
    first = read_manifest(index_dir)["generation"]
    with ServerProcess(tiny_workdir, index_dir, BUCKET_FLAGS).start() as server:
        health = server.wait_ready()
        assert health["generation"] == first and health["images"] == 120
        stop, per_client = threading.Event(), [([], []) for _ in range(CLIENTS)]
        threads = [
            threading.Thread(target=_load, args=(server.url, stop, *lists)) for lists in per_client
        ]
        for thread in threads:
            thread.start()
        try:
            add_images(
                tiny_workdir, index_dir.rsplit("/", 1)[0] + "/b", "test", index_dir, batch_size=16
            )
            added = _reload(server)
            assert added == dict(added, generation=first + 1, previous_generation=first, images=200)
            top = httpx.post(
                server.url + "/search", json={"query": QUERIES[0], "k": 10}, timeout=60
            ).json()
            assert top["generation"] == first + 1
            deleted = {hit["id"] for hit in top["results"][:5]}
            id_file = tmp_path / "deleted.txt"
            id_file.write_text("".join(f"{image_id}\n" for image_id in sorted(deleted)))
            result = run_binary(
                "lateint.index.delete",
                f"--index={index_dir}",
                f"--ids={id_file}",
                f"--reload_url={server.url}/admin/reload",
            )
            assert result.returncode == 0, result.stderr[-2000:]
            switched = time.monotonic()  # the binary returns once the server reloaded
            assert httpx.get(server.url + "/healthz").json()["generation"] == first + 2
            time.sleep(3.0)  # keep the load on the new generation
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        health = httpx.get(server.url + "/healthz").json()
        assert health["generation"] == first + 2 and health["images"] == 200
    errors = [error for _, client_errors in per_client for error in client_errors]
    assert errors == []
    answers = [answer for client_answers, _ in per_client for answer in client_answers]
    generations = {generation for _, generation, _ in answers}
    assert generations <= {first, first + 1, first + 2} and first + 2 in generations
    for client_answers, _ in per_client:
        seen = [generation for _, generation, _ in client_answers]
        assert seen == sorted(seen), "a client saw the generation go back"
    # A request sent once the reload answered is served by the new generation; no answer of
    # that generation holds a deleted id (a request already in a batch at the swap may still
    # be answered by the generation before, which is its generation to name).
    late = [answer for answer in answers if answer[0] >= switched]
    assert len(late) >= CLIENTS and all(generation == first + 2 for _, generation, _ in late)
    for _, generation, ids in answers:
        if generation == first + 2:
            assert not deleted & set(ids), f"deleted ids {deleted & set(ids)} answered"
    # The deleted images did answer before their generation: the check above can fail.
    assert any(deleted & set(ids) for _, generation, ids in answers if generation == first + 1)


def test_reload_answers_loopback_clients_only(tiny_workdir, index_dir):
    import asyncio

    from lateint.serve.app import create_app
    from lateint.serve.buckets import Buckets
    from lateint.serve.searcher import Searcher

    searcher = Searcher.load(
        tiny_workdir,
        index_dir,
        Buckets(
            query_lengths=(16,),
            query_batches=(1,),
            candidates=(64,),
            rerank=(16,),
            default_n=64,
            default_K=16,
        ),
    )
    app = create_app(searcher)

    async def reload_from(host: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://lateint") as client:
            return await client.post("/admin/reload")

    refused = asyncio.run(reload_from("192.0.2.7"))
    assert refused.status_code == 403 and "loopback" in refused.json()["error"]
    answered = asyncio.run(reload_from("127.0.0.1"))
    assert answered.status_code == 200, answered.text
    generation = read_manifest(index_dir)["generation"]
    assert answered.json()["generation"] == generation == searcher.generation
    assert answered.headers["x-index-generation"] == str(generation)
