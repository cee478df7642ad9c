"""Per-stage json records: INDEX/first_stage/<stage>/stage.json, the commit point of a stage.

A record holds the stage's parameters and counts. It is written atomically (index.manifest's
atomic_write_text), so readers see the old or the new state, never a mix. A (re)build first
writes a record with "state": "building", so a killed build leaves a stage that readers refuse
with a clear message instead of a mix of old and new arrays.
"""

from __future__ import annotations

import json
import os

from index import manifest as manifest_lib

RECORD_FILE = "stage.json"
RECORD_VERSION = 1
STAGE_FOLDER = "first_stage"


def folder(index_dir: str, name: str) -> str:
    """The directory of array (or array folder) `name`: INDEX/<name> (index.store's layout)."""
    return os.path.join(index_dir, *name.split("/"))


def stage_prefix(stage: str) -> str:
    """Array-name prefix of a stage's structures, e.g. 'first_stage/concepts'."""
    return f"{STAGE_FOLDER}/{stage}"


def record_path(index_dir: str, stage: str) -> str:
    return os.path.join(folder(index_dir, stage_prefix(stage)), RECORD_FILE)


def write_record(index_dir: str, stage: str, record: dict) -> None:
    """Atomically writes the record (adds 'stage' and 'version')."""
    path = record_path(index_dir, stage)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = dict(record, stage=stage, version=RECORD_VERSION)
    manifest_lib.atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def mark_building(index_dir: str, stage: str, parameters: dict) -> None:
    write_record(index_dir, stage, {"state": "building", "parameters": parameters})


def read_record(index_dir: str, stage: str) -> dict:
    """The committed record of a ready stage; raises naming the file and what is wrong."""
    path = record_path(index_dir, stage)
    if not os.path.exists(path):
        raise FileNotFoundError(f"first stage {stage!r} is not built in {index_dir!r} "
                                f"(expected {path}); run python -m index.build "
                                f"--index={index_dir} --first_stage={stage}")
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"{path}: field 'version' expected {RECORD_VERSION}, "
                         f"got {record.get('version')!r}")
    if record.get("state") != "ready":
        raise RuntimeError(f"{path}: field 'state' expected 'ready', got {record.get('state')!r} "
                           f"(a build was interrupted; rebuild the stage)")
    return record


def stage_exists(index_dir: str, stage: str) -> bool:
    """True when a record exists for `stage` (ready or not)."""
    return os.path.exists(record_path(index_dir, stage))
