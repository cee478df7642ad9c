"""The one reader/writer of INDEX arrays (TensorStore zarr3).

Small and medium dense arrays (first-stage centroids, CSR postings, ...) go through
`write_array` / `read_array` / `append_array`. Every array lives at `INDEX/<name>` where `name`
is a relative '/'-separated path such as 'first_stage/concepts/centroids'.
"""

from __future__ import annotations

import os

import numpy as np
import tensorstore as ts

# Chunks of about this many bytes: few files for small arrays, bounded memory per chunk.
DENSE_CHUNK_BYTES = 4 << 20
APPEND_CHUNK_BYTES = 256 << 10


def array_path(index_dir: str, name: str) -> str:
    """Returns the directory of array `name` inside `index_dir`, after validating `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"index.store: array name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part:
            raise ValueError(
                f"index.store: array name {name!r} must be a relative path of plain components "
                f"(no '', '.', '..' or backslash), got component {part!r}"
            )
    return os.path.join(index_dir, *parts)


def _zarr_dtype(dtype: np.dtype, name: str) -> str:
    """Maps a NumPy dtype to its zarr3 data_type name."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    if dtype.name == "bfloat16":
        return "bfloat16"
    if dtype.kind in "iuf" or dtype.kind == "c":
        return dtype.name
    raise TypeError(
        f"index.store: array {name!r} has dtype {dtype}; expected a numeric or bool dtype"
    )


def _dense_chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
    """Chunk whole rows (axis 0), about DENSE_CHUNK_BYTES per chunk; every dim >= 1."""
    trailing = [max(1, int(size)) for size in shape[1:]]
    row_bytes = itemsize * int(np.prod(trailing, dtype=np.int64))
    rows = max(1, DENSE_CHUNK_BYTES // max(1, row_bytes))
    if shape:
        rows = min(rows, max(1, int(shape[0])))
    return [rows] + trailing if shape else []


def _kvstore(path: str) -> dict:
    return {"driver": "file", "path": os.path.abspath(path)}


def _open_existing(index_dir: str, name: str) -> ts.TensorStore:
    path = array_path(index_dir, name)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        raise FileNotFoundError(
            f"index.store: array {name!r} not found in {index_dir!r} "
            f"(expected {os.path.join(path, 'zarr.json')})"
        )
    spec = {"driver": "zarr3", "kvstore": _kvstore(path), "open": True}
    try:
        return ts.open(spec).result()
    except Exception as error:  # TensorStore raises ValueError with a status string
        raise OSError(f"index.store: cannot open array {name!r} in {index_dir!r}: {error}") from error


def _create(index_dir: str, name: str, shape, dtype, chunk_shape=None) -> ts.TensorStore:
    path = array_path(index_dir, name)
    dtype = np.dtype(dtype)
    shape = [int(size) for size in shape]
    if chunk_shape is None:
        chunk_shape = _dense_chunk_shape(tuple(shape), dtype.itemsize)
    metadata = {
        "shape": shape,
        "data_type": _zarr_dtype(dtype, name),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default"},
        # Explicit codecs: TensorStore's default for large chunks is a sharding codec with
        # 1-element inner chunks. crc32c makes a corrupted chunk a read error, not bad data.
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
    }
    spec = {
        "driver": "zarr3",
        "kvstore": _kvstore(path),
        "metadata": metadata,
        "create": True,
        "delete_existing": True,
    }
    return ts.open(spec).result()


def write_array(index_dir: str, name: str, array: np.ndarray) -> None:
    """Writes `array` (any shape, numeric or bool dtype, 0-size allowed) to INDEX/<name>.

    Overwrites an existing array of that name (its old chunks are deleted first).
    """
    array = np.asarray(array)
    store = _create(index_dir, name, array.shape, array.dtype)
    if array.size:
        store.write(array).result()


def read_array(index_dir: str, name: str) -> np.ndarray:
    """Reads INDEX/<name> whole into a NumPy array of its stored dtype and shape."""
    store = _open_existing(index_dir, name)
    if 0 in store.shape:
        return np.zeros(store.shape, dtype=store.dtype.numpy_dtype)
    try:
        return np.asarray(store.read().result())
    except Exception as error:
        raise OSError(
            f"index.store: reading array {name!r} in {index_dir!r} failed "
            f"(rows [0, {store.shape[0] if store.shape else 0})): {error}"
        ) from error


def append_array(index_dir: str, name: str, array: np.ndarray) -> None:
    """Appends `array` [n, ...] to INDEX/<name> along axis 0, creating it if absent.

    The trailing shape and dtype must match the stored array.
    """
    array = np.asarray(array)
    if array.ndim == 0:
        raise ValueError(f"index.store: append_array({name!r}) needs ndim >= 1, got a scalar")
    path = array_path(index_dir, name)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        # Appended arrays grow, so the chunk is not clamped to the first piece's length; a
        # smaller chunk than write_array's keeps the zero-padded edge chunk cheap to rewrite.
        row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        chunk_shape = [max(1, APPEND_CHUNK_BYTES // max(1, row_bytes))]
        chunk_shape += [max(1, int(size)) for size in array.shape[1:]]
        store = _create(index_dir, name, (0,) + array.shape[1:], array.dtype, chunk_shape)
    else:
        store = _open_existing(index_dir, name)
    stored_dtype = np.dtype(store.dtype.numpy_dtype)
    if tuple(store.shape[1:]) != tuple(array.shape[1:]):
        raise ValueError(
            f"index.store: append_array({name!r}): trailing shape expected "
            f"{tuple(store.shape[1:])}, got {tuple(array.shape[1:])}"
        )
    if stored_dtype != array.dtype:
        raise TypeError(
            f"index.store: append_array({name!r}): dtype expected {stored_dtype}, got {array.dtype}"
        )
    if array.shape[0] == 0:
        return
    old_rows = store.shape[0]
    new_shape = [old_rows + array.shape[0]] + list(store.shape[1:])
    store = store.resize(exclusive_max=new_shape, expand_only=True).result()
    store[old_rows:].write(array).result()
