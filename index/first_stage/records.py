"""Per-stage json records: INDEX/first_stage/<stage>/stage.json, the commit point of a stage.

A record holds the stage's parameters and counts. It is written atomically (lateint.storage), so
readers see the old or the new state, never a mix. A (re)build first writes a record with
"state": "building", so a killed build leaves a stage that readers refuse with a clear message
instead of a mix of old and new arrays.

Once an INDEX has changed generation (lateint.index.add / delete / compact, lateint.index.generation), its
manifest holds a snapshot of every stage's record: the stage.json files are then the writer's
state and readers take the snapshot (`committed_record`), so one manifest switch publishes every
stage at once. Folders a snapshot names (this generation's or the previous one's) are never
removed (`referenced_generations`), so a server that has not reloaded yet keeps reading.
"""

from __future__ import annotations

from lateint import storage
from lateint.index import manifest as manifest_lib

RECORD_FILE = "stage.json"
RECORD_VERSION = 1
STAGE_FOLDER = "first_stage"


def folder(index_dir: str, name: str) -> str:
    """The directory of array (or array folder) `name`: INDEX/<name> (lateint.index.store's layout)."""
    return storage.join(index_dir, *name.split("/"))


def stage_prefix(stage: str) -> str:
    """Array-name prefix of a stage's structures, e.g. 'first_stage/concepts'."""
    return f"{STAGE_FOLDER}/{stage}"


def record_path(index_dir: str, stage: str) -> str:
    return storage.join(folder(index_dir, stage_prefix(stage)), RECORD_FILE)


def write_record(index_dir: str, stage: str, record: dict) -> None:
    """Atomically writes the record (adds 'stage' and 'version')."""
    path = record_path(index_dir, stage)
    record = dict(record, stage=stage, version=RECORD_VERSION)
    storage.write_json(path, record, indent=1, sort_keys=True, make_parents=True)


def mark_building(index_dir: str, stage: str, parameters: dict) -> None:
    write_record(index_dir, stage, {"state": "building", "parameters": parameters})


def read_record(index_dir: str, stage: str) -> dict:
    """The committed record of a ready stage; raises naming the file and what is wrong."""
    path = record_path(index_dir, stage)
    try:
        record = storage.read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"first stage {stage!r} is not built in {index_dir!r} "
            f"(expected {path}); run python -m lateint.index.build "
            f"--index={index_dir} --first_stage={stage}"
        ) from None
    if record.get("version") != RECORD_VERSION:
        raise ValueError(
            f"{path}: field 'version' expected {RECORD_VERSION}, got {record.get('version')!r}"
        )
    if record.get("state") != "ready":
        raise RuntimeError(
            f"{path}: field 'state' expected 'ready', got {record.get('state')!r} "
            f"(a build was interrupted; rebuild the stage)"
        )
    return record


def stage_exists(index_dir: str, stage: str) -> bool:
    """True when a record exists for `stage` (ready or not)."""
    return storage.exists(record_path(index_dir, stage))


def generations_prefix(stage: str) -> str:
    """Array-name prefix under which a stage keeps its g<generation> folders."""
    return stage_prefix(stage) if stage == "exact" else f"{stage_prefix(stage)}/lists"


def committed_record(index_dir: str, stage: str, manifest: dict | None = None) -> dict:
    """The stage's record as published by `manifest` (its 'first_stage' snapshot), else the
    stage.json record (an INDEX that never changed generation)."""
    if manifest is None or "first_stage" not in manifest:
        return read_record(index_dir, stage)
    snapshot = manifest["first_stage"]
    if stage not in snapshot:
        raise FileNotFoundError(
            f"first stage {stage!r} is not in generation "
            f"{manifest.get('generation', 0)} of {index_dir!r} (its manifest "
            f"publishes {sorted(snapshot)})"
        )
    return snapshot[stage]


def _published_views(index_dir: str) -> list[dict]:
    """INDEX/manifest.json and its 'previous' field (what the last generation published)."""
    try:
        manifest = storage.read_json(storage.join(index_dir, manifest_lib.MANIFEST_FILE))
    except FileNotFoundError:
        return []
    return [manifest, manifest.get("previous") or {}]


def published_records(index_dir: str, stage: str) -> list[dict]:
    """The records of `stage` this generation and the previous one publish (0 to 2)."""
    return [
        view["first_stage"][stage]
        for view in _published_views(index_dir)
        if stage in (view.get("first_stage") or {})
    ]


def referenced_generations(index_dir: str, prefix: str) -> set[int]:
    """Generations under `prefix` that INDEX/manifest.json's snapshot or the previous
    generation's (its 'previous' field) name: they must stay on disk."""
    found = set()
    for view in _published_views(index_dir):
        for stage, record in (view.get("first_stage") or {}).items():
            if generations_prefix(stage) == prefix:
                found.add(int(record["generation"]))
        if prefix == f"{STAGE_FOLDER}/tombstones" and view.get("tombstones"):
            found.add(int(view["tombstones"]["generation"]))
    return found
