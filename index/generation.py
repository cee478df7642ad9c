"""Generations of a live INDEX: the manifest switch that publishes a change, and the cleanup.

A generation is what one INDEX/manifest.json names: the arrays (fields 'arrays', 'shapes'), the
ids file ('ids'), every first stage's record ('first_stage') and the tombstone set
('tombstones'). lateint.index.add, lateint.index.delete and lateint.index.compact first write what the next generation
needs where no published generation reads: rows past the published N (the activation arrays and
the first stages' append-only deltas), new g<n> folders (compacted arrays, postings, tombstone
sets) and new ids files. `commit` then writes the new manifest atomically, last: a reader sees
the generation before or after, never half. The files of the generation before stay (its
manifest's fields are kept under 'previous'), so a server that has not reloaded yet keeps
answering; the next commit removes them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.request

from absl import flags

from lateint import atomic, kill_points
from lateint.index import manifest as manifest_lib
from lateint.index.first_stage import build as first_stage_build
from lateint.index.first_stage import postings, records, tombstones

logger = logging.getLogger(__name__)

PUBLISHED_FIELDS = ("arrays", "ids", "first_stage", "tombstones")
STORE_FOLDER = "store"  # compacted activation arrays: INDEX/store/g<generation>/<role>
IDS_FOLDER = "ids"  # ids files of later generations: INDEX/ids/g<generation>.txt


def generation(manifest: dict) -> int:
    """The manifest's generation (0 for an INDEX no add / delete / compact has changed)."""
    return int(manifest.get("generation", 0))


def published_state(index_dir: str, manifest: dict) -> dict:
    """{'first_stage': {name: record}, 'tombstones': record | None} that `manifest` publishes.

    A generation-0 manifest has no snapshot: then what readers read is the stage.json files
    and tombstones.json as they are now."""
    if "first_stage" in manifest:
        return {"first_stage": manifest["first_stage"], "tombstones": manifest["tombstones"]}
    names = first_stage_build.built_stages(index_dir)
    return {
        "first_stage": {name: records.read_record(index_dir, name) for name in names},
        "tombstones": tombstones.current_record(index_dir),
    }


def adopt(index_dir: str, manifest: dict) -> dict:
    """Writes the snapshot of what a generation-0 manifest publishes into it (same generation,
    same content for readers), before a writer changes any stage.json; returns the manifest."""
    if "first_stage" in manifest:
        return manifest
    adopted = dict(manifest, **published_state(index_dir, manifest))
    manifest_lib.write_manifest(index_dir, adopted)
    return adopted


def writer_state(index_dir: str) -> dict:
    """The same fields as `published_state`, read from the stage.json files and tombstones.json
    as the writer left them (what `commit` publishes)."""
    names = first_stage_build.built_stages(index_dir)
    return {
        "first_stage": {name: records.read_record(index_dir, name) for name in names},
        "tombstones": tombstones.current_record(index_dir),
    }


def ids_file(next_generation: int) -> str:
    return f"{IDS_FOLDER}/g{next_generation}.txt"


def commit(index_dir: str, manifest: dict, changes: dict) -> dict:
    """Publishes generation(manifest) + 1: `manifest` updated with `changes` (any top-level
    fields, e.g. shapes, counts, ids, arrays, first_stage, tombstones), written atomically.
    Then removes the files neither it nor `manifest`'s generation reads. Returns it."""
    before = dict(manifest, **published_state(index_dir, manifest))
    after = dict(
        before,
        **changes,
        generation=generation(manifest) + 1,
        complete=True,
        finalized=manifest_lib.now_utc(),
        previous={field: before[field] for field in PUBLISHED_FIELDS},
    )
    manifest_lib.write_manifest(index_dir, after)
    remove_unpublished(index_dir, after)
    return after


def publish(
    index_dir: str, manifest: dict, changes: dict, operation: str, journal: str | None = None
) -> dict:
    """`commit` of the writer's first stages and tombstones with `changes`, then removes the
    operation's journal (after the commit: a kill between the two leaves a journal that
    `check_no_other_operation` recognises as published). Returns the new manifest.

    Crash tests hold the writer at the kill point "publish" (lateint.kill_points): the
    operation's data is written, its generation not yet committed."""
    kill_points.hold("publish")
    published = commit(index_dir, manifest, dict(changes, **writer_state(index_dir)))
    if journal:
        remove_journal(index_dir, journal)
    images, deleted = published["shapes"]["images"], published["counts"].get("deleted", 0)
    logger.info(
        f"{operation}: published generation {published['generation']} of {index_dir}: "
        f"{images - deleted} of {images} images alive"
    )
    return published


def remove_unpublished(index_dir: str, manifest: dict) -> None:
    """Deletes arrays, ids files and first-stage generations that neither `manifest` nor its
    'previous' generation names (what killed or superseded writers left behind)."""
    views = [manifest, manifest.get("previous") or manifest]
    kept_arrays = {path for view in views for path in view["arrays"].values()}
    kept_ids = {view["ids"]["file"] for view in views}
    for role in manifest_lib.ARRAY_ROLES:  # generation 0's arrays sit at the top level
        if role not in kept_arrays and os.path.isdir(os.path.join(index_dir, role)):
            shutil.rmtree(os.path.join(index_dir, role))
    store_folder = os.path.join(index_dir, STORE_FOLDER)
    for entry in sorted(os.listdir(store_folder)) if os.path.isdir(store_folder) else []:
        if not any(path.startswith(f"{STORE_FOLDER}/{entry}/") for path in kept_arrays):
            shutil.rmtree(os.path.join(store_folder, entry))
    ids_folder = os.path.join(index_dir, IDS_FOLDER)
    candidates = [manifest_lib.IDS_FILE] + [
        f"{IDS_FOLDER}/{entry}"
        for entry in (os.listdir(ids_folder) if os.path.isdir(ids_folder) else [])
    ]
    for candidate in candidates:
        if candidate not in kept_ids and os.path.exists(os.path.join(index_dir, candidate)):
            os.remove(os.path.join(index_dir, candidate))
    for name, record in manifest["first_stage"].items():
        postings.remove_stale_generations(
            index_dir, records.generations_prefix(name), record["generation"]
        )
    if manifest["tombstones"]:
        postings.remove_stale_generations(
            index_dir, tombstones.PREFIX, manifest["tombstones"]["generation"]
        )


# ---- journals of operations not yet published ----------------------------------------------


def read_journal(index_dir: str, name: str) -> dict | None:
    """INDEX/<name> (add.json, compact.json) or None; raises naming the file if unreadable."""
    path = os.path.join(index_dir, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from error


def write_journal(index_dir: str, name: str, journal: dict) -> None:
    atomic.write_json(os.path.join(index_dir, name), journal, indent=1, sort_keys=True)


def remove_journal(index_dir: str, name: str) -> None:
    path = os.path.join(index_dir, name)
    if os.path.exists(path):
        os.remove(path)


def check_no_other_operation(index_dir: str, manifest: dict, own: str | None) -> None:
    """Refuses to start while another operation's journal is pending on this generation (one
    writer per INDEX; rerun that operation to finish it). A journal left by an operation that
    was published (killed after its commit) is removed."""
    for name in ("add.json", "compact.json"):
        journal = read_journal(index_dir, name)
        if journal is None:
            continue
        if journal.get("from_generation") != generation(manifest):
            remove_journal(index_dir, name)  # published already: the commit came first
        elif name != own:
            raise RuntimeError(
                f"{os.path.join(index_dir, name)}: an unfinished "
                f"{name.split('.')[0]} of generation {generation(manifest)} is "
                f"journaled; rerun index.{name.split('.')[0]} to finish it first"
            )


# ---- telling a server -------------------------------------------------------------------------


def define_reload_flag() -> None:
    """--reload_url, shared by lateint.index.add / delete / compact."""
    flags.DEFINE_string(
        "reload_url",
        None,
        "After publishing, POST here (a server's "
        "http://127.0.0.1:PORT/admin/reload) so it serves the new generation.",
    )


def notify(url: str | None, timeout_s: float = 600.0) -> None:
    """POSTs to a server's /admin/reload (nothing when url is None); raises on failure."""
    if not url:
        return
    request = urllib.request.Request(
        url, data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        logger.info("%s: %s", url, response.read().decode("utf-8", "replace"))
