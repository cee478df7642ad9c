"""lateint.index.precompute with W workers (issue 16 item 1): W in {2, 4} concurrent processes
give the arrays of W = 1; a SIGKILLed worker restarted alone still does; joiners are checked."""

import json
import os
import re
import signal

import numpy as np
import pytest
from test_precompute import _precompute_process as _worker  # same flags: int8, shards of 8

from lateint.index import manifest as manifest_lib
from lateint.index.manifest import IndexRefusedError, read_manifest
from lateint.index.precompute import precompute
from lateint.index.store import ActivationStore, read_array
from launcher import free_port

ROLES = ("activations", "activation_scale", "region_mask", "concepts", "global")
SHARDS = 25  # 200 test images in shards of 8
TIMESTAMPS = ("created", "finalized")


def _finish(process) -> str:
    stderr = process.communicate(timeout=600)[1]
    assert process.returncode == 0, stderr[-3000:]
    return stderr


@pytest.fixture(scope="module")
def reference(tiny_workdir, scenes_dir, tmp_path_factory):
    """The INDEX one worker writes, through the same binary and flags."""
    index_dir = str(tmp_path_factory.mktemp("workers") / "reference")
    _finish(_worker(tiny_workdir, scenes_dir, index_dir))
    return index_dir


def _assert_same_index(index_dir, reference):
    """Same arrays (value by value), ids and manifest but for its timestamps."""
    for role in ROLES:
        np.testing.assert_array_equal(
            read_array(index_dir, role), read_array(reference, role), err_msg=role
        )
    got, expected = read_manifest(index_dir), read_manifest(reference)
    for field in TIMESTAMPS:
        got.pop(field), expected.pop(field)
    assert got == expected
    assert ActivationStore.open(index_dir).image_ids == ActivationStore.open(reference).image_ids


def _owned(worker, workers):
    return [shard for shard in range(SHARDS) if shard % workers == worker]


def _journal(index_dir, worker, workers):
    """The ranges worker `worker` of `workers` journaled in its own file."""
    path = os.path.join(index_dir, manifest_lib.worker_journal(worker, workers))
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return manifest_lib.merge_ranges(json.load(handle)["completed"])


def test_four_concurrent_workers_write_the_single_worker_index(
    tiny_workdir, scenes_dir, reference, tmp_path
):
    index_dir = str(tmp_path / "four")
    # Started in reverse order, all at once: whichever gets there first creates the INDEX.
    processes = [
        _worker(tiny_workdir, scenes_dir, index_dir, "--num_workers=4", f"--worker_index={i}")
        for i in (3, 2, 1, 0)
    ]
    logs = [_finish(process) for process in processes]
    _assert_same_index(index_dir, reference)
    for worker in range(4):  # each wrote its own shards, and journaled only those
        shards = _owned(worker, 4)
        expected = manifest_lib.merge_ranges([(8 * s, 8 * s + 8) for s in shards])
        assert _journal(index_dir, worker, 4) == expected
    assert sum("INDEX complete" in log for log in logs) >= 1
    assert not os.path.exists(os.path.join(index_dir, manifest_lib.PROGRESS_FILE))


def test_two_workers_under_jax_distributed_write_the_single_worker_index(
    tiny_workdir, scenes_dir, reference, tmp_path
):
    """--distributed: jax.distributed.initialize gives each process its W and i."""
    index_dir = str(tmp_path / "two")
    address = f"127.0.0.1:{free_port()}"
    processes = [
        _worker(
            tiny_workdir,
            scenes_dir,
            index_dir,
            "--distributed",
            f"--coordinator_address={address}",
            "--num_workers=2",
            f"--worker_index={i}",
        )
        for i in (0, 1)
    ]
    logs = [_finish(process) for process in processes]
    _assert_same_index(index_dir, reference)
    for worker, log in enumerate(logs):
        assert f"worker {worker} of 2: {len(_owned(worker, 2))} units" in log, log[-2000:]


PROGRESS_LINE = re.compile(r"\] (\d+)/(\d+) images \|")  # logged after each journaled unit


def test_a_killed_worker_restarted_alone_resumes_to_the_same_index(
    tiny_workdir, scenes_dir, reference, tmp_path
):
    """Worker `victim` of 2 is SIGKILLed once its log reports a seeded number of journaled
    units; the other finishes its own shards and leaves the INDEX unfinished; the victim,
    restarted alone, skips its journaled shards and finalizes."""
    index_dir = str(tmp_path / "killed")
    rng = np.random.default_rng(16)
    victim = int(rng.integers(0, 2))
    units = int(rng.integers(1, len(_owned(victim, 2)) - 1))
    processes = {
        i: _worker(tiny_workdir, scenes_dir, index_dir, "--num_workers=2", f"--worker_index={i}")
        for i in (0, 1)
    }
    lines = []
    for line in processes[victim].stderr:
        lines.append(line)
        found = PROGRESS_LINE.search(line)
        if found and int(found.group(1)) >= 8 * units:
            break
    assert processes[victim].poll() is None, "".join(lines)[-3000:]
    processes[victim].send_signal(signal.SIGKILL)
    processes[victim].wait()
    survivor_log = _finish(processes[1 - victim])
    assert "not complete yet" in survivor_log, survivor_log[-2000:]
    assert not read_manifest(index_dir, require_complete=False)["complete"]
    journaled = sum(stop - start for start, stop in _journal(index_dir, victim, 2))
    owned = 8 * len(_owned(victim, 2))
    assert 8 * units <= journaled < owned

    restarted = _finish(
        _worker(tiny_workdir, scenes_dir, index_dir, "--num_workers=2", f"--worker_index={victim}")
    )
    # Resumed, not restarted: it encodes only the part of its share its journal lacks.
    left = owned - journaled
    assert f"worker {victim} of 2: {left // 8} units of {left} images" in restarted
    assert f"precomputed {left} images " in restarted and "INDEX complete" in restarted
    _assert_same_index(index_dir, reference)
    # Finalizing again is a no-op: a late worker finds the INDEX complete.
    before = os.path.getmtime(os.path.join(index_dir, "manifest.json"))
    again = _finish(
        _worker(tiny_workdir, scenes_dir, index_dir, "--num_workers=2", "--worker_index=0")
    )
    assert "nothing to do" in again
    assert os.path.getmtime(os.path.join(index_dir, "manifest.json")) == before


# ---- in process: joiners are checked; flags are validated -----------------------------------


def _run(tiny_workdir, scenes_dir, index_dir, worker, **overrides):
    arguments = dict(storage="int8", batch_size=8, shard_rows=8, num_workers=2)
    arguments.update(overrides)
    return precompute(tiny_workdir, scenes_dir, "test", index_dir, worker_index=worker, **arguments)


def test_a_joiner_with_other_flags_is_refused_naming_the_field(tiny_workdir, scenes_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    first = _run(tiny_workdir, scenes_dir, index_dir, 0)
    assert not first["complete"]
    with pytest.raises(IndexRefusedError, match=r"storage.activations_dtype.*'int8'.*'float32'"):
        _run(tiny_workdir, scenes_dir, index_dir, 1, storage="float32")
    with pytest.raises(IndexRefusedError, match=r"layout.shard_rows' is 8, --shard_rows is 16"):
        _run(tiny_workdir, scenes_dir, index_dir, 1, shard_rows=16)
    assert _run(tiny_workdir, scenes_dir, index_dir, 1)["complete"]


def test_shared_creation_keeps_the_first_manifest_and_checks_ids(tmp_path):
    index_dir = str(tmp_path / "index")
    fields = dict(
        regions=3,
        hidden=4,
        concept_dim=2,
        model_fingerprint="m",
        split_layer=1,
        shard_rows=2,
        shared=True,
    )
    first = ActivationStore.create(index_dir, image_ids=["a", "b", "c"], **fields)
    second = ActivationStore.create(index_dir, image_ids=["a", "b", "c"], **fields)
    assert second.manifest == first.manifest  # the first published manifest, timestamp and all
    with pytest.raises(IndexRefusedError, match=r"ids.txt: another worker wrote other ids"):
        ActivationStore.create(index_dir, image_ids=["a", "b", "x"], **fields)
    with pytest.raises(IndexRefusedError, match=r"array 'concepts'.*another layout"):
        ActivationStore.create(index_dir, image_ids=["a", "b", "c"], **dict(fields, concept_dim=5))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(worker_index=2), r"worker_index must be in \[0, --num_workers\), got worker_index 2"),
        (dict(overwrite=True), r"--overwrite with --num_workers=2 would let one worker delete"),
    ],
)
def test_bad_worker_flags_are_refused_before_any_work(tmp_path, overrides, message):
    arguments = dict(num_workers=2, worker_index=0)
    arguments.update(overrides)
    with pytest.raises(ValueError, match=message):
        precompute("no-workdir", "no-data", "test", str(tmp_path / "index"), **arguments)
    assert not os.path.exists(tmp_path / "index")
