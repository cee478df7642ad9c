"""Deleted images: a tombstone set shared by every first stage of an index.

Stored as the sorted ids [D] int64 in INDEX/first_stage/tombstones/g<generation>/deleted, with
INDEX/first_stage/tombstones/tombstones.json naming the committed generation. A delete writes the
whole new set as the next generation, commits the json, then removes the old folder, so a killed
delete leaves the old set intact. Stages turn it into a bitmap [N] bool at load.

Readers of an INDEX that changed generation take the set its manifest publishes (field
'tombstones': this json record, or null for none; `committed_bitmap`), not the newest json.
"""

from __future__ import annotations

import numpy as np

from lateint import storage
from lateint.index import store
from lateint.index.first_stage import postings, records

PREFIX = "first_stage/tombstones"
RECORD_FILE = "tombstones.json"


def _record_path(index_dir: str) -> str:
    return storage.join(records.folder(index_dir, PREFIX), RECORD_FILE)


def current_record(index_dir: str) -> dict | None:
    """The newest committed tombstones.json ({'generation', 'count'}), None when absent."""
    try:
        return storage.read_json(_record_path(index_dir))
    except FileNotFoundError:
        return None


def read_deleted(index_dir: str, record: dict | None = None) -> np.ndarray:
    """Sorted distinct deleted image ids [D] int64 (empty when nothing was deleted).

    record: the tombstones record to read (default: the newest tombstones.json).
    """
    path = _record_path(index_dir)
    record = record or current_record(index_dir)
    if record is None:
        return np.zeros(0, np.int64)
    deleted = store.read_array(index_dir, f"{PREFIX}/g{record['generation']}/deleted")
    if deleted.shape != (record["count"],):
        raise ValueError(
            f"{path}: field 'count' is {record['count']} but the deleted array "
            f"holds {deleted.shape}"
        )
    return deleted


def bitmap(index_dir: str, num_images: int, manifest: dict | None = None) -> np.ndarray:
    """Tombstones as [num_images] bool, True for deleted images: the set `manifest` publishes
    when it has a 'tombstones' field, else the newest tombstones.json."""
    if manifest is not None and "tombstones" in manifest:
        deleted = (
            read_deleted(index_dir, manifest["tombstones"])
            if manifest["tombstones"]
            else np.zeros(0, np.int64)
        )
    else:
        deleted = read_deleted(index_dir)
    mask = np.zeros(num_images, bool)
    mask[deleted[deleted < num_images]] = True
    return mask


def delete(index_dir: str, image_ids, num_images: int) -> int:
    """Marks image_ids [D] int as deleted in every stage; returns how many were newly deleted.

    Ids must lie in [0, num_images); deleting an image twice is a no-op.
    """
    image_ids = np.asarray(image_ids)
    if image_ids.ndim != 1 or not (image_ids.dtype.kind in "iu" or image_ids.size == 0):
        raise ValueError(
            f"delete: image_ids expected a 1-D integer array, got shape "
            f"{image_ids.shape} dtype {image_ids.dtype}"
        )
    image_ids = image_ids.astype(np.int64)
    outside = image_ids[(image_ids < 0) | (image_ids >= num_images)]
    if outside.size:
        raise IndexError(
            f"delete: image ids {outside[:5].tolist()} outside [0, {num_images}) "
            f"of the first stages in {index_dir!r}"
        )
    old = read_deleted(index_dir)
    new = np.union1d(old, image_ids).astype(np.int64)
    if new.size == old.size:
        return 0
    write_set(index_dir, new)
    return int(new.size - old.size)


def clear(index_dir: str) -> dict:
    """Commits an empty set as the next generation (after lateint.index.compact renumbered the images,
    the old ids mean nothing); returns the new record."""
    return write_set(index_dir, np.zeros(0, np.int64))


def write_set(index_dir: str, deleted: np.ndarray) -> dict:
    """Commits `deleted` [D] int64 (sorted, distinct) as the next generation; returns its record."""
    record = current_record(index_dir)
    generation = 0 if record is None else record["generation"] + 1
    store.write_array(index_dir, f"{PREFIX}/g{generation}/deleted", deleted)
    record = {"generation": generation, "count": int(deleted.size)}
    storage.write_json(_record_path(index_dir), record, make_parents=True)
    postings.remove_stale_generations(index_dir, PREFIX, generation)
    return record
