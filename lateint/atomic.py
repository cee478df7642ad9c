"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

    atomic.write_json(os.path.join(index_dir, "manifest.json"), manifest, indent=2)

Every JSON or text file that another process (or a resumed run) reads back goes through here:
manifests, journals, stage records, completion markers, reports.
"""

from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` (UTF-8) through `path` + '.tmp', fsync and rename.

    The temporary file has a fixed name: a writer killed mid-write leaves at most that one file,
    which the next write of `path` replaces. One writer per path. The parent directory must exist.
    """
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory_descriptor = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)  # the rename itself survives a crash
    finally:
        os.close(directory_descriptor)


def write_json(
    path: str, value, indent: int | None = None, sort_keys: bool = False, make_parents: bool = False
) -> None:
    """Writes `value` as JSON and a final newline (see `write_text`); make_parents creates the
    parent directories first. A value that is not JSON-serializable raises TypeError before
    `path` is touched."""
    text = json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n"
    if make_parents:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, text)


def publish_text(path: str, text: str) -> bool:
    """Writes `text` to `path` only if `path` does not exist yet; True if this call wrote it.

    For files that several processes may try to create at once with the same role (the manifest
    and ids of an INDEX that W precompute workers create): each writes a temporary file of its
    own (pid in the name), fsyncs it and hard-links it into place, which fails when `path`
    exists, so the first writer wins whole and the others see its file, never a mix. POSIX
    file systems only (link is atomic there).
    """
    temporary = f"{path}.{os.getpid()}.publish.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.remove(temporary)
    directory_descriptor = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
    return True
