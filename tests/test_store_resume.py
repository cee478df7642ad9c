"""SIGKILL a writer at random moments, resume it, and get the same store as one clean run."""

import hashlib
import os
import subprocess
import sys
import time

import numpy as np

from index.store import ActivationStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = r"""
import sys
import numpy as np
from index import manifest
from index.store import ActivationStore

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
print("writing", flush=True)
for unit_start, unit_stop in store.pending_ranges(unit_rows=128):
    for start in range(unit_start, unit_stop, 50):  # batches straddle shard boundaries
        store.write_batch(start, rows(start, min(unit_stop, start + 50)))
    store.mark_completed(unit_start, unit_stop)
store.finalize()
print("finished", flush=True)
"""


def _run(directory, kill_after=None):
    """Runs the writer; with kill_after, SIGKILLs it that many seconds after it starts writing."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, directory], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        first_line = process.stdout.readline()
        if first_line.startswith("writing"):
            time.sleep(kill_after)
            process.kill()  # SIGKILL: no cleanup runs in the writer
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


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
    return activations, mask, store.read_concepts(0, store.num_images), store.read_global(
        0, store.num_images), store.image_ids, store.manifest["counts"]


def test_killed_and_resumed_writer_matches_clean_run(tmp_path):
    clean, resumed = str(tmp_path / "clean"), str(tmp_path / "resumed")
    code, _, stderr = _run(clean)
    assert code == 0, stderr
    rng = np.random.default_rng(int(time.time()))
    kills = 0
    for _ in range(8):
        code, stdout, stderr = _run(resumed, kill_after=float(rng.uniform(0.0, 0.3)))
        if "finished" in stdout:
            break
        assert code == -9, stderr
        kills += 1
    code, stdout, stderr = _run(resumed)  # a no-op for a store that already finished
    assert code == 0 or "already complete" in stderr, stderr
    assert kills >= 1, "the writer finished before the first kill: make it slower"
    for left, right in zip(_contents(clean), _contents(resumed)):
        np.testing.assert_array_equal(left, right)
    clean_files, resumed_files = _file_digests(clean), _file_digests(resumed)
    del clean_files["manifest.json"], resumed_files["manifest.json"]  # creation times differ
    assert clean_files.keys() == resumed_files.keys()  # no stray temporary or lock files
    assert [name for name in clean_files if clean_files[name] != resumed_files[name]] == []
