"""Benchmarks the INDEX activation layout; prints one JSON object.

    python -m bench.store [--images=20000 --regions=36 --hidden=384 --dir=/tmp/bench_store]

Measures, on [N, R, H] float32 activations:
  * write throughput of each zarr3 layout (1-row chunks, 16-row chunks, sharding codec with
    `shard_rows`-row shards of 1-row inner chunks) against raw `numpy.tofile` of the same bytes.
    Both sides of each ratio do the same durability work: the layouts write with TensorStore's
    file_io_sync (each chunk file fsynced, as the INDEX store does) and are compared with
    tofile + fsync; the sharded layout without file_io_sync is compared with tofile alone;
  * gather latency of K random images, warm (everything read once first; fresh random ids per
    query; with the reader's chunk cache, and with the OS page cache only) against an in-RAM
    NumPy fancy index, and cold (page cache dropped through
    /proc/sys/vm/drop_caches before each query) against a NumPy memmap of the tofile file;
  * the ActivationStore end to end (all arrays, bf16): write_batch throughput and gather latency;
  * bytes per region and round-trip error of each storage mode.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import tensorstore as ts
from absl import app, flags

from lateint.index import codecs, store

_IMAGES = flags.DEFINE_integer("images", 20_000, "N images")
_REGIONS = flags.DEFINE_integer("regions", 36, "R regions per image")
_HIDDEN = flags.DEFINE_integer("hidden", 384, "H activation width")
_CONCEPTS = flags.DEFINE_integer("concept_dim", 128, "C concept width (ActivationStore run)")
_K = flags.DEFINE_integer("k", 100, "images per gather")
_WARM_QUERIES = flags.DEFINE_integer("warm_queries", 50, "timed warm gathers per layout")
_COLD_QUERIES = flags.DEFINE_integer("cold_queries", 5, "timed cold gathers per layout")
_SHARD_ROWS = flags.DEFINE_integer("shard_rows", store.DEFAULT_SHARD_ROWS, "rows per shard")
_DIR = flags.DEFINE_string("dir", "/tmp/bench_store", "scratch directory (deleted first)")

LAYOUTS = {"rows_1": (1, None), "rows_16": (16, None), "sharded": (None, 1)}


def _drop_page_cache() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def _median_ms(function, queries: int) -> float:
    times = []
    for _ in range(queries):
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return round(1e3 * float(np.median(times)), 3)


def _write_layout(path: str, data: np.ndarray, chunk_rows: int, inner_rows, sync: bool) -> float:
    """Writes `data` [N, R, H] in shard-sized blocks with bounded in-flight bytes; returns s."""
    metadata = codecs.layout_metadata(
        list(data.shape), data.dtype, "activations", chunk_rows, inner_rows
    )
    spec = codecs.zarr_spec(path, metadata)
    context = ts.Context({"file_io_sync": sync})
    begin = time.perf_counter()
    array = ts.open(spec, context=context).result()
    block = max(chunk_rows, 1024)
    pending, pending_bytes = [], 0
    for start in range(0, data.shape[0], block):
        piece = data[start : start + block]
        while pending and pending_bytes + piece.nbytes > store.DEFAULT_INFLIGHT_BYTES:
            future, nbytes = pending.pop(0)
            future.result()
            pending_bytes -= nbytes
        pending.append((array[start : start + piece.shape[0]].write(piece), piece.nbytes))
        pending_bytes += piece.nbytes
    for future, _ in pending:
        future.result()
    return time.perf_counter() - begin


def _open_reader(path: str, cache_bytes: int) -> ts.TensorStore:
    spec = codecs.zarr_spec(path)
    spec.update(recheck_cached_data="open", recheck_cached_metadata="open")
    context = ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}})
    return ts.open(spec, context=context, read=True).result()


def _bench_layouts(root: str, data: np.ndarray, raw_path: str, rng) -> dict:
    results = {}
    images, k = data.shape[0], _K.value
    for name, (chunk_rows, inner_rows) in LAYOUTS.items():
        chunk_rows = chunk_rows or _SHARD_ROWS.value
        path = os.path.join(root, name)
        seconds = _write_layout(path, data, chunk_rows, inner_rows, sync=True)
        entry = {
            "write_mb_s": round(data.nbytes / seconds / 1e6, 1),
            "files": sum(len(files) for _, _, files in os.walk(path)),
        }
        if name == "sharded":
            shutil.rmtree(path)
            nosync = _write_layout(path, data, chunk_rows, inner_rows, sync=False)
            entry["write_mb_s_no_fsync"] = round(data.nbytes / nosync / 1e6, 1)
        reader = _open_reader(path, store.DEFAULT_CACHE_BYTES)
        reader.read().result()  # page cache and shard indexes warm
        check = rng.integers(0, images, k)
        assert np.array_equal(reader.oindex[check].read().result(), data[check])
        entry["gather_warm_ms"] = _median_ms(
            lambda reader=reader: reader.oindex[rng.integers(0, images, k)].read().result(),
            _WARM_QUERIES.value,
        )
        uncached = _open_reader(path, 0)  # OS page cache only, no TensorStore chunk cache
        entry["gather_page_cache_only_ms"] = _median_ms(
            lambda uncached=uncached: uncached.oindex[rng.integers(0, images, k)].read().result(),
            _WARM_QUERIES.value,
        )
        cold = []
        for _ in range(_COLD_QUERIES.value):
            _drop_page_cache()
            fresh = _open_reader(path, store.DEFAULT_CACHE_BYTES)
            cold.append(
                _median_ms(
                    lambda fresh=fresh: fresh.oindex[rng.integers(0, images, k)].read().result(), 1
                )
            )
        entry["gather_cold_ms"] = round(float(np.median(cold)), 3)
        results[name] = entry
    memmap_cold = []
    for _ in range(_COLD_QUERIES.value):
        _drop_page_cache()
        memmap = np.memmap(raw_path, dtype=data.dtype, mode="r", shape=data.shape)
        memmap_cold.append(
            _median_ms(
                lambda memmap=memmap: np.ascontiguousarray(memmap[rng.integers(0, images, k)]), 1
            )
        )
    results["numpy_memmap_cold_ms"] = round(float(np.median(memmap_cold)), 3)
    return results


def _bench_activation_store(root: str, data: np.ndarray, rng) -> dict:
    images, regions, _ = data.shape
    concept_dim = _CONCEPTS.value
    mask = rng.random((images, regions)) < 0.8
    concepts = rng.standard_normal((images, regions, concept_dim)).astype(np.float32)
    global_vectors = rng.standard_normal((images, concept_dim)).astype(np.float32)
    index_dir = os.path.join(root, "activation_store")
    begin = time.perf_counter()
    writer = store.ActivationStore.create(
        index_dir,
        image_ids=[str(i) for i in range(images)],
        regions=regions,
        hidden=data.shape[2],
        concept_dim=concept_dim,
        model_fingerprint="bench",
        split_layer=0,
        storage_dtype="bfloat16",
        shard_rows=_SHARD_ROWS.value,
    )
    batch = 256
    for start in range(0, images, batch):
        stop = min(images, start + batch)
        writer.write_batch(
            start,
            {
                "activations": data[start:stop],
                "region_mask": mask[start:stop],
                "concepts": concepts[start:stop],
                "global": global_vectors[start:stop],
            },
        )
    for start, stop in writer.pending_ranges():
        writer.mark_completed(start, stop)
    writer.finalize()
    seconds = time.perf_counter() - begin
    stored_bytes = data.nbytes // 2 + mask.nbytes + concepts.nbytes + global_vectors.nbytes
    reader = store.ActivationStore.open(index_dir)
    for start, stop in reader.blocks(4096):
        reader.gather(np.arange(start, stop))  # warm
    k = _K.value
    activation_files = [
        os.path.join(directory, name)
        for directory, _, names in os.walk(os.path.join(index_dir, "activations"))
        for name in names
    ]
    disk_bytes = sum(os.path.getsize(path) for path in activation_files)
    return {
        "storage_dtype": "bfloat16",
        "concept_dim": concept_dim,
        "write_batch_rows": batch,
        "write_mb_s_of_stored_bytes": round(stored_bytes / seconds / 1e6, 1),
        "images_per_s": round(images / seconds, 1),
        "peak_inflight_mb": round(writer.peak_inflight_bytes / 1e6, 1),
        "activations_disk_bytes_per_region": round(disk_bytes / (images * regions), 2),
        "gather_warm_ms": _median_ms(
            lambda: reader.gather(rng.integers(0, images, k)), _WARM_QUERIES.value
        ),
        "gather_concepts_warm_ms": _median_ms(
            lambda: reader.gather_concepts(rng.integers(0, images, k)), _WARM_QUERIES.value
        ),
    }


def _storage_modes(data: np.ndarray) -> dict:
    sample = data[: min(1000, data.shape[0])]
    results = {}
    for mode in codecs.STORAGE_DTYPES:
        encoded = codecs.encode(sample, mode)
        decoded = codecs.decode(encoded["activations"], mode, encoded.get("activation_scale"))
        error = np.abs(decoded - sample)
        results[mode] = {
            "bytes_per_region": codecs.bytes_per_region(mode, data.shape[2]),
            "max_abs_error": float(error.max()),
            "relative_rms_error": float(np.sqrt(np.mean(error**2) / np.mean(sample**2))),
        }
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    root = _DIR.value
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = np.random.default_rng(0)
    shape = (_IMAGES.value, _REGIONS.value, _HIDDEN.value)
    data = rng.standard_normal(shape, dtype=np.float32)
    raw_path = os.path.join(root, "raw.f32")
    begin = time.perf_counter()
    data.tofile(raw_path)
    tofile_seconds = time.perf_counter() - begin
    with open(raw_path, "rb+") as handle:
        os.fsync(handle.fileno())
    tofile_fsync_seconds = time.perf_counter() - begin  # tofile, then its fsync
    k = _K.value
    numpy_warm = _median_ms(lambda: data[rng.integers(0, shape[0], k)], _WARM_QUERIES.value)
    layouts = _bench_layouts(root, data, raw_path, rng)
    tofile_mb_s = data.nbytes / tofile_seconds / 1e6
    tofile_fsync_mb_s = data.nbytes / tofile_fsync_seconds / 1e6
    for name in LAYOUTS:
        layouts[name]["write_ratio_vs_tofile_fsync"] = round(
            layouts[name]["write_mb_s"] / tofile_fsync_mb_s, 3
        )
    layouts["sharded"]["write_no_fsync_ratio_vs_tofile"] = round(
        layouts["sharded"]["write_mb_s_no_fsync"] / tofile_mb_s, 3
    )
    for name in LAYOUTS:
        layouts[name]["gather_warm_ratio_vs_numpy"] = round(
            layouts[name]["gather_warm_ms"] / numpy_warm, 2
        )
        layouts[name]["gather_cold_ratio_vs_memmap"] = round(
            layouts[name]["gather_cold_ms"] / layouts["numpy_memmap_cold_ms"], 4
        )
    result = {
        "shape": list(shape),
        "dtype": "float32",
        "bytes": data.nbytes,
        "k": k,
        "shard_rows": _SHARD_ROWS.value,
        "cold_method": "drop_caches" if _drop_page_cache() else "unavailable (not root)",
        "includes": {
            "numpy_tofile_mb_s": "ndarray.tofile of the whole array into a new file, no fsync",
            "numpy_tofile_fsync_mb_s": "the same tofile, then one fsync of the file",
            "layouts.*.write_mb_s": "ts.open (create) + every write with file_io_sync (each "
            "chunk or shard file fsynced) until the last commit",
            "layouts.sharded.write_mb_s_no_fsync": "the same without file_io_sync",
            "layouts.*.write_ratio_vs_tofile_fsync": "write_mb_s / numpy_tofile_fsync_mb_s: "
            "both fsync",
            "layouts.sharded.write_no_fsync_ratio_vs_tofile": "write_mb_s_no_fsync / "
            "numpy_tofile_mb_s: neither fsyncs",
            "gather_*_ms": "median of one gather of k random images (fresh ids per query)",
            "activation_store.write_mb_s_of_stored_bytes": "create + write_batch of every "
            "array + journal + finalize (file_io_sync on), over the stored bytes",
        },
        "numpy_tofile_mb_s": round(tofile_mb_s, 1),
        "numpy_tofile_fsync_mb_s": round(tofile_fsync_mb_s, 1),
        "numpy_gather_warm_ms": numpy_warm,
        "layouts": layouts,
        "activation_store": _bench_activation_store(root, data, rng),
        "storage_modes": _storage_modes(data),
    }
    print(json.dumps(result))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
