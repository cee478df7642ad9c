r"""Folds an INDEX's deletions and first-stage deltas into new base structures.

  python -m lateint.index.compact --index=runs/scenes/index [--recluster] \
      [--reload_url=http://127.0.0.1:P/admin/reload]

Copies the rows that are not deleted, in order, into new activation arrays
(INDEX/store/g<generation>/), writes their ids, rewrites every first stage without the deleted
images and with its delta folded into the base (renumbered rows), clears the tombstones, and
publishes the next generation (lateint.index.generation). The result equals an INDEX built from scratch
over the surviving images with the same first-stage dictionary; --recluster retrains the concept
dictionary over them instead (advised once the added images outnumber those the dictionary was
trained on: docs/live_index.md). INDEX/compact.json journals the copied rows and the finished
stages, so a rerun after a kill resumes where it stopped.
"""

from __future__ import annotations

import logging

import numpy as np
from absl import app, flags

from lateint import storage
from lateint.index import codecs, generation
from lateint.index import manifest as manifest_lib
from lateint.index.arrays import create as create_array
from lateint.index.arrays import open_existing
from lateint.index.first_stage import build as first_stage_build
from lateint.index.first_stage import tombstones
from lateint.index.store import ActivationStore

logger = logging.getLogger(__name__)

JOURNAL = "compact.json"
COPY_SHARDS = 4  # shards copied between two journal entries


def _journal(index_dir: str, manifest: dict, recluster: bool) -> dict:
    fresh = {
        "from_generation": generation.generation(manifest),
        "recluster": bool(recluster),
        "rows_copied": 0,
        "stages": [],
    }
    journal = generation.read_journal(index_dir, JOURNAL)
    if journal is None:
        generation.write_journal(index_dir, JOURNAL, fresh)
        logger.info(
            f"lateint.index.compact: starting on generation {fresh['from_generation']} of {index_dir}"
        )
        return fresh
    if journal.get("recluster") != fresh["recluster"]:
        raise ValueError(
            f"{index_dir}/{JOURNAL}: an unfinished compact with recluster="
            f"{journal.get('recluster')} is journaled; this one has "
            f"recluster={fresh['recluster']}: rerun it with the same flag"
        )
    logger.info(
        f"lateint.index.compact: resuming on generation {journal['from_generation']} of "
        f"{index_dir}: {journal['rows_copied']} rows copied, stages done "
        f"{journal['stages']}"
    )
    return journal


def _copy_rows(index_dir: str, source: ActivationStore, target: dict, kept, journal: dict) -> None:
    """Copies rows `kept` [N'] of every array, as stored, to rows 0..N'-1 of the target
    arrays, journaling every COPY_SHARDS shards."""
    context = codecs.io_context()
    shard_rows = source.shard_rows
    arrays = {}
    for role, path in target.items():
        shape, dtype = manifest_lib.array_layout(source.manifest)[role]
        if journal["rows_copied"] == 0:  # a fresh copy overwrites a killed run's arrays
            arrays[role] = create_array(
                index_dir,
                path,
                (kept.size,) + shape[1:],
                dtype,
                chunk_rows=shard_rows,
                inner_rows=1,
                context=context,
            )
        else:
            arrays[role] = open_existing(index_dir, path, context)
    step = shard_rows * COPY_SHARDS
    for start in range(journal["rows_copied"], kept.size, step):
        stop = min(kept.size, start + step)
        futures = [
            arrays[role][start:stop].write(source.read_stored(role, kept[start:stop]))
            for role in target
        ]
        for future in futures:
            future.result()
        journal["rows_copied"] = stop
        generation.write_journal(index_dir, JOURNAL, journal)
        logger.info(f"lateint.index.compact: copied rows [{start}, {stop}) of {kept.size}")


def compact_index(index_dir: str, recluster: bool = False) -> dict:
    """Compacts the published generation of INDEX; returns the new manifest."""
    index_dir = storage.require_local(index_dir, "lateint.index.compact")  # generations: hard links
    manifest = manifest_lib.read_manifest(index_dir)
    generation.check_no_other_operation(index_dir, manifest, JOURNAL)
    manifest = generation.adopt(index_dir, manifest)
    journal = _journal(index_dir, manifest, recluster)
    next_generation = journal["from_generation"] + 1
    source = ActivationStore.open(index_dir)
    alive = ~tombstones.bitmap(index_dir, source.num_images, manifest)  # [N] bool
    kept = np.flatnonzero(alive)
    target = {
        role: f"{generation.STORE_FOLDER}/g{next_generation}/{role}" for role in manifest["arrays"]
    }
    _copy_rows(index_dir, source, target, kept, journal)
    ids = manifest_lib.write_ids(
        index_dir, [source.image_ids[row] for row in kept], generation.ids_file(next_generation)
    )
    compacted = dict(
        manifest,
        arrays=target,
        ids=ids,
        shapes=dict(manifest["shapes"], images=int(kept.size)),
        counts=dict(manifest["counts"], images=int(kept.size), deleted=0),
    )
    new_store = ActivationStore(index_dir, compacted, False, codecs.io_context())
    compacted["counts"]["regions"] = new_store.count_regions(0, new_store.num_images)
    for name in first_stage_build.built_stages(index_dir, manifest):
        if name in journal["stages"]:
            continue
        record = first_stage_build.compact_stage(
            index_dir, manifest, name, alive, new_store if recluster else None
        )
        journal["stages"].append(name)
        generation.write_journal(index_dir, JOURNAL, journal)
        logger.info(
            f"lateint.index.compact: first stage {name!r} rewritten: {record['num_images']} images"
        )
    tombstones.clear(index_dir)
    logger.info(f"lateint.index.compact: {source.num_images - kept.size} deleted rows dropped")
    return generation.publish(
        index_dir,
        manifest,
        {key: compacted[key] for key in ("arrays", "ids", "shapes", "counts")},
        "lateint.index.compact",
        JOURNAL,
    )


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("index", None, "Finished INDEX directory.")
    flags.DEFINE_bool(
        "recluster",
        False,
        "Retrain the concept dictionary over the surviving "
        "images instead of keeping the published one.",
    )
    generation.define_reload_flag()
    flags.mark_flags_as_required(["index"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    compact_index(FLAGS.index, FLAGS.recluster)
    generation.notify(FLAGS.reload_url)


if __name__ == "__main__":
    define_flags()
    app.run(main)
