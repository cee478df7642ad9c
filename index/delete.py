r"""Deletes images from a finished INDEX by external id, without a rebuild.

  python -m lateint.index.delete --index=runs/scenes/index --ids=IDS_FILE \
      [--reload_url=http://127.0.0.1:P/admin/reload]

IDS_FILE holds one external id per line. Every id must be in the INDEX (unknown ids are refused,
naming them); ids already deleted are skipped. The rows are tombstoned (a new tombstone set,
lateint.index.first_stage.tombstones) and the next generation is published (lateint.index.generation): every
first stage and the server's exact stages stop returning them at once. The rows stay on disk
until lateint.index.compact. A rerun after a kill publishes the set the killed run wrote.
"""

from __future__ import annotations

import logging

import numpy as np
from absl import app, flags

from lateint import storage
from lateint.index import generation
from lateint.index import manifest as manifest_lib
from lateint.index.first_stage import tombstones

logger = logging.getLogger(__name__)


def read_id_file(path: str) -> list[str]:
    """External ids, one per line (blank lines skipped); raises naming the file if empty."""
    with open(path, encoding="utf-8") as handle:
        ids = [line.rstrip("\r\n") for line in handle]
    ids = [image_id for image_id in ids if image_id.strip()]
    if not ids:
        raise ValueError(f"{path}: expected external ids, one per line; the file has none")
    return ids


def rows_of(index_dir: str, manifest: dict, image_ids: list[str]) -> np.ndarray:
    """Rows [D] int64 of the published generation holding `image_ids`; raises ValueError
    naming the ids it does not hold."""
    rows = {
        image_id: row for row, image_id in enumerate(manifest_lib.read_ids(index_dir, manifest))
    }
    unknown = [image_id for image_id in image_ids if image_id not in rows]
    if unknown:
        raise ValueError(
            f"lateint.index.delete: external ids not in {index_dir!r} (generation "
            f"{generation.generation(manifest)}): {unknown[:10]}; "
            f"{len(unknown)} unknown in all, nothing deleted"
        )
    return np.unique(np.array([rows[image_id] for image_id in image_ids], np.int64))


def delete_images(index_dir: str, image_ids: list[str]) -> dict:
    """Tombstones `image_ids` and publishes the next generation; returns its manifest (the
    published one unchanged when every id was deleted already)."""
    index_dir = storage.require_local(index_dir, "lateint.index.delete")  # generations: hard links
    manifest = manifest_lib.read_manifest(index_dir)
    generation.check_no_other_operation(index_dir, manifest, None)
    manifest = generation.adopt(index_dir, manifest)
    rows = rows_of(index_dir, manifest, image_ids)
    published = (
        tombstones.read_deleted(index_dir, manifest["tombstones"])
        if manifest["tombstones"]
        else np.zeros(0, np.int64)
    )
    wanted = np.union1d(published, rows).astype(np.int64)
    if wanted.size == published.size:
        logger.info(
            f"lateint.index.delete: all {len(image_ids)} ids are deleted already in generation "
            f"{generation.generation(manifest)}; nothing to do"
        )
        return manifest
    current = tombstones.current_record(index_dir)
    if current != manifest["tombstones"] and np.array_equal(
        tombstones.read_deleted(index_dir, current), wanted
    ):
        logger.info(
            f"lateint.index.delete: resuming: tombstone set g{current['generation']} of "
            f"{wanted.size} rows was written by an interrupted delete; publishing it"
        )
    else:
        record = tombstones.write_set(index_dir, wanted)
        logger.info(
            f"lateint.index.delete: wrote tombstone set g{record['generation']}: "
            f"{wanted.size - published.size} new of {wanted.size} deleted rows"
        )
    return generation.publish(
        index_dir,
        manifest,
        {"counts": dict(manifest["counts"], deleted=int(wanted.size))},
        "lateint.index.delete",
    )


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("index", None, "Finished INDEX directory.")
    flags.DEFINE_string("ids", None, "File of external ids to delete, one per line.")
    generation.define_reload_flag()
    flags.mark_flags_as_required(["index", "ids"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    delete_images(FLAGS.index, read_id_file(FLAGS.ids))
    generation.notify(FLAGS.reload_url)


if __name__ == "__main__":
    define_flags()
    app.run(main)
