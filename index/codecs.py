"""How INDEX arrays are encoded on disk: activation storage modes, zarr3 codec chains and the
TensorStore specs and I/O context every INDEX array is opened with.

Storage modes for region activations [B, R, H'] (H' is the model's compressed width when the
learned compression is on, else H; every mode stores whatever width it is given):

  'float32'   exact; 4 bytes per value.
  'bfloat16'  round-to-nearest-even; 2 bytes per value, relative error <= 2**-8.
  'int8'      symmetric per-region scale: scale[b, r] = max|x[b, r, :]| / 127 (float32),
              values round(x / scale) in [-127, 127]; 1 byte per value + 4 bytes per region,
              absolute error <= scale / 2 = max|x[b, r, :]| / 254.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import tensorstore as ts

from lateint import storage

STORAGE_DTYPES = ("float32", "bfloat16", "int8")
CONCEPT_DTYPES = ("float32", "bfloat16")
INT8_LEVELS = 127.0

_NUMPY_DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int8": np.dtype(np.int8),
}


def check_storage_dtype(storage_dtype: str, allowed=STORAGE_DTYPES) -> str:
    """Returns `storage_dtype` if it is one of `allowed`, else raises naming both."""
    if storage_dtype not in allowed:
        raise ValueError(f"storage dtype must be one of {list(allowed)}, got {storage_dtype!r}")
    return storage_dtype


def numpy_dtype(storage_dtype: str) -> np.dtype:
    """The NumPy dtype stored on disk for a storage mode."""
    return _NUMPY_DTYPES[check_storage_dtype(storage_dtype)]


def bytes_per_region(storage_dtype: str, width: int) -> int:
    """Bytes one region's activation vector of `width` values takes on disk (payload only)."""
    itemsize = numpy_dtype(storage_dtype).itemsize
    scale_bytes = 4 if storage_dtype == "int8" else 0
    return itemsize * int(width) + scale_bytes


def encode(activations: np.ndarray, storage_dtype: str) -> dict[str, np.ndarray]:
    """Encodes activations [B, R, H'] float32 for storage.

    Returns {'activations': [B, R, H'] in the mode's dtype} plus, for 'int8',
    {'activation_scale': [B, R] float32}.
    """
    check_storage_dtype(storage_dtype)
    activations = np.asarray(activations)
    if activations.ndim != 3:
        raise ValueError(
            f"codecs.encode: activations must be [B, R, H'], got shape {activations.shape}"
        )
    activations = activations.astype(np.float32, copy=False)
    if not np.all(np.isfinite(activations)):
        raise ValueError("codecs.encode: activations contain NaN or Inf")
    if storage_dtype == "float32":
        return {"activations": np.ascontiguousarray(activations)}
    if storage_dtype == "bfloat16":
        return {"activations": activations.astype(numpy_dtype("bfloat16"))}
    scale = np.max(np.abs(activations), axis=-1) / INT8_LEVELS  # [B, R]
    safe_scale = np.where(scale > 0, scale, 1.0)[..., None]
    quantized = np.clip(np.rint(activations / safe_scale), -INT8_LEVELS, INT8_LEVELS)
    return {
        "activations": quantized.astype(np.int8),
        "activation_scale": scale.astype(np.float32),
    }


def decode(
    activations: np.ndarray, storage_dtype: str, activation_scale: np.ndarray | None = None
) -> np.ndarray:
    """Decodes stored activations [K, R, H'] (+ scale [K, R] for 'int8') to float32 [K, R, H']."""
    check_storage_dtype(storage_dtype)
    if storage_dtype == "int8":
        if activation_scale is None:
            raise ValueError("codecs.decode: storage dtype 'int8' needs activation_scale [K, R]")
        if activation_scale.shape != activations.shape[:-1]:
            raise ValueError(
                f"codecs.decode: activation_scale shape expected {activations.shape[:-1]}, "
                f"got {activation_scale.shape}"
            )
        decoded = activations.astype(np.float32)
        decoded *= activation_scale[..., None].astype(np.float32, copy=False)
        return decoded
    return np.asarray(activations).astype(np.float32, copy=False)


# ---- zarr3 codec chains -------------------------------------------------------------------

_BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC32C = {"name": "crc32c"}


def plain_codecs() -> list[dict]:
    """Chunk = raw little-endian bytes + crc32c, so a corrupted chunk fails to read."""
    return [_BYTES, _CRC32C]


def sharded_codecs(inner_chunk_shape: list[int]) -> list[dict]:
    """zarr3 `sharding_indexed`: one file per outer chunk, inner chunks addressed by an index.

    Both the inner chunks and the shard index carry a crc32c, so corruption anywhere in a shard
    file is a DATA_LOSS read error rather than silently wrong activations.
    """
    return [
        {
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [int(size) for size in inner_chunk_shape],
                "codecs": [_BYTES, _CRC32C],
                "index_codecs": [_BYTES, _CRC32C],
                "index_location": "end",
            },
        }
    ]


def zarr_data_type(dtype: np.dtype, name: str) -> str:
    """Maps a NumPy dtype to its zarr3 data_type name; raises for non-numeric dtypes."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    if dtype.name == "bfloat16":
        return "bfloat16"
    if dtype.kind in "iufc":
        return dtype.name
    raise TypeError(f"array {name!r} has dtype {dtype}; expected a numeric or bool dtype")


def layout_metadata(
    shape: list[int], dtype: np.dtype, name: str, chunk_rows: int, inner_rows: int | None
) -> dict:
    """zarr3 metadata for an array chunked along axis 0.

    chunk_rows: rows per file. inner_rows: None for plain chunks; else the sharding codec with
    `inner_rows`-row inner chunks inside each `chunk_rows`-row shard file.
    """
    trailing = [max(1, int(size)) for size in shape[1:]]
    chunk_shape = [max(1, int(chunk_rows))] + trailing if len(shape) else []
    if inner_rows is None:
        chain = plain_codecs()
    else:
        if chunk_rows % inner_rows:
            raise ValueError(
                f"array {name!r}: shard rows {chunk_rows} must be a multiple of inner rows "
                f"{inner_rows}"
            )
        chain = sharded_codecs([int(inner_rows)] + trailing)
    return {
        "shape": [int(size) for size in shape],
        "data_type": zarr_data_type(dtype, name),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default"},
        "codecs": chain,
    }


def zarr_spec(path: str, metadata: dict | None = None, replace: bool = True) -> dict:
    """zarr3 spec; creates when `metadata` is given (replace: deleting any old array; else
    opening an existing array whose metadata is the same), else opens."""
    spec = {
        "driver": "zarr3",
        "kvstore": storage.kvstore_spec(path),  # a local path or a gs:// / s3:// URL
        # A chunk equal to the fill value is still written, so a missing chunk file is always
        # an error on read (fill_missing_data_reads) instead of silently reading zeros.
        "fill_missing_data_reads": False,
        "store_data_equal_to_fill_value": True,
    }
    if metadata is None:
        spec["open"] = True
    else:
        spec.update(metadata=metadata, create=True)
        spec["delete_existing" if replace else "open"] = True
    return spec


def io_context(sync_writes: bool = True, cache_bytes: int = 0) -> ts.Context:
    """TensorStore resources: the chunk cache (shard indexes and rows for warm gathers) and
    whether the file driver fsyncs each written chunk (needed for the journal to be durable)."""
    return ts.Context(
        {"cache_pool": {"total_bytes_limit": int(cache_bytes)}, "file_io_sync": bool(sync_writes)}
    )
