"""An INDEX on object storage (issue 16 item 2), against a real S3 server on 127.0.0.1 (moto's):
lateint.storage's operations equal the local file system's; two precompute workers write into
s3:// the arrays one local worker writes; first stages build there and a Searcher serves from
there exactly what it serves from the local copy; what needs a file system refuses a URL."""

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from test_precompute import _precompute_process  # int8, shards of 8, batches of 8

from lateint import storage
from lateint.index.first_stage import build as first_stage_build
from lateint.index.manifest import read_manifest
from lateint.index.precompute import precompute
from lateint.index.store import ActivationStore, read_array
from launcher import REPOSITORY, free_port

BUCKET = "lateint-test"
ROLES = ("activations", "activation_scale", "region_mask", "concepts", "global")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, its bucket, and the AWS SDK variables that
    point TensorStore (and the precompute child processes) at it; restored afterwards."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPOSITORY,
    )
    endpoint = f"http://127.0.0.1:{port}"
    empty = tmp_path_factory.mktemp("aws") / "none"
    empty.write_text("")
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": str(empty),  # no ~/.aws: the SDK would log that it has none
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.put(f"{endpoint}/{BUCKET}").raise_for_status()  # creates the bucket
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.2)
        yield f"s3://{BUCKET}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("where", ["local", "file_url", "s3"])
def test_storage_operations_agree_on_every_backend(where, s3, tmp_path):
    root = {"local": str(tmp_path), "file_url": f"file://{tmp_path}", "s3": f"{s3}/ops"}[where]
    assert not storage.exists(storage.join(root, "manifest.json"))
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        storage.read_bytes(storage.join(root, "manifest.json"))
    storage.write_json(storage.join(root, "manifest.json"), {"complete": False}, make_parents=True)
    storage.write_text(storage.join(root, "manifest.json"), '{"complete": true}\n')  # replaced
    storage.write_json(storage.join(root, "journal", "a.json"), [1], make_parents=True)
    storage.write_json(storage.join(root, "journal", "b.json"), [2], make_parents=True)
    storage.write_text(storage.join(root, "journalx"), "")  # a sibling sharing the prefix
    assert storage.read_json(storage.join(root, "manifest.json")) == {"complete": True}
    assert storage.listdir(root) == ["journal", "journalx", "manifest.json"]
    assert storage.listdir(storage.join(root, "journal")) == ["a.json", "b.json"]
    assert storage.list_files(root) == [
        "journal/a.json",
        "journal/b.json",
        "journalx",
        "manifest.json",
    ]
    assert storage.isdir(storage.join(root, "journal"))
    assert not storage.isdir(storage.join(root, "manifest.json"))
    storage.rmtree(storage.join(root, "journal"))
    storage.remove(storage.join(root, "journalx"))
    assert storage.listdir(root) == ["manifest.json"]
    storage.rmtree(storage.join(root, "journal"))  # absent: nothing to do
    if where == "s3":
        assert storage.kvstore_spec(storage.join(root, "a")) == {
            "driver": "s3",
            "bucket": BUCKET,
            "endpoint": os.environ["AWS_ENDPOINT_URL"],
            "aws_region": "us-east-1",
            "path": "ops/a/",
        }
        with pytest.raises(ValueError, match="is on object storage"):
            storage.publish_text(storage.join(root, "ids.txt"), "x\n")
    else:
        assert storage.publish_text(storage.join(root, "ids.txt"), "x\n")
        assert not storage.publish_text(storage.join(root, "ids.txt"), "y\n")


def test_two_workers_write_into_s3_the_index_one_local_worker_writes(
    tiny_workdir, scenes_dir, s3, tmp_path
):
    """Worker 1 starts first and waits for worker 0, which alone creates a shared INDEX on
    object storage; the arrays, ids and manifest (but for timestamps and the corpus path) equal
    a local W = 1 run's; then first stages built there serve what the local ones serve."""
    local = str(tmp_path / "local")
    precompute(tiny_workdir, scenes_dir, "test", local, storage="int8", batch_size=8, shard_rows=8)
    remote = f"{s3}/workers/index"
    second = _precompute_process(
        tiny_workdir, scenes_dir, remote, "--num_workers=2", "--worker_index=1"
    )
    time.sleep(2.0)  # worker 1 is waiting for a manifest that does not exist yet
    first = _precompute_process(
        tiny_workdir, scenes_dir, remote, "--num_workers=2", "--worker_index=0"
    )
    logs = [process.communicate(timeout=600)[1] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [log[-2000:] for log in logs]
    for role in ROLES:
        np.testing.assert_array_equal(read_array(remote, role), read_array(local, role), role)
    got, expected = read_manifest(remote), read_manifest(local)
    for field in ("created", "finalized", "source"):
        got.pop(field), expected.pop(field)
    assert got == expected and got["complete"]
    assert read_manifest(remote)["source"]["data"] == os.path.abspath(scenes_dir)
    assert ActivationStore.open(remote).image_ids == ActivationStore.open(local).image_ids
    assert storage.listdir(storage.join(remote, "journal")) == [
        "worker-00000-of-00002.json",
        "worker-00001-of-00002.json",
    ]
    # The first stages, then the server's reader, on object storage.
    from lateint.serve.buckets import Buckets
    from lateint.serve.searcher import Searcher

    for index in (local, remote):
        first_stage_build.build_from_index(
            index, ["concepts", "exact"], {"concepts": {"num_centroids": 16}}
        )
    buckets = Buckets(
        query_lengths=(16,),
        query_batches=(1,),
        candidates=(32,),
        rerank=(8,),
        default_n=32,
        default_K=8,
    )
    queries = ["two horses", "a cat to the left of a dog", "a shoe below a seven"]
    results = {}
    for name, index in (("local", local), ("remote", remote)):
        searcher = Searcher.load(tiny_workdir, index, buckets, first_stages=["concepts", "exact"])
        results[name] = [
            [(hit.index, hit.id, hit.score) for hit in result.hits]
            for stage in ("concepts", "exact")
            for result in searcher.search(queries, k=8, n=32, K=8, first_stage=stage)
        ]
        searcher.close()
    assert results["remote"] == results["local"] and len(results["local"][0]) == 8


def test_what_needs_a_file_system_refuses_a_url_by_name(s3):
    from lateint.index.compact import compact_index
    from lateint.index.delete import delete_images

    with pytest.raises(ValueError, match=r"lateint.index.delete: 's3://.*' is on object storage"):
        delete_images(f"{s3}/workers/index", ["s5-0"])
    with pytest.raises(ValueError, match=r"lateint.index.compact: 's3://.*' is on object storage"):
        compact_index(f"{s3}/workers/index")


def test_a_missing_remote_index_is_reported_as_unfinished(s3):
    from lateint.index.manifest import IncompleteIndexError

    with pytest.raises(
        IncompleteIndexError, match=r"s3://lateint-test/nothing/manifest.json is missing"
    ):
        ActivationStore.open(f"{s3}/nothing")
