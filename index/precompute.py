r"""Runs the image tower over a corpus into an INDEX (TensorStore); resumes after a kill.

  python -m lateint.index.precompute --workdir=runs/scenes/model --data=runs/scenes/data --split=test \
      --index=runs/scenes/index [--storage=bfloat16|float32|int8] [--overwrite] \
      [--num_workers=W --worker_index=i | --distributed]

Each shard-aligned unit of images is encoded (region embeddings + layers 0..l-1 + concept and
global heads, jitted, batch split over the devices of a mesh), written through
`lateint.index.store.ActivationStore`, then journaled; a restarted run skips journaled units, so the
finished store equals an uninterrupted run's. A finished INDEX is left alone unless --overwrite.
A resume, and a rerun over a finished INDEX, are refused (one line, exit status 2) unless the
model fingerprint, the corpus fingerprint (lateint.index.corpus_fingerprint: split, shapes, ids and a
content digest) and --storage match the manifest's: a resume can never mix two corpora.

W workers (processes on any hosts that see the INDEX) each run this binary with their
--worker_index, in any order and at any time: each encodes the shards it owns, journals them in its
own file and the one that sees every shard journaled finalizes (lateint.index.workers). With
--distributed, jax.distributed.initialize() (cluster auto-detection, or --coordinator_address) gives
W and i; the workers still exchange nothing through it.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lateint import distributed
from lateint import storage as storage_lib
from lateint.checkpoint import load_model
from lateint.data import options as data_options
from lateint.data.corpus import load_corpus
from lateint.index import codecs, corpus_fingerprint, workers
from lateint.index import manifest as manifest_lib
from lateint.index.store import ActivationStore
from lateint.inference import Inference, batch_ranges
from lateint.progress import Progress, format_seconds

WAIT_FOR_CREATOR_S = 3600  # how long a worker waits for worker 0's manifest (object storage)
POLL_S = 1.0


def _check_same_inputs(
    manifest_path: str, manifest: dict, meta: dict, fingerprint: dict, data: str, storage: str
) -> None:
    """Refuses (IndexRefusedError naming both sides) an INDEX, finished or not, written by
    another model, from another corpus or with another storage mode than this run's."""
    if manifest["model_fingerprint"] != meta["fingerprint"]:
        raise manifest_lib.IndexRefusedError(
            f"{manifest_path}: field 'model_fingerprint' is {manifest['model_fingerprint']!r}, "
            f"the checkpoint in --workdir has {meta['fingerprint']!r}: written by another model; "
            "pass --overwrite to rebuild it with this one"
        )
    corpus_fingerprint.check_corpus(manifest_path, manifest.get("corpus"), fingerprint, data)
    stored = manifest["storage"]["activations_dtype"]
    if stored != storage:
        raise manifest_lib.IndexRefusedError(
            f"{manifest_path}: field 'storage.activations_dtype' is {stored!r}, --storage is "
            f"{storage!r}; pass --overwrite to rebuild"
        )


def _open_for_writing(
    index_dir: str,
    data: str,
    corpus,
    model,
    meta: dict,
    storage: str,
    source: dict,
    fingerprint: dict,
    overwrite: bool,
    shard_rows: int,
    shared: bool = False,
    worker_index: int = 0,
) -> ActivationStore | None:
    """Creates, resumes or (finished and not overwrite) returns None. A resume, a rerun over a
    finished INDEX and (shared: one of several workers) joining an INDEX another worker created
    must be for the same model, corpus, storage mode and shard size. On object storage a
    shared INDEX is created by worker 0 alone; the others wait for its manifest."""
    manifest_path = storage_lib.join(index_dir, manifest_lib.MANIFEST_FILE)

    def finished(manifest: dict) -> bool:  # refuses another run's INDEX; True if complete
        _check_same_inputs(manifest_path, manifest, meta, fingerprint, data, storage)
        if shared:
            _check_same_layout(manifest_path, manifest, shard_rows)
        return manifest["complete"]

    if shared and worker_index != 0 and storage_lib.is_remote(index_dir):
        _wait_for_manifest(manifest_path, worker_index)
    if storage_lib.exists(manifest_path) and not overwrite:
        if finished(manifest_lib.read_manifest(index_dir, require_complete=False)):
            return None
        try:
            store = ActivationStore.resume(index_dir)
        except FileExistsError:  # another worker finalized it meanwhile
            return None
        journaled = sum(stop - start for start, stop in store.completed_ranges())
        logging.info(
            "resuming %s: %d of %d images journaled%s",
            index_dir,
            journaled,
            store.num_images,
            " by all workers" if shared else f", encoding the other {store.num_images - journaled}",
        )
        return store
    config = model.config
    store = ActivationStore.create(
        index_dir,
        image_ids=corpus.image_ids,
        regions=corpus.max_regions,
        hidden=config.stored_dim,
        concept_dim=config.concept_dim,
        model_fingerprint=meta["fingerprint"],
        split_layer=config.split_layer,
        storage_dtype=storage,
        compression_dim=config.compression_dim,
        source=source,
        corpus=fingerprint,
        overwrite=overwrite,
        shard_rows=shard_rows,
        shared=shared,
    )
    # shared: another worker may have published the manifest first; it must be this run's
    return None if shared and finished(store.manifest) else store


def _wait_for_manifest(manifest_path: str, worker_index: int) -> None:
    """Polls until worker 0 has published the manifest (object storage, see _open_for_writing),
    logging every 30 s; TimeoutError after WAIT_FOR_CREATOR_S."""
    began = time.monotonic()
    logged = began
    while not storage_lib.exists(manifest_path):
        now = time.monotonic()
        if now - began > WAIT_FOR_CREATOR_S:
            raise TimeoutError(
                f"worker {worker_index}: {manifest_path} did not appear within "
                f"{WAIT_FOR_CREATOR_S} s: start worker 0, which creates a shared INDEX on "
                "object storage"
            )
        if now - logged >= 30:
            logging.info(
                "worker %d: waiting for worker 0 to create %s", worker_index, manifest_path
            )
            logged = now
        time.sleep(POLL_S)


def _check_same_layout(manifest_path: str, manifest: dict, shard_rows: int) -> None:
    """Refuses, for a worker joining others, an INDEX whose shards are not --shard_rows images:
    the workers were started with different flags (a lone run just uses the INDEX's value)."""
    stored = manifest["layout"]["shard_rows"]
    if stored != shard_rows:
        raise manifest_lib.IndexRefusedError(
            f"{manifest_path}: field 'layout.shard_rows' is {stored}, --shard_rows is "
            f"{shard_rows}; pass the same value to every run (or --overwrite to rebuild)"
        )


def load_model_and_corpus(workdir: str, data: str, split: str):
    """(model, meta, corpus), refusing a corpus whose feature width the model does not take."""
    model, meta = load_model(workdir)
    corpus = load_corpus(data, split)
    if corpus.feature_dim != model.config.region_feature_dim:
        raise ValueError(
            f"{data} split {split!r}: region features have {corpus.feature_dim} "
            f"dims, the model in {workdir} expects {model.config.region_feature_dim}"
        )
    return model, meta, corpus


def encode_pending(
    store: ActivationStore, model, corpus, batch_size: int, first_row: int = 0, units=None
) -> tuple[int, Progress]:
    """Encodes every unit of `units` (default: all `store.pending_ranges()`) and journals it;
    store row r holds corpus image r - first_row (lateint.index.add appends after the published
    rows). Runs on this process's devices only. Returns (images encoded, Progress)."""
    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("data",))
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {mesh.size} devices")
    logging.info("devices: %s", devices)
    inference = Inference(model, batch_sharding=NamedSharding(mesh, PartitionSpec("data")))
    pending = store.pending_ranges() if units is None else units
    total = sum(stop - start for start, stop in pending)
    progress = Progress(total, 0, "images", 1, "images")
    done = 0
    region_mask = corpus.region_mask
    for unit_start, unit_stop in pending:
        for start, stop in batch_ranges(unit_stop - unit_start, batch_size):
            start, stop = unit_start + start - first_row, unit_start + stop - first_row
            tower, stored = inference.encode_images(
                np.asarray(corpus.regions[start:stop], np.float32),
                np.asarray(corpus.boxes[start:stop], np.float32),
                region_mask[start:stop],
                batch_size,
            )
            store.write_batch(
                first_row + start,
                {
                    "activations": stored,
                    "region_mask": tower.mask,
                    "concepts": tower.concepts,
                    "global": tower.global_vector,
                },
            )
            done += stop - start
        store.mark_completed(unit_start, unit_stop)
        progress.log(done)
    return total, progress


def precompute(
    workdir: str,
    data: str,
    split: str,
    index_dir: str,
    storage: str = "bfloat16",
    batch_size: int = 256,
    overwrite: bool = False,
    shard_rows: int = 1024,
    num_workers: int = 1,
    worker_index: int = 0,
) -> dict:
    """Writes (or finishes) INDEX for `split` of the corpus at `data`, as worker `worker_index`
    of `num_workers` (its shards only; see lateint.index.workers). Returns the manifest on disk,
    complete once every worker's shards are journaled."""
    num_workers, worker_index = workers.resolve(num_workers, worker_index)
    if overwrite and num_workers > 1:
        raise ValueError(
            f"--overwrite with --num_workers={num_workers} would let one worker delete what the "
            f"others wrote: delete {index_dir} first, or rebuild with --num_workers=1"
        )
    index_dir = storage_lib.normalize(index_dir)
    model, meta, corpus = load_model_and_corpus(workdir, data, split)
    config = model.config
    source = {
        # relative to a local INDEX (the two move together); absolute beside a remote one
        "data": os.path.abspath(data)
        if storage_lib.is_remote(index_dir)
        else os.path.relpath(os.path.abspath(data), os.path.abspath(index_dir)),
        "split": split,
        "checkpoint_step": int(meta["step"]),
    }
    fingerprint = corpus_fingerprint.corpus_fingerprint(corpus, split)
    store = _open_for_writing(
        index_dir,
        data,
        corpus,
        model,
        meta,
        storage,
        source,
        fingerprint,
        overwrite,
        shard_rows,
        shared=num_workers > 1,
        worker_index=worker_index,
    )
    if store is None:
        logging.info("%s is already complete; nothing to do (--overwrite rebuilds it)", index_dir)
        return manifest_lib.read_manifest(index_dir)
    units = store.pending_ranges()
    if num_workers > 1:
        store.journal = manifest_lib.worker_journal(worker_index, num_workers)
        units = workers.owned_units(units, store.shard_rows, num_workers, worker_index)
        logging.info(
            "worker %d of %d: %d units of %d images to encode (%s)",
            worker_index,
            num_workers,
            len(units),
            sum(stop - start for start, stop in units),
            store.journal,
        )
    total, progress = encode_pending(store, model, corpus, batch_size, units=units)
    manifest = workers.finalize_if_covered(store, num_workers, worker_index)
    logging.info(
        "precomputed %d images into %s in %s (%.1f images/s)%s; storage %s,"
        " %d bytes per stored region; INDEX %s",
        total,
        index_dir,
        format_seconds(progress.elapsed),
        progress.rate(total),
        f" as worker {worker_index} of {num_workers}" if num_workers > 1 else "",
        storage,
        codecs.bytes_per_region(storage, config.stored_dim),
        f"complete ({manifest['counts']['regions']} regions)"
        if manifest["complete"]
        else "not complete yet (other workers' shards are missing)",
    )
    return manifest


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a binary, so importing `precompute` claims no flag names."""
    flags.DEFINE_string("workdir", None, "Training workdir (model config + checkpoints).")
    data_options.define_flags()  # --data and the shared --data_* reader options
    flags.DEFINE_string("split", "test", "Split of the corpus to index.")
    flags.DEFINE_string("index", None, "INDEX directory to write.")
    flags.DEFINE_enum(
        "storage",
        "bfloat16",
        ["float32", "bfloat16", "int8"],
        "Storage dtype of the activations (int8: per-region scale).",
    )
    flags.DEFINE_integer("batch_size", 256, "Images per jitted batch.")
    flags.DEFINE_bool("overwrite", False, "Rebuild a finished INDEX.")
    flags.DEFINE_integer("shard_rows", 1024, "Images per shard file (and per resume unit).")
    flags.DEFINE_integer(
        "num_workers",
        None,
        "Precompute workers writing this INDEX (default 1, or jax's "
        "process count with --distributed).",
    )
    flags.DEFINE_integer(
        "worker_index",
        None,
        "This worker's index in [0, num_workers) (default 0, or jax's "
        "process index with --distributed); e.g. $SLURM_ARRAY_TASK_ID, $JOB_COMPLETION_INDEX.",
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() first (cluster auto-detection, "
        "or --coordinator_address with --num_workers and --worker_index).",
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of jax.distributed's coordinator (process 0)."
    )
    flags.mark_flags_as_required(["workdir", "data", "index"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.distributed:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_workers, FLAGS.worker_index)
    elif FLAGS.coordinator_address:
        raise app.UsageError("--coordinator_address needs --distributed")
    manifest_lib.exit_on_refusal(
        "lateint.index.precompute",
        precompute,
        FLAGS.workdir,
        data_options.from_flags(),
        FLAGS.split,
        FLAGS.index,
        FLAGS.storage,
        FLAGS.batch_size,
        FLAGS.overwrite,
        FLAGS.shard_rows,
        FLAGS.num_workers,
        FLAGS.worker_index,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
