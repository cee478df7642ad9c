"""Dense INDEX arrays through TensorStore zarr3: open/create helpers and the small-array API.

Small and medium dense arrays (first-stage centroids, CSR postings, ...) go through
`write_array` / `read_array` / `append_array`. Every array lives at `INDEX/<name>` where `name`
is a relative '/'-separated path such as 'first_stage/concepts/centroids'. `lateint.index.store`
re-exports these; the activation store builds on `open_existing` / `create`.
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from lateint import storage
from lateint.index import codecs
from lateint.index import manifest as manifest_lib

# Chunks of about this many bytes: few files for small arrays, bounded memory per chunk.
DENSE_CHUNK_BYTES = 4 << 20
APPEND_CHUNK_BYTES = 256 << 10


def open_existing(
    index_dir: str, name: str, context: ts.Context | None = None, read_only: bool = False
) -> ts.TensorStore:
    path = manifest_lib.array_path(index_dir, name)
    if not storage.exists(storage.join(path, "zarr.json")):
        raise FileNotFoundError(
            f"lateint.index.store: array {name!r} not found in {index_dir!r} "
            f"(expected {storage.join(path, 'zarr.json')})"
        )
    spec = codecs.zarr_spec(path)
    if read_only:
        # Finished indexes are immutable: trust cached chunks instead of re-stat'ing files.
        spec.update(recheck_cached_data="open", recheck_cached_metadata="open")
    try:
        return ts.open(
            spec, context=context or ts.Context(), read=True, write=not read_only
        ).result()
    except Exception as error:  # TensorStore raises ValueError carrying a status string
        raise OSError(
            f"lateint.index.store: cannot open array {name!r} in {index_dir!r}: {error}"
        ) from error


def create(
    index_dir: str,
    name: str,
    shape,
    dtype,
    chunk_rows: int | None = None,
    inner_rows: int | None = None,
    context: ts.Context | None = None,
    replace: bool = True,
) -> ts.TensorStore:
    """Creates INDEX/<name> (replace: deleting an old array of that name; else opening an
    existing one if its metadata is the same, which several writers may race to do)."""
    dtype = np.dtype(dtype)
    shape = [int(size) for size in shape]
    if chunk_rows is None:
        row_bytes = dtype.itemsize * int(np.prod([max(1, size) for size in shape[1:]]))
        chunk_rows = max(1, DENSE_CHUNK_BYTES // max(1, row_bytes))
        if shape:
            chunk_rows = min(chunk_rows, max(1, shape[0]))
    metadata = codecs.layout_metadata(shape, dtype, name, chunk_rows, inner_rows)
    spec = codecs.zarr_spec(manifest_lib.array_path(index_dir, name), metadata, replace)
    return ts.open(spec, context=context or ts.Context()).result()


def write_array(index_dir: str, name: str, array: np.ndarray) -> None:
    """Writes `array` (any shape, numeric or bool dtype, 0-size allowed) to INDEX/<name>.

    Overwrites an existing array of that name (its old chunks are deleted first).
    """
    array = np.asarray(array)
    store = create(index_dir, name, array.shape, array.dtype)
    if array.size:
        store.write(array).result()


def read_array(index_dir: str, name: str) -> np.ndarray:
    """Reads INDEX/<name> whole into a NumPy array of its stored dtype and shape."""
    store = open_existing(index_dir, name)
    if 0 in store.shape:
        return np.zeros(store.shape, dtype=store.dtype.numpy_dtype)
    try:
        return np.asarray(store.read().result())
    except Exception as error:
        raise OSError(
            f"lateint.index.store: reading array {name!r} in {index_dir!r} failed "
            f"(rows [0, {store.shape[0] if store.shape else 0})): {error}"
        ) from error


def append_array(index_dir: str, name: str, array: np.ndarray) -> None:
    """Appends `array` [n, ...] to INDEX/<name> along axis 0, creating it if absent.

    The trailing shape and dtype must match the stored array.
    """
    array = np.asarray(array)
    if array.ndim == 0:
        raise ValueError(
            f"lateint.index.store: append_array({name!r}) needs ndim >= 1, got a scalar"
        )
    path = manifest_lib.array_path(index_dir, name)
    if not storage.exists(storage.join(path, "zarr.json")):
        # Appended arrays grow, so the chunk is not clamped to the first piece's length; a
        # smaller chunk than write_array's keeps the zero-padded edge chunk cheap to rewrite.
        row_bytes = array.dtype.itemsize * int(np.prod([max(1, n) for n in array.shape[1:]]))
        chunk_rows = max(1, APPEND_CHUNK_BYTES // max(1, row_bytes))
        store = create(index_dir, name, (0,) + array.shape[1:], array.dtype, chunk_rows)
    else:
        store = open_existing(index_dir, name)
    stored_dtype = np.dtype(store.dtype.numpy_dtype)
    if tuple(store.shape[1:]) != tuple(array.shape[1:]):
        raise ValueError(
            f"lateint.index.store: append_array({name!r}): trailing shape expected "
            f"{tuple(store.shape[1:])}, got {tuple(array.shape[1:])}"
        )
    if stored_dtype != array.dtype:
        raise TypeError(
            f"lateint.index.store: append_array({name!r}): dtype expected {stored_dtype}, got {array.dtype}"
        )
    if array.shape[0] == 0:
        return
    old_rows = store.shape[0]
    new_shape = [old_rows + array.shape[0]] + list(store.shape[1:])
    store = store.resize(exclusive_max=new_shape, expand_only=True).result()
    store[old_rows:].write(array).result()
