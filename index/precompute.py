r"""Runs the image tower over a corpus into an INDEX (TensorStore); resumes after a kill.

  python -m lateint.index.precompute --workdir=runs/scenes/model --data=runs/scenes/data --split=test \
      --index=runs/scenes/index [--storage=bfloat16|float32|int8] [--overwrite]

Each shard-aligned unit of images is encoded (region embeddings + layers 0..l-1 + concept and
global heads, jitted, batch split over the devices of a mesh), written through
`lateint.index.store.ActivationStore`, then journaled; a restarted run skips journaled units, so the
finished store equals an uninterrupted run's. A finished INDEX is left alone unless --overwrite.
A resume, and a rerun over a finished INDEX, are refused (one line, exit status 2) unless the
model fingerprint, the corpus fingerprint (lateint.index.corpus_fingerprint: split, shapes, ids and a
content digest) and --storage match the manifest's: a resume can never mix two corpora.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lateint.checkpoint import load_model
from lateint.data import options as data_options
from lateint.data.corpus import load_corpus
from lateint.index import codecs, corpus_fingerprint
from lateint.index import manifest as manifest_lib
from lateint.index.store import ActivationStore
from lateint.inference import Inference, batch_ranges
from lateint.progress import Progress, format_seconds


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
) -> ActivationStore | None:
    """Creates, resumes or (finished and not overwrite) returns None. A resume, and a rerun
    over a finished INDEX, must be for the same model, corpus and storage mode."""
    manifest_path = os.path.join(index_dir, manifest_lib.MANIFEST_FILE)
    if os.path.exists(manifest_path) and not overwrite:
        manifest = manifest_lib.read_manifest(index_dir, require_complete=False)
        _check_same_inputs(manifest_path, manifest, meta, fingerprint, data, storage)
        if manifest["complete"]:
            return None
        store = ActivationStore.resume(index_dir)
        journaled = sum(stop - start for start, stop in store.completed_ranges())
        logging.info(
            "resuming %s: %d of %d images journaled, encoding the other %d",
            index_dir,
            journaled,
            store.num_images,
            store.num_images - journaled,
        )
        return store
    config = model.config
    return ActivationStore.create(
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
    store: ActivationStore, model, corpus, batch_size: int, first_row: int = 0
) -> tuple[int, Progress]:
    """Encodes every unit `store.pending_ranges()` lists and journals it; store row r holds
    corpus image r - first_row (lateint.index.add appends after the published rows). Returns (images
    encoded, Progress)."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {mesh.size} devices")
    logging.info("devices: %s", jax.devices())
    inference = Inference(model, batch_sharding=NamedSharding(mesh, PartitionSpec("data")))
    pending = store.pending_ranges()
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
) -> dict:
    """Writes (or finishes) INDEX for `split` of the corpus at `data`. Returns the manifest."""
    model, meta, corpus = load_model_and_corpus(workdir, data, split)
    config = model.config
    source = {
        "data": os.path.relpath(os.path.abspath(data), os.path.abspath(index_dir)),
        "split": split,
        "checkpoint_step": int(meta["step"]),
    }
    fingerprint = corpus_fingerprint.corpus_fingerprint(corpus, split)
    store = _open_for_writing(
        index_dir, data, corpus, model, meta, storage, source, fingerprint, overwrite, shard_rows
    )
    if store is None:
        logging.info("%s is already complete; nothing to do (--overwrite rebuilds it)", index_dir)
        return manifest_lib.read_manifest(index_dir)
    total, progress = encode_pending(store, model, corpus, batch_size)
    manifest = store.finalize()
    logging.info(
        "precomputed %d images (%d regions) into %s in %s (%.1f images/s); storage %s,"
        " %d bytes per stored region",
        total,
        manifest["counts"]["regions"],
        index_dir,
        format_seconds(progress.elapsed),
        progress.rate(total),
        storage,
        codecs.bytes_per_region(storage, config.stored_dim),
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
    flags.mark_flags_as_required(["workdir", "data", "index"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
