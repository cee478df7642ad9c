"""SIGKILL a writer at seeded points, resume it, and get the same store as one clean run.

The kill points are observed, not timed: the writer prints a line per batch it hands to the
store, and the test kills it after a seeded number of them (mid-unit, writes in flight).
"""

import hashlib
import os
import subprocess
import sys

import numpy as np

from lateint.index import manifest
from lateint.index.store import ActivationStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = r"""
import sys
import numpy as np
from lateint.index import manifest
from lateint.index.store import ActivationStore

directory = sys.argv[1]
N, R, H, C = 3000, 6, 32, 8
def rows(start, stop):  # deterministic in the image index, like a model forward pass
    rng = np.random.default_rng(start)
    return {"activations": rng.standard_normal((stop - start, R, H)).astype(np.float32),
            "region_mask": rng.random((stop - start, R)) < 0.6,
            "concepts": rng.standard_normal((stop - start, R, C)).astype(np.float32),
            "global": rng.standard_normal((stop - start, C)).astype(np.float32)}
try:
    store = ActivationStore.resume(directory)
except manifest.IncompleteIndexError:
    store = ActivationStore.create(directory, image_ids=[f"id{i}" for i in range(N)], regions=R,
                                   hidden=H, concept_dim=C, model_fingerprint="fp", split_layer=1,
                                   storage_dtype="int8", shard_rows=64, overwrite=True)
pending = store.pending_ranges(unit_rows=128)
print("pending", sum(stop - start for start, stop in pending), flush=True)
for unit_start, unit_stop in pending:
    for start in range(unit_start, unit_stop, 50):  # batches straddle shard boundaries
        store.write_batch(start, rows(start, min(unit_stop, start + 50)))
        print("batch", start, flush=True)
    store.mark_completed(unit_start, unit_stop)
store.finalize()
print("finished", flush=True)
"""


def _run(directory, kill_after_batches=None):
    """Runs the writer; with kill_after_batches, SIGKILLs it once it has printed that many
    batch lines. Returns (exit code, stdout lines, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, directory],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    if kill_after_batches is not None:
        for line in process.stdout:
            lines.append(line)
            if sum(seen.startswith("batch") for seen in lines) == kill_after_batches:
                assert process.poll() is None
                process.kill()  # SIGKILL: no cleanup runs in the writer
                break
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, lines + stdout.splitlines(keepends=True), stderr


def _journaled(directory) -> int:
    return sum(stop - start for start, stop in manifest.completed_ranges(directory))


def _file_digests(directory):
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(handle.read()).digest()
    return digests


def _contents(directory):
    store = ActivationStore.open(directory)
    everything = np.arange(store.num_images)
    activations, mask = store.gather(everything)
    return (
        activations,
        mask,
        store.read_concepts(0, store.num_images),
        store.read_global(0, store.num_images),
        store.image_ids,
        store.manifest["counts"],
    )


def test_killed_and_resumed_writer_matches_clean_run(tmp_path):
    clean, resumed = str(tmp_path / "clean"), str(tmp_path / "resumed")
    code, _, stderr = _run(clean)
    assert code == 0, stderr
    rng = np.random.default_rng(19)
    journaled = 0
    for _ in range(3):  # 3000 rows: 24 units of 128 rows, 3 batches each
        code, lines, stderr = _run(resumed, kill_after_batches=int(rng.integers(4, 20)))
        assert code == -9 and "finished\n" not in lines, stderr
        # Resumed, not restarted: each run writes only what the journal lacked.
        assert lines[0] == f"pending {3000 - journaled}\n"
        assert _journaled(resumed) > journaled  # the 4th batch is in the run's second unit
        journaled = _journaled(resumed)
    code, lines, stderr = _run(resumed)
    assert code == 0, stderr
    assert lines[0] == f"pending {3000 - journaled}\n" and lines[-1] == "finished\n"
    assert 0 < 3000 - journaled < 3000
    code, lines, stderr = _run(resumed)  # a no-op for a store that already finished
    assert code != 0 and "already complete" in stderr, stderr
    for left, right in zip(_contents(clean), _contents(resumed)):
        np.testing.assert_array_equal(left, right)
    clean_files, resumed_files = _file_digests(clean), _file_digests(resumed)
    del clean_files["manifest.json"], resumed_files["manifest.json"]  # creation times differ
    assert clean_files.keys() == resumed_files.keys()  # no stray temporary or lock files
    assert [name for name in clean_files if clean_files[name] != resumed_files[name]] == []
