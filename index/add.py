r"""Adds images to a finished INDEX without a rebuild; resumes after a kill.

  python -m lateint.index.add --workdir=runs/scenes/model --index=runs/scenes/index \
      --data=NEW_DATA --split=test [--batch_size=256] [--reload_url=http://127.0.0.1:P/admin/reload]

Runs the image tower over the new images (lateint.index.precompute's encoder and journal: shard-aligned
units journaled in INDEX/progress.json, so a rerun encodes only what is missing), appends them to
the activation store and to every built first stage (append-only deltas, the published
dictionaries), then publishes the next generation (lateint.index.generation): readers see the INDEX
before or after, never half. The model fingerprint must match the INDEX's and every external id
must be new (a duplicate is refused, naming it). INDEX/add.json journals what the add is for
(corpus, ids digest, generation): a rerun with other data is refused, naming the field.
Rows are bit-identical to a precompute of the same images with the same --batch_size.
"""

from __future__ import annotations

import hashlib
import logging
import os

from absl import app, flags

from lateint import storage
from lateint.index import generation
from lateint.index import manifest as manifest_lib
from lateint.index import precompute as precompute_lib
from lateint.index.first_stage import build as first_stage_build
from lateint.index.first_stage import concepts, sources, tombstones
from lateint.index.store import ActivationStore
from lateint.progress import format_seconds

logger = logging.getLogger(__name__)

JOURNAL = "add.json"


def check_new_ids(index_dir: str, manifest: dict, new_ids: list[str]) -> list[str]:
    """The published ids [N]; raises ValueError naming ids that repeat or are already there."""
    seen, repeated = set(), []
    for image_id in new_ids:
        if image_id in seen:
            repeated.append(image_id)
        seen.add(image_id)
    if repeated:
        raise ValueError(
            f"lateint.index.add: the new images repeat external ids {repeated[:5]} "
            f"({len(repeated)} repeats)"
        )
    published = manifest_lib.read_ids(index_dir, manifest)
    rows = {image_id: row for row, image_id in enumerate(published)}
    taken = [image_id for image_id in new_ids if image_id in rows]
    if taken:
        deleted = set(tombstones.bitmap(index_dir, len(published), manifest).nonzero()[0])
        shown = [
            f"{image_id!r} (row {rows[image_id]}"
            f"{', deleted: run lateint.index.compact first' if rows[image_id] in deleted else ''})"
            for image_id in taken[:5]
        ]
        raise ValueError(
            f"lateint.index.add: external ids already in {index_dir!r}: "
            f"{', '.join(shown)}; {len(taken)} in all"
        )
    return published


def _journal_for(index_dir: str, manifest: dict, data: str, split: str, new_ids) -> dict:
    digest = hashlib.sha256("".join(f"{image_id}\n" for image_id in new_ids).encode()).hexdigest()
    published = manifest["shapes"]["images"]
    return {
        "from_generation": generation.generation(manifest),
        "start": published,
        "stop": published + len(new_ids),
        "ids_sha256": digest,
        "split": split,
        "data": os.path.relpath(os.path.abspath(data), os.path.abspath(index_dir)),
        "model_fingerprint": manifest["model_fingerprint"],
    }


def _start_or_resume(index_dir: str, journal: dict) -> bool:
    """Writes the journal of a new add, or checks a pending one is this add. True: resuming."""
    pending = generation.read_journal(index_dir, JOURNAL)
    if pending is None:
        # Ranges an abandoned add journaled past the published rows must not count as done.
        manifest_lib.reset_completed(index_dir, journal["start"])
        generation.write_journal(index_dir, JOURNAL, journal)
        return False
    for field, expected in journal.items():
        if pending.get(field) != expected:
            raise ValueError(
                f"{os.path.join(index_dir, JOURNAL)}: an unfinished add with "
                f"field {field!r} = {pending.get(field)!r} is journaled, this add "
                f"has {expected!r}: rerun that add to finish it, or delete "
                f"{JOURNAL} to abandon it"
            )
    return True


def add_images(workdir: str, data: str, split: str, index_dir: str, batch_size: int = 256) -> dict:
    """Appends `split` of the corpus at `data` to INDEX and publishes the next generation.

    Returns the new manifest."""
    index_dir = storage.require_local(index_dir, "lateint.index.add")  # generations: hard links
    model, meta, corpus = precompute_lib.load_model_and_corpus(workdir, data, split)
    manifest = manifest_lib.read_manifest(index_dir)
    manifest_lib.check_fingerprint(manifest, meta["fingerprint"])
    regions = manifest["shapes"]["regions"]
    if corpus.max_regions != regions:
        raise ValueError(
            f"{data} split {split!r}: images have {corpus.max_regions} region "
            f"slots, the INDEX {regions} (field 'shapes.regions')"
        )
    generation.check_no_other_operation(index_dir, manifest, JOURNAL)
    manifest = generation.adopt(index_dir, manifest)
    new_ids = [str(image_id) for image_id in corpus.image_ids]
    published = check_new_ids(index_dir, manifest, new_ids)
    journal = _journal_for(index_dir, manifest, data, split, new_ids)
    start, stop = journal["start"], journal["stop"]
    resuming = _start_or_resume(index_dir, journal)
    ids = manifest_lib.write_ids(
        index_dir, published + new_ids, generation.ids_file(generation.generation(manifest) + 1)
    )
    store = ActivationStore.extend(index_dir, ids)
    left = sum(high - low for low, high in store.pending_ranges())
    logger.info(
        f"lateint.index.add: {'resuming' if resuming else 'starting'} the add of "
        f"{stop - start} images to {index_dir} (rows [{start}, {stop}), generation "
        f"{journal['from_generation']} -> {journal['from_generation'] + 1}): "
        f"{stop - start - left} already journaled, {left} to encode"
    )
    encoded, progress = precompute_lib.encode_pending(store, model, corpus, batch_size, start)
    logger.info(
        f"lateint.index.add: encoded {encoded} images in {format_seconds(progress.elapsed)}"
    )
    if first_stage_build.built_stages(index_dir, manifest):
        new_rows = sources.RowWindow(store, start, stop)
        for name, record in first_stage_build.add(index_dir, new_rows, start).items():
            logger.info(
                f"lateint.index.add: first stage {name!r} now holds {record['num_images']} images"
            )
            if name == "concepts":
                logger.info(
                    f"lateint.index.add: concept dictionary: {concepts.recluster_advice(record)}"
                )
    added = dict(journal, images=stop - start, generation=journal["from_generation"] + 1)
    source = dict(manifest.get("source") or {})
    source["added"] = list(source.get("added", [])) + [
        {key: added[key] for key in ("data", "split", "images", "generation")}
    ]
    regions = manifest["counts"]["regions"] + store.count_regions(start, stop)
    return generation.publish(
        index_dir,
        manifest,
        {
            "shapes": store.manifest["shapes"],
            "ids": ids,
            "source": source,
            "counts": dict(manifest["counts"], images=stop, regions=regions),
        },
        "lateint.index.add",
        JOURNAL,
    )


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a binary, so importing `add_images` claims no flag names."""
    flags.DEFINE_string("workdir", None, "Training workdir of the INDEX's model.")
    flags.DEFINE_string("index", None, "Finished INDEX directory to add to.")
    flags.DEFINE_string("data", None, "Corpus directory holding the new images.")
    flags.DEFINE_string("split", "test", "Split of that corpus to add.")
    flags.DEFINE_integer(
        "batch_size", 256, "Images per jitted batch (equal to precompute's for bit-identical rows)."
    )
    generation.define_reload_flag()
    flags.mark_flags_as_required(["workdir", "index", "data"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    add_images(FLAGS.workdir, FLAGS.data, FLAGS.split, FLAGS.index, FLAGS.batch_size)
    generation.notify(FLAGS.reload_url)


if __name__ == "__main__":
    define_flags()
    app.run(main)
