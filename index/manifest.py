"""INDEX/manifest.json, INDEX/ids.txt and the journals (progress.json, journal/*.json).

The manifest makes an index directory self-describing (DESIGN.md contract 4). Every path in it is
relative to the index directory. A writer creates it with `"complete": false` before writing any
data and flips it to true only once every image range is recorded in the progress journal;
readers refuse anything else.

The fields, their types and the rules between them are the pydantic models of
lateint.index.manifest_schema (format_version 1); `validate_manifest` applies them and names the file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys

import numpy as np

from lateint import storage
from lateint.index import codecs, manifest_schema

FORMAT_VERSION = manifest_schema.FORMAT_VERSION
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
JOURNAL_DIR = "journal"  # one journal per precompute worker (lateint.index.workers)
IDS_FILE = "ids.txt"
ARRAY_ROLES = manifest_schema.ARRAY_ROLES
# What generations add to an INDEX (lateint.index.generation): compacted arrays, ids, the journals.
GENERATION_ENTRIES = ("store", "ids", "add.json", "compact.json")
CORPUS_FIELDS = manifest_schema.CORPUS_FIELDS


class IndexRefusedError(ValueError):
    """An INDEX that must not be used or resumed: damaged or invalid manifest, ids or journal,
    another model's or another corpus's index. The message names the file and the field;
    binaries print it as one line and exit with EXIT_REFUSED (`exit_on_refusal`)."""


class IncompleteIndexError(IndexRefusedError, RuntimeError):
    """The index directory has no manifest, or its manifest is not marked complete."""


EXIT_REFUSED = 2  # exit status of a binary that refused its INDEX (absl's usage errors use 1)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def array_path(index_dir: str, name: str) -> str:
    """Returns the directory of array `name` inside `index_dir`, after validating `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"array name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part:
            raise ValueError(
                f"array name {name!r} must be a relative path of plain components "
                f"(no '', '.', '..' or backslash), got component {part!r}"
            )
    return storage.join(index_dir, *parts)


def validate_manifest(manifest: dict, manifest_path: str = MANIFEST_FILE) -> dict:
    """Checks `manifest` against lateint.index.manifest_schema; returns it unchanged.

    Raises IndexRefusedError naming the file and, for every problem, the field, what was
    expected and what was found.
    """
    problems = manifest_schema.problems(manifest)
    if problems:
        raise IndexRefusedError(f"{manifest_path}: " + "; ".join(problems))
    return manifest


def new_manifest(
    *,
    ids: dict,
    arrays: dict,
    model_fingerprint: str,
    split_layer: int,
    storage_dtype: str,
    compression_dim: int,
    concepts_dtype: str,
    regions: int,
    hidden: int,
    concept_dim: int,
    shard_rows: int,
    source,
    corpus: dict | None = None,
) -> dict:
    """A validated manifest with `complete: false` for len(ids) images (see the module doc)."""
    images = ids["count"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "created": now_utc(),
        "finalized": None,
        "model_fingerprint": str(model_fingerprint),
        "split_layer": int(split_layer),
        "storage": {
            "activations_dtype": storage_dtype,
            "compression_dim": int(compression_dim),
            "concepts_dtype": concepts_dtype,
        },
        "shapes": {
            "images": images,
            "regions": int(regions),
            "hidden": int(hidden),
            "concept_dim": int(concept_dim),
        },
        "layout": {"shard_rows": int(shard_rows), "inner_rows": 1},
        "arrays": dict(arrays),
        "counts": {"images": images, "regions": None},
        "ids": dict(ids),
        "source": source,
    }
    if corpus is not None:
        manifest["corpus"] = dict(corpus)
    return validate_manifest(manifest, MANIFEST_FILE)


def write_manifest(index_dir: str, manifest: dict, shared: bool = False) -> bool:
    """Validates and atomically writes INDEX/manifest.json. shared: only if none exists yet
    (several workers create one INDEX on a file system; the first manifest wins). True if this
    call wrote it. On object storage `shared` is refused: one worker creates (precompute)."""
    path = storage.join(index_dir, MANIFEST_FILE)
    validate_manifest(manifest, path)
    if shared:
        return storage.publish_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    storage.write_json(path, manifest, indent=2, sort_keys=True)
    return True


def read_manifest(index_dir: str, require_complete: bool = True) -> dict:
    """Reads and validates INDEX/manifest.json.

    Raises IncompleteIndexError when the manifest is missing or (with require_complete) not
    marked complete: a precompute run never finished writing this index.
    """
    path = storage.join(index_dir, MANIFEST_FILE)
    try:
        manifest = storage.read_json(path)
    except FileNotFoundError:
        raise IncompleteIndexError(
            f"{path} is missing: {index_dir!r} is not a finished index (run lateint.index.precompute)"
        ) from None
    except json.JSONDecodeError as error:
        raise IndexRefusedError(f"{path}: not valid JSON: {error}") from error
    validate_manifest(manifest, path)
    if require_complete and not manifest["complete"]:
        raise IncompleteIndexError(
            f"{path}: field 'complete' is false: precompute into {index_dir!r} did not finish "
            f"({_describe_progress(index_dir, manifest['shapes']['images'])}); rerun it to resume"
        )
    return manifest


def check_fingerprint(manifest: dict, fingerprint: str) -> None:
    """Raises IndexRefusedError naming both fingerprints when another model built the index."""
    stored = manifest.get("model_fingerprint")
    if stored != fingerprint:
        raise IndexRefusedError(
            f"index model fingerprint {stored!r} does not match the loaded checkpoint's "
            f"fingerprint {fingerprint!r}: rebuild the index with this checkpoint"
        )


def array_layout(manifest: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{role: (shape, dtype)} of every array the manifest lists."""
    shapes, storage = manifest["shapes"], manifest["storage"]
    images, regions, concept_dim = shapes["images"], shapes["regions"], shapes["concept_dim"]
    layout = {
        "activations": (
            (images, regions, shapes["hidden"]),
            codecs.numpy_dtype(storage["activations_dtype"]),
        ),
        "activation_scale": ((images, regions), np.dtype(np.float32)),
        "region_mask": ((images, regions), np.dtype(np.bool_)),
        "concepts": ((images, regions, concept_dim), codecs.numpy_dtype(storage["concepts_dtype"])),
        "global": ((images, concept_dim), np.dtype(np.float32)),
    }
    return {role: layout[role] for role in manifest["arrays"]}


# ---- external ids -------------------------------------------------------------------------


def write_ids(index_dir: str, image_ids, file: str = IDS_FILE, shared: bool = False) -> dict:
    """Writes INDEX/<file> (default ids.txt; one id per line) and returns the manifest's 'ids'
    entry. shared: several workers write the same ids; the first file stays and the others
    check it holds exactly their ids."""
    lines = []
    for position, image_id in enumerate(image_ids):
        image_id = str(image_id)
        if "\n" in image_id or "\r" in image_id:
            raise ValueError(f"image id at position {position} contains a line break: {image_id!r}")
        lines.append(image_id)
    text = "".join(line + "\n" for line in lines)
    path = storage.join(index_dir, file)
    storage.makedirs(storage.dirname(path))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if not shared:
        storage.write_text(path, text)
    elif not storage.publish_text(path, text):
        found = hashlib.sha256(storage.read_bytes(path)).hexdigest()
        if found != digest:
            raise IndexRefusedError(
                f"{path}: another worker wrote other ids (sha256 {found}, this worker's "
                f"{len(lines)} ids have {digest}): the workers index different corpora"
            )
    return {"file": file, "count": len(lines), "sha256": digest}


def read_ids(index_dir: str, manifest: dict) -> list[str]:
    """Reads the external ids [N] the manifest references, checking count and checksum."""
    entry = manifest["ids"]
    path = storage.join(index_dir, entry["file"])
    data = storage.read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise IndexRefusedError(
            f"{path}: sha256 expected {entry['sha256']}, got {digest} (file changed)"
        )
    ids = data.decode("utf-8").split("\n")[:-1]
    if len(ids) != entry["count"]:
        raise IndexRefusedError(f"{path}: expected {entry['count']} ids, got {len(ids)}")
    return ids


# ---- progress journal ---------------------------------------------------------------------


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Sorted, merged, non-empty [start, stop) ranges."""
    merged: list[list[int]] = []
    for start, stop in sorted((int(start), int(stop)) for start, stop in ranges):
        if stop <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def worker_journal(worker_index: int, num_workers: int) -> str:
    """The journal of precompute worker `worker_index` of `num_workers` (relative to INDEX)."""
    return f"{JOURNAL_DIR}/worker-{int(worker_index):05d}-of-{int(num_workers):05d}.json"


def journal_files(index_dir: str) -> list[str]:
    """Every journal of INDEX: progress.json (one writer) and journal/*.json (one per worker)."""
    files = [PROGRESS_FILE] if storage.exists(storage.join(index_dir, PROGRESS_FILE)) else []
    directory = storage.join(index_dir, JOURNAL_DIR)
    if storage.isdir(directory):
        files += [
            f"{JOURNAL_DIR}/{name}" for name in storage.listdir(directory) if name.endswith(".json")
        ]
    return files


def _journaled(index_dir: str, journal: str) -> list[tuple[int, int]]:
    path = storage.join(index_dir, journal)
    try:
        return merge_ranges(storage.read_json(path)["completed"])
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise IndexRefusedError(
            f"{path}: expected {{'completed': [[start, stop], ...]}}: {error}"
        ) from error


def completed_ranges(index_dir: str) -> list[tuple[int, int]]:
    """The [start, stop) image ranges recorded as fully written in any journal (sorted,
    merged): several precompute workers each journal their own shards in their own file."""
    ranges = []
    for journal in journal_files(index_dir):
        ranges += _journaled(index_dir, journal)
    return merge_ranges(ranges)


def mark_completed(index_dir: str, start: int, stop: int, journal: str = PROGRESS_FILE) -> None:
    """Records [start, stop) as written and durable: atomic rewrite of `journal` (relative to
    INDEX; one writer per journal file)."""
    ranges = merge_ranges(_journaled(index_dir, journal) + [(start, stop)])
    storage.write_json(
        storage.join(index_dir, journal),
        {"completed": [list(pair) for pair in ranges]},
        make_parents=True,
    )


def reset_completed(index_dir: str, stop: int) -> None:
    """Journals exactly [0, stop) as written (a published generation of `stop` images), so
    ranges journaled past it by an abandoned lateint.index.add are not trusted; the workers'
    journals of the first precompute go (progress.json now covers their rows)."""
    storage.write_json(
        storage.join(index_dir, PROGRESS_FILE), {"completed": [[0, int(stop)]] if stop else []}
    )
    storage.rmtree(storage.join(index_dir, JOURNAL_DIR))


def missing_ranges(index_dir: str, total: int) -> list[tuple[int, int]]:
    """The [start, stop) ranges of [0, total) not yet recorded as completed."""
    missing, cursor = [], 0
    for start, stop in completed_ranges(index_dir):
        if start > cursor:
            missing.append((cursor, min(start, total)))
        cursor = max(cursor, stop)
    if cursor < total:
        missing.append((cursor, total))
    return [(start, stop) for start, stop in missing if stop > start]


def _describe_progress(index_dir: str, total: int) -> str:
    try:
        done = sum(stop - start for start, stop in completed_ranges(index_dir))
    except ValueError as error:
        return f"progress journal unreadable: {error}"
    return f"{min(done, total)} of {total} images journaled"


def exit_on_refusal(binary: str, function, *args, **keywords):
    """Runs function(*args, **keywords); a refused INDEX (IndexRefusedError, which names the
    file and the field) becomes one line on stderr and exit status EXIT_REFUSED, not a
    traceback. Every binary that opens an INDEX runs its work through this."""
    try:
        return function(*args, **keywords)
    except IndexRefusedError as error:
        message = " ".join(str(error).split())  # one line, whatever the message held
        sys.stderr.write(f"{binary}: refused INDEX: {message}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_REFUSED) from None
