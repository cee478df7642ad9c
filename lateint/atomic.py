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
