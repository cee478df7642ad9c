"""INDEX/manifest.json, INDEX/ids.txt and the INDEX/progress.json journal.

The manifest makes an index directory self-describing (DESIGN.md contract 4). Every path in it is
relative to the index directory. A writer creates it with `"complete": false` before writing any
data and flips it to true only once every image range is recorded in the progress journal;
readers refuse anything else.

Manifest fields (format_version 1):
  format_version     int
  complete           bool
  created, finalized ISO-8601 UTC strings (finalized is null until complete)
  model_fingerprint  str     hash of the image-side parameters and the model config
  split_layer        int
  storage            {activations_dtype: float32|bfloat16|int8, compression_dim: int (0 = none),
                      concepts_dtype: float32|bfloat16}
  shapes             {images: N, regions: R, hidden: H' (stored width), concept_dim: C}
  layout             {shard_rows: int, inner_rows: int}
  arrays             {role: relative path} for activations, [activation_scale], region_mask,
                      concepts, global
  counts             {images: N, regions: real (unmasked) regions or null until complete}
  ids                {file: 'ids.txt', count: N, sha256: hex of the file}
  source             free-form JSON describing the corpus (the writer's business)
Written by index.add / delete / compact (index.generation; absent: generation 0):
  generation         int, one more at every published change
  first_stage        {stage: its stage.json record as published in this generation}
  tombstones         {generation, count} of the published tombstone set, or null
  previous           {arrays, ids, first_stage, tombstones} of the generation before
  corpus             (optional) the corpus fingerprint: {split, images, regions, feature_dim,
                      ids_sha256, content_sha256, sampled_images} (index.corpus_fingerprint)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys

import numpy as np

from index import codecs

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
IDS_FILE = "ids.txt"
ARRAY_ROLES = ("activations", "activation_scale", "region_mask", "concepts", "global")
# What generations add to an INDEX (index.generation): compacted arrays, ids, the journals.
GENERATION_ENTRIES = ("store", "ids", "add.json", "compact.json")
CORPUS_FIELDS = ("split", "images", "regions", "feature_dim", "ids_sha256", "content_sha256",
                 "sampled_images")

_REQUIRED = {
    "format_version": int,
    "complete": bool,
    "created": str,
    "model_fingerprint": str,
    "split_layer": int,
    "storage": dict,
    "shapes": dict,
    "layout": dict,
    "arrays": dict,
    "counts": dict,
    "ids": dict,
}
_REQUIRED_NESTED = {
    "storage": ("activations_dtype", "compression_dim", "concepts_dtype"),
    "shapes": ("images", "regions", "hidden", "concept_dim"),
    "layout": ("shard_rows", "inner_rows"),
    "arrays": ("activations", "region_mask", "concepts", "global"),
    "counts": ("images", "regions"),
    "ids": ("file", "count", "sha256"),
}


class IndexRefusedError(ValueError):
    """An INDEX that must not be used or resumed: damaged or invalid manifest, ids or journal,
    another model's or another corpus's index. The message names the file and the field;
    binaries print it as one line and exit with EXIT_REFUSED (`exit_on_refusal`)."""


class IncompleteIndexError(IndexRefusedError, RuntimeError):
    """The index directory has no manifest, or its manifest is not marked complete."""


EXIT_REFUSED = 2  # exit status of a binary that refused its INDEX (absl's usage errors use 1)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` so readers see the old or the new file, never a partial one.

    The temporary file has a fixed name (`path` + '.tmp'): a writer killed mid-write leaves at
    most that one file, which the next write of `path` replaces. One writer per index.
    """
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory_descriptor = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _check_relative(path: str, field: str, manifest_path: str) -> None:
    parts = path.replace("\\", "/").split("/")
    if not path or os.path.isabs(path) or ".." in parts:
        raise IndexRefusedError(
            f"{manifest_path}: field {field!r} must be a relative path inside the index, "
            f"got {path!r}"
        )


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
    return os.path.join(index_dir, *parts)


def validate_manifest(manifest: dict, manifest_path: str = MANIFEST_FILE) -> dict:
    """Checks fields, types and consistency; raises ValueError naming file, field, expected, got."""
    if not isinstance(manifest, dict):
        raise IndexRefusedError(f"{manifest_path}: expected a JSON object, got "
                                f"{type(manifest).__name__}")
    for field, kind in _REQUIRED.items():
        if field not in manifest:
            raise IndexRefusedError(f"{manifest_path}: missing field {field!r}")
        value = manifest[field]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise IndexRefusedError(
                f"{manifest_path}: field {field!r} expected {kind.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )
    for field, keys in _REQUIRED_NESTED.items():
        for key in keys:
            if key not in manifest[field]:
                raise IndexRefusedError(f"{manifest_path}: missing field '{field}.{key}'")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexRefusedError(
            f"{manifest_path}: format_version expected {FORMAT_VERSION}, "
            f"got {manifest['format_version']}"
        )
    storage = manifest["storage"]
    for key, allowed in (("activations_dtype", codecs.STORAGE_DTYPES),
                         ("concepts_dtype", codecs.CONCEPT_DTYPES)):
        if storage[key] not in allowed:
            raise IndexRefusedError(
                f"{manifest_path}: field 'storage.{key}' expected one of {list(allowed)}, "
                f"got {storage[key]!r}"
            )
    for field, least in (("shapes", 0), ("layout", 1)):
        for key, value in manifest[field].items():
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise IndexRefusedError(f"{manifest_path}: field '{field}.{key}' expected an "
                                        f"int >= {least}, got {value!r}")
    images = manifest["shapes"]["images"]
    for field in ("counts.images", "ids.count"):
        outer, inner = field.split(".")
        if manifest[outer][inner] != images:
            raise IndexRefusedError(
                f"{manifest_path}: field {field!r} expected {images} (shapes.images), "
                f"got {manifest[outer][inner]!r}"
            )
    regions = manifest["counts"]["regions"]
    if manifest["complete"] and (not isinstance(regions, int) or isinstance(regions, bool)):
        raise IndexRefusedError(f"{manifest_path}: field 'counts.regions' expected an int once "
                                f"complete, got {regions!r}")
    if storage["activations_dtype"] == "int8" and "activation_scale" not in manifest["arrays"]:
        raise IndexRefusedError(f"{manifest_path}: int8 storage needs field "
                                "'arrays.activation_scale'")
    for role, path in manifest["arrays"].items():
        if role not in ARRAY_ROLES:
            raise IndexRefusedError(f"{manifest_path}: field 'arrays' has unknown array role "
                                    f"{role!r}; expected roles among {list(ARRAY_ROLES)}")
        _check_relative(path, f"arrays.{role}", manifest_path)
    _check_relative(manifest["ids"]["file"], "ids.file", manifest_path)
    generation = manifest.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise IndexRefusedError(f"{manifest_path}: field 'generation' expected an int >= 0, "
                         f"got {generation!r}")
    corpus = manifest.get("corpus")
    if corpus is not None:  # optional: indexes written before corpus fingerprints lack it
        missing = [key for key in CORPUS_FIELDS
                   if not isinstance(corpus, dict) or key not in corpus]
        if missing:
            raise IndexRefusedError(f"{manifest_path}: field 'corpus' expected an object with "
                                    f"{list(CORPUS_FIELDS)}, missing {missing}")
    return manifest


def new_manifest(*, ids: dict, arrays: dict, model_fingerprint: str, split_layer: int,
                 storage_dtype: str, compression_dim: int, concepts_dtype: str, regions: int,
                 hidden: int, concept_dim: int, shard_rows: int, source,
                 corpus: dict | None = None) -> dict:
    """A validated manifest with `complete: false` for len(ids) images (see the module doc)."""
    images = ids["count"]
    manifest = {
        "format_version": FORMAT_VERSION, "complete": False, "created": now_utc(),
        "finalized": None, "model_fingerprint": str(model_fingerprint),
        "split_layer": int(split_layer),
        "storage": {"activations_dtype": storage_dtype, "compression_dim": int(compression_dim),
                    "concepts_dtype": concepts_dtype},
        "shapes": {"images": images, "regions": int(regions), "hidden": int(hidden),
                   "concept_dim": int(concept_dim)},
        "layout": {"shard_rows": int(shard_rows), "inner_rows": 1},
        "arrays": dict(arrays), "counts": {"images": images, "regions": None},
        "ids": dict(ids), "source": source,
    }
    if corpus is not None:
        manifest["corpus"] = dict(corpus)
    return validate_manifest(manifest, MANIFEST_FILE)


def write_manifest(index_dir: str, manifest: dict) -> None:
    """Validates and atomically writes INDEX/manifest.json."""
    path = os.path.join(index_dir, MANIFEST_FILE)
    validate_manifest(manifest, path)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(index_dir: str, require_complete: bool = True) -> dict:
    """Reads and validates INDEX/manifest.json.

    Raises IncompleteIndexError when the manifest is missing or (with require_complete) not
    marked complete: a precompute run never finished writing this index.
    """
    path = os.path.join(index_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise IncompleteIndexError(
            f"{path} is missing: {index_dir!r} is not a finished index (run index.precompute)"
        )
    with open(path, encoding="utf-8") as handle:
        try:
            manifest = json.load(handle)
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
        "activations": ((images, regions, shapes["hidden"]),
                        codecs.numpy_dtype(storage["activations_dtype"])),
        "activation_scale": ((images, regions), np.dtype(np.float32)),
        "region_mask": ((images, regions), np.dtype(np.bool_)),
        "concepts": ((images, regions, concept_dim), codecs.numpy_dtype(storage["concepts_dtype"])),
        "global": ((images, concept_dim), np.dtype(np.float32)),
    }
    return {role: layout[role] for role in manifest["arrays"]}


# ---- external ids -------------------------------------------------------------------------

def write_ids(index_dir: str, image_ids, file: str = IDS_FILE) -> dict:
    """Writes INDEX/<file> (default ids.txt; one id per line) and returns the manifest's 'ids'
    entry."""
    lines = []
    for position, image_id in enumerate(image_ids):
        image_id = str(image_id)
        if "\n" in image_id or "\r" in image_id:
            raise ValueError(f"image id at position {position} contains a line break: {image_id!r}")
        lines.append(image_id)
    text = "".join(line + "\n" for line in lines)
    path = os.path.join(index_dir, file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, text)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return {"file": file, "count": len(lines), "sha256": digest}


def read_ids(index_dir: str, manifest: dict) -> list[str]:
    """Reads the external ids [N] the manifest references, checking count and checksum."""
    entry = manifest["ids"]
    path = os.path.join(index_dir, entry["file"])
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise IndexRefusedError(f"{path}: sha256 expected {entry['sha256']}, got {digest} "
                                "(file changed)")
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


def completed_ranges(index_dir: str) -> list[tuple[int, int]]:
    """The [start, stop) image ranges recorded as fully written (sorted, merged)."""
    path = os.path.join(index_dir, PROGRESS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        try:
            journal = json.load(handle)
            ranges = journal["completed"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise IndexRefusedError(f"{path}: expected {{'completed': [[start, stop], ...]}}: "
                                    f"{error}")
    return merge_ranges(ranges)


def mark_completed(index_dir: str, start: int, stop: int) -> None:
    """Records [start, stop) as written and durable (atomic rewrite of INDEX/progress.json)."""
    ranges = merge_ranges(completed_ranges(index_dir) + [(start, stop)])
    text = json.dumps({"completed": [list(pair) for pair in ranges]}) + "\n"
    atomic_write_text(os.path.join(index_dir, PROGRESS_FILE), text)


def reset_completed(index_dir: str, stop: int) -> None:
    """Journals exactly [0, stop) as written (a published generation of `stop` images), so
    ranges journaled past it by an abandoned index.add are not trusted."""
    text = json.dumps({"completed": [[0, int(stop)]] if stop else []}) + "\n"
    atomic_write_text(os.path.join(index_dir, PROGRESS_FILE), text)


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
    return f"{min(done, total)} of {total} images recorded in {PROGRESS_FILE}"


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
