"""The writing half of lateint.index.store.ActivationStore: creating, resuming and growing an
INDEX, queued shard-aligned writes, the journal and finalizing (a mixin: ActivationStore's
constructor opens the arrays and calls `_init_writing`).

    store = ActivationStore.resume(d)  # or .create(d, image_ids=..., ...) the first time
    for start, stop in store.pending_ranges(unit_rows):  # shard-aligned, unrecorded
        for each batch in [start, stop): store.write_batch(batch_start, outputs)
        store.mark_completed(start, stop)  # flushes, then journals
    store.finalize()                       # manifest "complete": true

Shapes: B rows of a batch, R regions, H' stored width, C concept width.
"""

from __future__ import annotations

import collections
from typing import Self

import numpy as np

from lateint import storage
from lateint.index import codecs
from lateint.index import manifest as manifest_lib
from lateint.index.arrays import create as _create
from lateint.index.arrays import open_existing as _open_existing

WRITE_KEYS = ("activations", "region_mask", "concepts", "global")
DEFAULT_SHARD_ROWS = 1024  # rows per shard file; measured in bench/store.py
DEFAULT_INFLIGHT_BYTES = 256 << 20


class StoreWriter:
    """Writer methods of ActivationStore (one process per shard), resumable after a kill at
    any moment. Memory: staged partial shards (one per array for in-order batches) plus at
    most `inflight_bytes` of queued writes (or one shard of one array, if larger)."""

    def _init_writing(self, inflight_bytes: int) -> None:
        self.inflight_limit = int(inflight_bytes)
        self.peak_inflight_bytes = 0  # most bytes ever pending at once (for tests and logs)
        self._inflight: collections.deque = collections.deque()
        self._inflight_bytes = 0
        self._staged: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self.first_new_row = 0  # rows below it belong to a published generation (extend)
        self.journal = manifest_lib.PROGRESS_FILE  # this writer's journal (one per worker)

    # -- opening for writing ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        index_dir: str,
        *,
        image_ids,
        regions: int,
        hidden: int,
        concept_dim: int,
        model_fingerprint: str,
        split_layer: int,
        storage_dtype: str = "bfloat16",
        compression_dim: int = 0,
        concepts_dtype: str = "float32",
        source=None,
        corpus: dict | None = None,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        overwrite: bool = False,
        inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
        sync_writes: bool = True,
        shared: bool = False,
    ) -> Self:
        """Creates an empty, incomplete index of len(image_ids) images with fixed shapes.

        hidden is the stored width H' (the compressed width when compression_dim > 0); corpus is
        the corpus fingerprint (lateint.index.corpus_fingerprint) resumes are checked against. Refuses an
        existing index unless overwrite, which deletes its arrays, journal and first stages.
        shared (several precompute workers, lateint.index.workers; on object storage worker 0
        alone creates, the others wait for its manifest): nothing is deleted, the ids,
        arrays and manifest are created unless another worker already did, and the store is
        opened on whichever manifest was published first (the caller checks it is this one).
        """
        image_ids = [str(image_id) for image_id in image_ids]
        arrays = {role: role for role in ("activations", "region_mask", "concepts", "global")}
        if storage_dtype == "int8":
            arrays["activation_scale"] = "activation_scale"
        fields = dict(
            arrays=arrays,
            model_fingerprint=model_fingerprint,
            split_layer=split_layer,
            storage_dtype=storage_dtype,
            compression_dim=compression_dim,
            concepts_dtype=concepts_dtype,
            regions=regions,
            hidden=hidden,
            concept_dim=concept_dim,
            shard_rows=shard_rows,
            source=source,
            corpus=corpus,
        )
        provisional = {"file": manifest_lib.IDS_FILE, "count": len(image_ids), "sha256": ""}
        manifest_lib.new_manifest(ids=provisional, **fields)  # bad arguments fail before deleting
        manifest_path = storage.join(index_dir, manifest_lib.MANIFEST_FILE)
        if storage.exists(manifest_path) and not overwrite and not shared:
            raise FileExistsError(f"{manifest_path} exists; pass overwrite=True to rebuild")
        storage.makedirs(index_dir)
        # Object storage has no conditional create we rely on: there a shared INDEX has one
        # creator (precompute's worker 0; the others wait for its manifest) and writes plainly.
        conditional = shared and not storage.is_remote(index_dir)
        for entry in (
            []
            if shared
            else [
                manifest_lib.MANIFEST_FILE,
                manifest_lib.PROGRESS_FILE,
                manifest_lib.JOURNAL_DIR,
                manifest_lib.IDS_FILE,
                "first_stage",
                "activation_scale",
                *arrays,
                *manifest_lib.GENERATION_ENTRIES,
            ]
        ):
            # manifest first: a crash leaves no manifest
            storage.rmtree(storage.join(index_dir, entry))
        manifest = manifest_lib.new_manifest(
            ids=manifest_lib.write_ids(index_dir, image_ids, shared=conditional), **fields
        )
        context = codecs.io_context(sync_writes=sync_writes)
        for role, (shape, dtype) in manifest_lib.array_layout(manifest).items():
            try:
                _create(
                    index_dir,
                    arrays[role],
                    shape,
                    dtype,
                    chunk_rows=shard_rows,
                    inner_rows=1,
                    context=context,
                    replace=not shared,
                )
            except ValueError as error:  # shared: another worker made it with another layout
                raise manifest_lib.IndexRefusedError(
                    f"lateint.index.store: array {role!r} in {index_dir!r} exists with another "
                    f"layout than this writer's {shape} {dtype}: {error}"
                ) from error
        if not manifest_lib.write_manifest(index_dir, manifest, shared=conditional):
            manifest = manifest_lib.read_manifest(index_dir, require_complete=False)
        return cls(index_dir, manifest, True, context, inflight_bytes)

    @classmethod
    def resume(
        cls, index_dir: str, inflight_bytes: int = DEFAULT_INFLIGHT_BYTES, sync_writes: bool = True
    ) -> Self:
        """Reopens an unfinished index for writing; `pending_ranges()` says what is left."""
        manifest = manifest_lib.read_manifest(index_dir, require_complete=False)
        if manifest["complete"]:
            raise FileExistsError(f"index {index_dir!r} is already complete; nothing to resume")
        context = codecs.io_context(sync_writes=sync_writes)
        return cls(index_dir, manifest, True, context, inflight_bytes)

    @classmethod
    def extend(
        cls,
        index_dir: str,
        ids: dict,
        inflight_bytes: int = DEFAULT_INFLIGHT_BYTES,
        sync_writes: bool = True,
    ) -> Self:
        """Opens a finished INDEX of N images for writing rows [N, ids['count']) (lateint.index.add).

        ids: the manifest 'ids' entry of the grown index (manifest.write_ids). Every array is
        resized to the new count; readers do not see the new rows, since the published manifest
        still says N. The writer's manifest (in memory only) describes the grown index:
        `pending_ranges`, `write_batch` and `mark_completed` then work as for precompute (the
        first unit starts at N, maybe inside a shard), and lateint.index.generation publishes it.
        """
        manifest = manifest_lib.read_manifest(index_dir)
        total, published = int(ids["count"]), manifest["shapes"]["images"]
        if total <= published:
            raise ValueError(
                f"extend: {index_dir!r} holds {published} images; the grown index "
                f"must hold more, got {total}"
            )
        context = codecs.io_context(sync_writes=sync_writes)
        for path in manifest["arrays"].values():
            array = _open_existing(index_dir, path, context)
            if array.shape[0] != total:  # rows past N are unpublished: shrinking them is safe
                array.resize(exclusive_max=[total] + list(array.shape[1:])).result()
        grown = dict(
            manifest,
            complete=False,
            ids=dict(ids),
            shapes=dict(manifest["shapes"], images=total),
            counts=dict(manifest["counts"], images=total, regions=None),
        )
        store = cls(index_dir, grown, True, context, inflight_bytes)
        store.first_new_row = published
        return store

    # -- writing ------------------------------------------------------------------------------

    def write_batch(self, start: int, arrays: dict) -> None:
        """Queues rows [start, start + B) of every array; returns before they are on disk.

        arrays: activations [B, R, H'] float32 (encoded here per the storage mode), region_mask
        [B, R] bool, concepts [B, R, C] float, global [B, C] float. Rows of a shard are staged in
        RAM until the shard is whole, so each shard file is written once; pending writes are
        capped at `inflight_bytes` (the oldest commit is awaited first).
        """
        self._require_writable("write_batch")
        if set(arrays) != set(WRITE_KEYS):
            raise ValueError(
                f"write_batch: keys expected {sorted(WRITE_KEYS)}, got {sorted(arrays)}"
            )
        rows = {role: np.asarray(value) for role, value in arrays.items()}
        batch = rows["activations"].shape[0] if rows["activations"].ndim else -1
        rows.update(codecs.encode(rows["activations"], self.storage_dtype))
        for role, value in rows.items():
            shape, dtype = self._layout[role]
            if value.shape != (batch,) + shape[1:]:
                raise ValueError(
                    f"write_batch: {role!r} shape expected {(batch,) + shape[1:]}, "
                    f"got {value.shape}"
                )
            rows[role] = value.astype(dtype, copy=False)
        start, stop = int(start), int(start) + batch
        if start < 0 or stop > self.num_images:
            raise IndexError(f"write_batch: rows [{start}, {stop}) outside [0, {self.num_images})")
        shard_rows = self.shard_rows
        for shard in range(start // shard_rows, -(-stop // shard_rows)):
            shard_start = shard * shard_rows
            shard_stop = min(self.num_images, shard_start + shard_rows)
            low, high = max(start, shard_start), min(stop, shard_stop)
            piece = {role: value[low - start : high - start] for role, value in rows.items()}
            if (low, high) == (shard_start, shard_stop):
                self._staged.pop(shard, None)  # older staged rows must not overwrite these later
                self._issue(low, piece)
                continue
            buffers, filled = self._staged.setdefault(
                shard,
                (
                    {
                        role: np.zeros((shard_stop - shard_start,) + value.shape[1:], value.dtype)
                        for role, value in rows.items()
                    },
                    np.zeros(shard_stop - shard_start, bool),
                ),
            )
            for role, value in piece.items():
                buffers[role][low - shard_start : high - shard_start] = value
            filled[low - shard_start : high - shard_start] = True
            if filled.all():
                del self._staged[shard]
                self._issue(shard_start, buffers)

    def _issue(self, start: int, pieces: dict[str, np.ndarray]) -> None:
        for role, value in pieces.items():
            while self._inflight and self._inflight_bytes + value.nbytes > self.inflight_limit:
                self._wait_oldest()
            stop = start + value.shape[0]
            future = self._arrays[role][start:stop].write(value)
            self._inflight.append((future, value.nbytes, role, start, stop))
            self._inflight_bytes += value.nbytes
            self.peak_inflight_bytes = max(self.peak_inflight_bytes, self._inflight_bytes)

    def _wait_oldest(self) -> None:
        future, nbytes, role, start, stop = self._inflight.popleft()
        self._inflight_bytes -= nbytes
        try:
            future.result()
        except Exception as error:
            raise OSError(
                f"lateint.index.store: writing array {role!r} images [{start}, {stop}) "
                f"in {self.index_dir!r} failed: {error}"
            ) from error

    def flush(self) -> None:
        """Writes staged partial shards and waits until every queued write is committed."""
        for shard in sorted(self._staged):
            buffers, filled = self._staged.pop(shard)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], filled.astype(np.int8), [0]])))
            for low, high in zip(edges[0::2], edges[1::2]):
                self._issue(
                    shard * self.shard_rows + int(low),
                    {role: value[low:high] for role, value in buffers.items()},
                )
        while self._inflight:
            self._wait_oldest()

    def completed_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) image ranges recorded as written, by any writer (every journal)."""
        return manifest_lib.completed_ranges(self.index_dir)

    def pending_ranges(self, unit_rows: int | None = None) -> list[tuple[int, int]]:
        """Unrecorded ranges cut into shard-aligned resume units of `unit_rows` (a multiple of
        shard_rows; default shard_rows) rows: write each whole, then `mark_completed` it."""
        unit_rows = unit_rows or self.shard_rows
        if unit_rows % self.shard_rows:
            raise ValueError(
                f"unit_rows {unit_rows} must be a multiple of shard_rows {self.shard_rows}"
            )
        units = []
        for start, stop in manifest_lib.missing_ranges(self.index_dir, self.num_images):
            # Cut at multiples of unit_rows: only a range starting at first_new_row (lateint.index.add)
            # begins inside a unit.
            edges = [start] + list(range((start // unit_rows + 1) * unit_rows, stop, unit_rows))
            units += [(low, min(stop, high)) for low, high in zip(edges, edges[1:] + [stop])]
        return units

    def mark_completed(self, start: int, stop: int) -> None:
        """Flushes, then journals [start, stop) as done. The range must be shard-aligned, so a
        resumed run rewrites whole shard files and never keeps a half-written one."""
        self._require_writable("mark_completed")
        aligned = (start % self.shard_rows == 0 or start == self.first_new_row) and (
            stop % self.shard_rows == 0 or stop == self.num_images
        )
        if not (0 <= start < stop <= self.num_images) or not aligned:
            raise ValueError(
                f"mark_completed: [{start}, {stop}) must be a non-empty range in "
                f"[0, {self.num_images}] with shard-aligned ends "
                f"(shard_rows {self.shard_rows})"
            )
        self.flush()
        manifest_lib.mark_completed(self.index_dir, start, stop, self.journal)

    def finalize(self) -> dict:
        """Flushes, checks every image is journaled, counts regions, marks the manifest complete.

        Returns the final manifest. Raises RuntimeError listing the missing ranges otherwise.
        """
        self._require_writable("finalize")
        self.flush()
        missing = manifest_lib.missing_ranges(self.index_dir, self.num_images)
        if missing:
            raise RuntimeError(
                f"finalize: image ranges {missing} of {self.index_dir!r} were "
                f"never marked completed"
            )
        regions = self.count_regions(0, self.num_images)
        self.manifest = dict(
            self.manifest,
            complete=True,
            finalized=manifest_lib.now_utc(),
            counts=dict(self.manifest["counts"], regions=regions),
        )
        manifest_lib.write_manifest(self.index_dir, self.manifest)
        return self.manifest

    def _require_writable(self, operation: str) -> None:
        if not self.writable:
            raise PermissionError(f"{operation}: {self.index_dir!r} was opened read-only")
