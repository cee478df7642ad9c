"""Deleted images: a tombstone set shared by every first stage of an index.

Stored as the sorted ids [D] int64 in INDEX/first_stage/tombstones/g<generation>/deleted, with
INDEX/first_stage/tombstones/tombstones.json naming the committed generation. A delete writes the
whole new set as the next generation, commits the json, then removes the old folder, so a killed
delete leaves the old set intact. Stages turn it into a bitmap [N] bool at load.
"""

from __future__ import annotations

import json
import os

import numpy as np

from index import manifest as manifest_lib
from index import store
from index.first_stage import postings, records

PREFIX = "first_stage/tombstones"
RECORD_FILE = "tombstones.json"


def _record_path(index_dir: str) -> str:
    return os.path.join(records.folder(index_dir, PREFIX), RECORD_FILE)


def read_deleted(index_dir: str) -> np.ndarray:
    """Sorted distinct deleted image ids [D] int64 (empty when nothing was deleted)."""
    path = _record_path(index_dir)
    if not os.path.exists(path):
        return np.zeros(0, np.int64)
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    deleted = store.read_array(index_dir, f"{PREFIX}/g{record['generation']}/deleted")
    if deleted.shape != (record["count"],):
        raise ValueError(f"{path}: field 'count' is {record['count']} but the deleted array "
                         f"holds {deleted.shape}")
    return deleted


def bitmap(index_dir: str, num_images: int) -> np.ndarray:
    """Tombstones as [num_images] bool, True for deleted images."""
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
        raise ValueError(f"delete: image_ids expected a 1-D integer array, got shape "
                         f"{image_ids.shape} dtype {image_ids.dtype}")
    image_ids = image_ids.astype(np.int64)
    outside = image_ids[(image_ids < 0) | (image_ids >= num_images)]
    if outside.size:
        raise IndexError(f"delete: image ids {outside[:5].tolist()} outside [0, {num_images}) "
                         f"of the first stages in {index_dir!r}")
    old = read_deleted(index_dir)
    new = np.union1d(old, image_ids).astype(np.int64)
    if new.size == old.size:
        return 0
    path = _record_path(index_dir)
    generation = 0
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            generation = json.load(handle)["generation"] + 1
    store.write_array(index_dir, f"{PREFIX}/g{generation}/deleted", new)
    manifest_lib.atomic_write_text(path, json.dumps({"generation": generation,
                                                     "count": int(new.size)}) + "\n")
    postings.remove_stale_generations(index_dir, PREFIX, generation)
    return int(new.size - old.size)
