"""lateint.index.precompute: stored = online (contract 2), resume after SIGKILL, no-op rerun, modes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from lateint.checkpoint import load_model
from lateint.data.corpus import load_corpus
from lateint.index import codecs
from lateint.index.manifest import (
    CORPUS_FIELDS,
    IncompleteIndexError,
    IndexRefusedError,
    read_manifest,
    write_manifest,
)
from lateint.index.precompute import precompute
from lateint.index.store import ActivationStore, read_array

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = ("activations", "region_mask", "concepts", "global")


def test_stored_scores_equal_the_fused_forward(tiny_workdir, scenes_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    precompute(
        tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64, shard_rows=32
    )
    model, _ = load_model(tiny_workdir)
    corpus = load_corpus(scenes_dir, "test")
    store = ActivationStore.open(index_dir)
    assert store.image_ids == corpus.image_ids
    ids = np.array([5, 0, 199, 77, 31])
    stored, mask = store.gather(ids)
    np.testing.assert_array_equal(mask, corpus.region_mask[ids])
    ids_text = np.array([[101, 1037, 2829, 2187, 1997, 1037, 2235, 1021, 102]] * len(ids))

    @nnx.jit  # compiled, as the binaries run it (op by op took several times longer)
    def scores(model, token_ids, token_mask, stored, mask, regions, boxes, region_mask):
        text = model.encode_text(token_ids, token_mask)
        from_store = model.joint_score(text.activations, text.mask, stored, mask)
        fused = model.fused_score(token_ids, token_mask, regions, boxes, region_mask)
        return from_store, fused, model.encode_image(regions, boxes, region_mask).concepts

    from_store, fused, image_concepts = scores(
        model,
        ids_text,
        np.ones(ids_text.shape, bool),
        stored,
        mask,
        corpus.regions[ids],
        corpus.boxes[ids],
        corpus.region_mask[ids],
    )
    np.testing.assert_allclose(np.asarray(from_store), np.asarray(fused), atol=1e-5)
    concepts, _ = store.gather_concepts(ids)
    np.testing.assert_allclose(concepts, np.asarray(image_concepts), atol=1e-6)


def _precompute_process(workdir, data, index_dir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lateint.index.precompute",
            f"--workdir={workdir}",
            f"--data={data}",
            "--split=test",
            f"--index={index_dir}",
            "--batch_size=8",
            "--shard_rows=8",
            "--storage=int8",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


PROGRESS_LINE = re.compile(r"\] (\d+)/200 images \|")  # logged after each journaled unit


def _kill_after(process, images: int) -> list[str]:
    """Reads the run's log until it reports >= `images` encoded and journaled, then SIGKILLs
    it. Returns the lines read."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = PROGRESS_LINE.search(line)
        if found and int(found.group(1)) >= images:
            break
    assert process.poll() is None, f"exited before the kill point: {''.join(lines)[-3000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return lines


def _journaled(index_dir) -> int:
    with open(os.path.join(index_dir, "progress.json"), encoding="utf-8") as handle:
        return sum(stop - start for start, stop in json.load(handle)["completed"])


def test_sigkill_and_resume_gives_an_identical_store(tiny_workdir, scenes_dir, tmp_path):
    """Killed at an observed point (the log reports a seeded number of journaled units of 8
    images, of 25), the restarted run encodes only the images the journal lacks."""
    reference = str(tmp_path / "reference")
    process = _precompute_process(tiny_workdir, scenes_dir, reference)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    killed_dir = str(tmp_path / "killed")
    units = int(np.random.default_rng(19).integers(1, 13))
    _kill_after(_precompute_process(tiny_workdir, scenes_dir, killed_dir), 8 * units)
    journaled = _journaled(killed_dir)
    assert 8 * units <= journaled < 200 and not _complete(killed_dir)
    with pytest.raises(IncompleteIndexError):
        ActivationStore.open(killed_dir)
    process = _precompute_process(tiny_workdir, scenes_dir, killed_dir)
    assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    stderr = process.stderr.read()
    # Resumed, not restarted: the journaled images are skipped (a run that ignored the journal
    # would encode all 200).
    assert f"{journaled} of 200 images journaled, encoding the other {200 - journaled}" in stderr
    assert f"precomputed {200 - journaled} images " in stderr, stderr[-2000:]
    for role in ROLES + ("activation_scale",):
        np.testing.assert_array_equal(
            read_array(killed_dir, role), read_array(reference, role), err_msg=role
        )
    # a second run on the finished index is a no-op
    before = os.path.getmtime(os.path.join(killed_dir, "manifest.json"))
    process = _precompute_process(tiny_workdir, scenes_dir, killed_dir)
    assert process.wait(timeout=300) == 0
    assert "nothing to do" in process.stderr.read()
    assert os.path.getmtime(os.path.join(killed_dir, "manifest.json")) == before


def _complete(index_dir):
    path = os.path.join(index_dir, "manifest.json")
    return os.path.exists(path) and read_manifest(index_dir, require_complete=False)["complete"]


@pytest.mark.parametrize("storage", ["bfloat16", "int8"])
def test_storage_modes_stay_close_to_float32(tiny_workdir, scenes_dir, tmp_path, storage):
    exact_dir, lossy_dir = str(tmp_path / "f32"), str(tmp_path / storage)
    precompute(tiny_workdir, scenes_dir, "test", exact_dir, storage="float32", batch_size=64)
    precompute(tiny_workdir, scenes_dir, "test", lossy_dir, storage=storage, batch_size=64)
    ids = np.arange(0, 200, 7)
    exact, mask = ActivationStore.open(exact_dir).gather(ids)
    lossy, _ = ActivationStore.open(lossy_dir).gather(ids)
    scale = np.abs(exact[mask]).max(axis=-1, keepdims=True)
    relative = np.abs(lossy[mask] - exact[mask]) / scale
    assert relative.max() < (1 / 127 if storage == "int8" else 1 / 128)
    assert codecs.bytes_per_region(storage, exact.shape[-1]) < codecs.bytes_per_region(
        "float32", exact.shape[-1]
    )


# ---- refusing a mixed-up resume (issue 13, point 1) ----------------------------------------


def _other_corpus(scenes_dir, tmp_path):
    """A copy of the scenes corpus with the same ids and shapes whose test features differ from
    image 64 on (what a second corpus of the same size looks like to the shapes)."""
    other = str(tmp_path / "other_corpus")
    shutil.copytree(scenes_dir, other, ignore=shutil.ignore_patterns("images"))
    features = np.load(os.path.join(other, "test_ims.npy"))
    features[64:] = features[64:][::-1].copy()
    np.save(os.path.join(other, "test_ims.npy"), features)
    return other


def _killed_after_first_shard(index_dir):
    """Rewinds a finished INDEX to the state a SIGKILL after its first 64-image shard leaves:
    journal [[0, 64]], manifest not complete."""
    manifest = read_manifest(index_dir)
    manifest.update(complete=False, finalized=None, counts=dict(manifest["counts"], regions=None))
    write_manifest(index_dir, manifest)
    with open(os.path.join(index_dir, "progress.json"), "w") as handle:
        json.dump({"completed": [[0, 64]]}, handle)


def test_resume_on_another_corpus_is_refused_naming_both(tiny_workdir, scenes_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    first = precompute(
        tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64, shard_rows=64
    )
    assert set(first["corpus"]) == set(CORPUS_FIELDS)
    assert first["corpus"]["images"] == 200 and first["corpus"]["sampled_images"] == 200
    _killed_after_first_shard(index_dir)
    other = _other_corpus(scenes_dir, tmp_path)
    stored = read_manifest(index_dir, require_complete=False)["corpus"]["content_sha256"]
    with pytest.raises(
        IndexRefusedError,
        match=r"another corpus.*corpus.content_sha256: index "
        rf"'{stored}', --data '[0-9a-f]{{64}}'",
    ):
        precompute(
            tiny_workdir, other, "test", index_dir, storage="float32", batch_size=64, shard_rows=64
        )
    with pytest.raises(IndexRefusedError, match=r"corpus.split: index 'test', --data 'dev'"):
        precompute(tiny_workdir, scenes_dir, "dev", index_dir, storage="float32")
    with pytest.raises(
        IndexRefusedError,
        match=r"'storage.activations_dtype' is 'float32', "
        r"--storage is 'int8'",
    ):
        precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="int8")
    # Nothing was written by the refused runs: the right corpus resumes to the same store.
    assert read_manifest(index_dir, require_complete=False)["complete"] is False
    resumed = precompute(
        tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64, shard_rows=64
    )
    assert resumed["complete"] and resumed["corpus"] == first["corpus"]


def test_rerun_on_a_finished_index_checks_model_and_corpus(tiny_workdir, scenes_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    other = _other_corpus(scenes_dir, tmp_path)
    with pytest.raises(IndexRefusedError, match="another corpus"):
        precompute(tiny_workdir, other, "test", index_dir, storage="float32")
    manifest = read_manifest(index_dir)
    ours = manifest["model_fingerprint"]
    manifest["model_fingerprint"] = "0123456789abcdef"  # as if another checkpoint wrote it
    write_manifest(index_dir, manifest)
    with pytest.raises(
        IndexRefusedError,
        match=rf"'model_fingerprint' is '0123456789abcdef', "
        rf"the checkpoint in --workdir has '{ours}'",
    ):
        precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32")
    # The binary: one line naming the file and the field, exit status 2, no traceback.
    process = _precompute_process(tiny_workdir, scenes_dir, index_dir, "--storage=float32")
    assert process.wait(timeout=300) == 2
    stderr = process.stderr.read()
    assert "Traceback" not in stderr, stderr[-3000:]
    refusal = [line for line in stderr.splitlines() if "refused INDEX" in line]
    assert len(refusal) == 1 and refusal[0].startswith("lateint.index.precompute: refused INDEX: ")
    assert "manifest.json: field 'model_fingerprint'" in refusal[0]


def test_an_index_without_a_corpus_fingerprint_is_not_resumed(tiny_workdir, scenes_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    precompute(
        tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64, shard_rows=64
    )
    _killed_after_first_shard(index_dir)
    manifest = read_manifest(index_dir, require_complete=False)
    del manifest["corpus"]  # written before corpus fingerprints existed
    write_manifest(index_dir, manifest)
    with pytest.raises(IndexRefusedError, match="field 'corpus' is missing"):
        precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32")
