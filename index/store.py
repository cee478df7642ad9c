"""The one reader/writer of INDEX arrays (TensorStore zarr3).

The activation store (activations, region mask, concepts, global vectors) lives here: opening
and reading; its writing half is lateint.index.store_writer. Small and medium dense arrays
(first-stage centroids, CSR postings, ...) go through `write_array` / `read_array` /
`append_array`, implemented in `lateint.index.arrays` and re-exported here.
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from lateint.index import codecs
from lateint.index import manifest as manifest_lib
from lateint.index.arrays import append_array, read_array, write_array  # noqa: F401 (re-exported)
from lateint.index.arrays import open_existing as _open_existing
from lateint.index.store_writer import (  # noqa: F401 (re-exported)
    DEFAULT_INFLIGHT_BYTES,
    DEFAULT_SHARD_ROWS,
    WRITE_KEYS,
    StoreWriter,
)

# ---- the activation store -----------------------------------------------------------------


class StoreReadError(OSError):
    """An INDEX array is unreadable for an image range. str() names the directory and the
    TensorStore error (for logs); `public_message` names only the array, the image range and the
    first bad image, which is what a server may tell its clients (no server paths)."""

    def __init__(
        self,
        role: str,
        start: int,
        stop: int,
        bad: int | None,
        index_dir: str,
        cause: Exception,
        scope: str,
    ):
        self.role, self.start, self.stop, self.bad = role, start, stop, bad
        self.public_message = (
            f"index array {role!r} is unreadable for images [{start}, {stop})"
            f" ({scope}), first bad image {bad}"
        )
        super().__init__(
            f"lateint.index.store: array {role!r} of {index_dir!r} is unreadable for images "
            f"[{start}, {stop}) ({scope}), first bad image {bad}: {cause}"
        )


DEFAULT_CACHE_BYTES = 1 << 30  # reader chunk cache; warm gathers need the rows cached
# Rows a range read asks TensorStore for at once: it keeps ~1 KB per inner chunk in flight, and
# the inner chunks are single rows (for gathers), so reading 1M rows' region_mask (8 MB) in one
# request held 1.2 GB; in blocks of this many rows, 27 MB.
READ_BLOCK_ROWS = 8192


class ActivationStore(StoreWriter):
    """INDEX/{activations [N,R,H'], activation_scale [N,R] (int8), region_mask [N,R] bool,
    concepts [N,R,C], global [N,C] float32}, all sharded on axis 0 in `shard_rows`-row files with
    1-row inner chunks (fast random gathers, bench/store.py).

    Writer: `create`, `resume`, `extend`, then `write_batch`, `mark_completed`, `finalize`
    (lateint.index.store_writer, resumable after a kill at any moment).
    Reader: `open(index_dir)` refuses unfinished indexes; then `gather`, `gather_concepts`,
    `read_concepts`, `read_global`, `read_region_mask`, `blocks`.
    """

    def __init__(
        self,
        index_dir: str,
        manifest: dict,
        writable: bool,
        context: ts.Context,
        inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
    ):
        self.index_dir = index_dir
        self.manifest = manifest
        self.writable = writable
        self._init_writing(inflight_bytes)
        self._arrays = {
            role: _open_existing(index_dir, path, context, read_only=not writable)
            for role, path in manifest["arrays"].items()
        }
        self._layout = manifest_lib.array_layout(manifest)  # {role: (shape, dtype)}
        for role, array in self._arrays.items():
            found = (tuple(array.shape), np.dtype(array.dtype.numpy_dtype))
            shape, dtype = self._layout[role]
            # lateint.index.add grows the arrays before it publishes the manifest that counts the new
            # rows: rows past the manifest's N exist but are not this generation's.
            if found[1:] != (dtype,) or found[0][1:] != shape[1:] or found[0][0] < shape[0]:
                raise manifest_lib.IndexRefusedError(
                    f"lateint.index.store: array {role!r} in {index_dir!r}: (shape, dtype) expected "
                    f"{self._layout[role]} (manifest), got {found}"
                )
            if found[0][0] > shape[0]:
                self._arrays[role] = array[: shape[0]]
        self._uncached: dict | None = None  # range-read handles (_range_array)
        self._image_ids: list[str] | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, index_dir: str, cache_bytes: int = DEFAULT_CACHE_BYTES, manifest: dict | None = None
    ) -> ActivationStore:
        """Opens a finished index read-only; raises IncompleteIndexError otherwise. manifest:
        the generation to open, as read earlier (default: INDEX/manifest.json now)."""
        if manifest is None:
            manifest = manifest_lib.read_manifest(index_dir, require_complete=True)
        return cls(index_dir, manifest, False, codecs.io_context(cache_bytes=cache_bytes))

    # -- shapes -------------------------------------------------------------------------------

    num_images = property(lambda self: self.manifest["shapes"]["images"])
    regions = property(lambda self: self.manifest["shapes"]["regions"])
    hidden = property(lambda self: self.manifest["shapes"]["hidden"])
    concept_dim = property(lambda self: self.manifest["shapes"]["concept_dim"])
    storage_dtype = property(lambda self: self.manifest["storage"]["activations_dtype"])
    shard_rows = property(lambda self: self.manifest["layout"]["shard_rows"])

    def check_model(self, config, fingerprint: str) -> None:
        """Refuses (IndexRefusedError: binaries print one line and exit 2) an INDEX written by
        another model than (config, fingerprint): fingerprint, split layer and widths."""
        index_json = f"{self.index_dir}/{manifest_lib.MANIFEST_FILE}"
        try:
            manifest_lib.check_fingerprint(self.manifest, fingerprint)
        except manifest_lib.IndexRefusedError as error:
            raise manifest_lib.IndexRefusedError(f"{index_json}: {error}") from None
        for field, expected, got in (
            ("split_layer", config.split_layer, self.manifest["split_layer"]),
            ("shapes.hidden", config.stored_dim, self.hidden),
            ("shapes.concept_dim", config.concept_dim, self.concept_dim),
        ):
            if expected != got:
                raise manifest_lib.IndexRefusedError(
                    f"{index_json}: field {field!r} is {got}, the model's config has {expected}: "
                    "written by another model; rebuild it with this checkpoint"
                )

    @property
    def image_ids(self) -> list[str]:
        """External ids [N] (INDEX/ids.txt)."""
        if self._image_ids is None:
            self._image_ids = manifest_lib.read_ids(self.index_dir, self.manifest)
        return self._image_ids

    # -- reading ------------------------------------------------------------------------------

    def gather(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """ids [K] int -> (activations [K, R, H'] float32 decompressed, region_mask [K, R] bool).

        The activation, scale and mask reads run concurrently.
        """
        ids = self._check_ids(ids)
        roles = [r for r in ("activations", "activation_scale", "region_mask") if r in self._arrays]
        values = self._read_many({role: self._arrays[role].oindex[ids] for role in roles}, ids)
        activations = codecs.decode(
            values["activations"], self.storage_dtype, values.get("activation_scale")
        )
        return activations, values["region_mask"]

    def read_stored(self, role: str, ids) -> np.ndarray:
        """ids [K] int -> rows of array `role` as stored (no decoding; lateint.index.compact copies)."""
        ids = self._check_ids(ids)
        return self._read_many({role: self._arrays[role].oindex[ids]}, ids)[role]

    def gather_concepts(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """ids [K] int -> (concepts [K, R, C] float32, region_mask [K, R] bool)."""
        ids = self._check_ids(ids)
        values = self._read_many(
            {role: self._arrays[role].oindex[ids] for role in ("concepts", "region_mask")}, ids
        )
        return values["concepts"].astype(np.float32, copy=False), values["region_mask"]

    def read_concepts(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of concepts -> [stop - start, R, C] float32."""
        return self._read_rows("concepts", start, stop).astype(np.float32, copy=False)

    def read_global(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the global vectors -> [stop - start, C] float32."""
        return self._read_rows("global", start, stop)

    def read_region_mask(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the region mask -> [stop - start, R] bool."""
        return self._read_rows("region_mask", start, stop)

    def count_regions(self, start: int, stop: int) -> int:
        """Real regions in rows [start, stop)."""
        return sum(
            int(self._read_rows("region_mask", low, min(stop, low + self.shard_rows)).sum())
            for low in range(int(start), int(stop), self.shard_rows)
        )

    def blocks(self, block_rows: int | None = None):
        """Yields (start, stop) covering [0, N) in blocks of block_rows (default shard_rows)."""
        block_rows = int(block_rows or self.shard_rows)
        for start in range(0, self.num_images, block_rows):
            yield start, min(self.num_images, start + block_rows)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
            raise ValueError(
                f"ids must be a 1-D integer array [K], got shape {ids.shape} dtype {ids.dtype}"
            )
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_images):
            bad = ids[(ids < 0) | (ids >= self.num_images)]
            raise IndexError(
                f"image ids {bad[:5].tolist()} outside [0, {self.num_images}) "
                f"of index {self.index_dir!r}"
            )
        return ids

    def _read_rows(self, role: str, start: int, stop: int) -> np.ndarray:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.num_images:
            raise IndexError(f"{role}: rows [{start}, {stop}) outside [0, {self.num_images})")
        array = self._range_array(role)
        rows = np.empty((stop - start,) + tuple(array.shape[1:]), array.dtype.numpy_dtype)
        for first in range(start, stop, READ_BLOCK_ROWS):
            last = min(stop, first + READ_BLOCK_ROWS)
            block = self._read_many({role: array[first:last]}, np.arange(first, last))
            rows[first - start : last - start] = block[role]
        return rows

    def _range_array(self, role: str):
        """role's array for range reads. A read-only store reads ranges without the chunk
        cache: they stream (index builds, loading a first stage) and would fill it with rows
        that gathers do not want."""
        if self.writable:
            return self._arrays[role]
        if self._uncached is None:
            context = codecs.io_context(cache_bytes=0)
            self._uncached = {
                name: _open_existing(self.index_dir, path, context, read_only=True)[
                    : self._layout[name][0][0]
                ]
                for name, path in self.manifest["arrays"].items()
            }
        return self._uncached[role]

    def _read_many(self, views: dict, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Reads every view concurrently; a failure is re-read shard by shard, then row by row,
        so the error names the array, the shard's image range and the first bad image."""
        futures = {role: view.read() for role, view in views.items()}
        values = {}
        for role, future in futures.items():
            try:
                values[role] = np.asarray(future.result())
            except Exception as error:
                raise self._locate_failure(role, ids, error) from error
        return values

    def _locate_failure(self, role: str, ids: np.ndarray, error: Exception) -> OSError:
        array, shard_rows = self._arrays[role], self.shard_rows
        for shard in np.unique(ids // shard_rows):
            rows = ids[ids // shard_rows == shard]
            try:
                array.oindex[rows].read().result()
                continue
            except Exception as shard_error:
                error, bad = shard_error, None
            for row in rows:
                try:
                    array[int(row)].read().result()
                except Exception as row_error:
                    error, bad = row_error, int(row)
                    break
            start = int(shard) * shard_rows
            stop = min(self.num_images, start + shard_rows)
            return StoreReadError(role, start, stop, bad, self.index_dir, error, "one shard file")
        return StoreReadError(
            role, int(ids.min()), int(ids.max()) + 1, None, self.index_dir, error, "reading failed"
        )
