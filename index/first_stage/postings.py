"""Inverted lists in CSR form, and their on-disk generations with an append-only delta.

One implementation serves every inverted-list stage (concept centroids, surrogate-text terms).
Shapes: K lists, P postings, M probed lists.

In memory (`InvertedLists`): offsets [K+1] int64; images [P] int32, ascending within each list;
weights [P] (float32 for concepts, uint16 term frequencies for surrogate text). An image posts at
most once per list.

On disk, under `<prefix>/g<generation>/` (written through lateint.index.store):
  offsets, images, weights      the base CSR, written at build or compaction
  delta_lists, delta_images,    postings added since, appended image-major (ascending image,
  delta_weights                 then list) with lateint.index.store.append_array
The stage's json record holds the generation and the committed lengths (base_postings,
delta_postings): it is the commit point, so rows appended by a run killed before its json update
are ignored, and the next add compacts them away. Because added images always have larger ids
than every stored image, the base followed by the sorted delta is exactly the CSR a full rebuild
on the final set would write (`merge`); compaction rewrites it as the base of a new generation
and removes the old one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lateint import storage
from lateint.index import arrays as arrays_lib
from lateint.index import store
from lateint.index.first_stage import records, sources

COMPACT_FRACTION = 0.25  # compact once the delta exceeds this fraction of the base
MIN_COMPACT_POSTINGS = 1 << 16  # ... and this many postings
MAX_IMAGES = np.iinfo(np.int32).max
READ_POSTINGS = 1 << 22  # postings read at a time when only some images' are kept


@dataclasses.dataclass(frozen=True)
class InvertedLists:
    """CSR postings: list k holds images[offsets[k]:offsets[k+1]] with their weights."""

    offsets: np.ndarray  # [K+1] int64
    images: np.ndarray  # [P] int32
    weights: np.ndarray  # [P]

    @property
    def num_lists(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def num_postings(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.images.nbytes + self.weights.nbytes

    @classmethod
    def from_postings(cls, lists, images, weights, num_lists: int) -> InvertedLists:
        """Builds the CSR from postings in any order.

        Args:
          lists: [P] int list (centroid or term) of each posting, in [0, num_lists).
          images: [P] int image ids in [0, 2^31); (list, image) pairs must be distinct.
          weights: [P] weights of any numeric dtype (kept).
        """
        lists = np.asarray(lists, np.int64)
        images = np.asarray(images, np.int64)
        weights = np.asarray(weights)
        if not lists.shape == images.shape == weights.shape or lists.ndim != 1:
            raise ValueError(
                f"InvertedLists.from_postings: lists, images, weights expected equal "
                f"[P] shapes, got {lists.shape}, {images.shape}, {weights.shape}"
            )
        if lists.size and (lists.min() < 0 or lists.max() >= num_lists):
            raise ValueError(
                f"InvertedLists.from_postings: list ids expected in "
                f"[0, {num_lists}), got [{lists.min()}, {lists.max()}]"
            )
        if images.size and (images.min() < 0 or images.max() > MAX_IMAGES):
            raise ValueError(
                f"InvertedLists.from_postings: image ids expected in "
                f"[0, {MAX_IMAGES}], got [{images.min()}, {images.max()}]"
            )
        order = np.lexsort((images, lists))
        lists, images = lists[order], images[order]
        duplicate = (lists[1:] == lists[:-1]) & (images[1:] == images[:-1])
        if np.any(duplicate):
            at = int(np.flatnonzero(duplicate)[0])
            raise ValueError(
                f"InvertedLists.from_postings: image {images[at]} posts twice to list {lists[at]}"
            )
        return cls(_offsets_of(lists, num_lists), images.astype(np.int32), weights[order])

    def merge(self, later: InvertedLists) -> InvertedLists:
        """This CSR followed, list by list, by `later`, whose images all have larger ids.

        O(P): each list's postings stay in ascending image order, so the result equals
        `from_postings` over the union.
        """
        if later.num_lists != self.num_lists:
            raise ValueError(
                f"InvertedLists.merge: lists expected {self.num_lists}, got {later.num_lists}"
            )
        if later.num_postings == 0:
            return self
        if self.num_postings and later.images.min() <= self.images.max():
            raise ValueError(
                f"InvertedLists.merge: later images must all exceed "
                f"{self.images.max()}, got minimum {later.images.min()}"
            )
        counts = np.diff(self.offsets)
        later_counts = np.diff(later.offsets)
        offsets = np.zeros_like(self.offsets)
        np.cumsum(counts + later_counts, out=offsets[1:])
        total = self.num_postings + later.num_postings
        images = np.empty(total, np.int32)
        weights = np.empty(total, np.result_type(self.weights, later.weights))
        # Position of each old posting: its list's new start plus its rank within the list.
        old_list = np.repeat(np.arange(self.num_lists), counts)
        old_positions = offsets[old_list] + np.arange(self.num_postings) - self.offsets[old_list]
        new_list = np.repeat(np.arange(self.num_lists), later_counts)
        new_positions = (
            offsets[new_list]
            + counts[new_list]
            + np.arange(later.num_postings)
            - later.offsets[new_list]
        )
        images[old_positions], weights[old_positions] = self.images, self.weights
        images[new_positions], weights[new_positions] = later.images, later.weights
        return InvertedLists(offsets, images, weights)

    def keep(self, kept) -> InvertedLists:
        """The postings of the images where kept [N] bool is True, ids and order unchanged."""
        kept = np.asarray(kept, bool)
        if self.num_postings and self.images.max() >= kept.shape[0]:
            raise ValueError(
                f"InvertedLists: the image mask covers {kept.shape[0]} images, "
                f"postings reach image {self.images.max()}"
            )
        mask = kept[self.images]
        list_of_posting = np.repeat(np.arange(self.num_lists), np.diff(self.offsets))
        return InvertedLists(
            _offsets_of(list_of_posting[mask], self.num_lists),
            self.images[mask],
            self.weights[mask],
        )

    def select(self, alive) -> InvertedLists:
        """Drops the postings of images where alive [N] bool is False and renumbers the others
        0..alive.sum()-1 in order; the map is monotone, so the result equals `from_postings`
        over the surviving images."""
        alive = np.asarray(alive, bool)
        kept = self.keep(alive)
        renumbered = np.cumsum(alive) - 1
        return InvertedLists(kept.offsets, renumbered[kept.images].astype(np.int32), kept.weights)

    def gather(self, lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every posting of the given lists, vectorised.

        Args:
          lists: [M] int list ids (repeats allowed).
        Returns:
          (probe [S] int64 index into `lists` of each posting, images [S] int64, weights [S]),
          S = total length of the probed lists.
        """
        lists = np.asarray(lists, np.int64)
        starts = self.offsets[lists]
        counts = self.offsets[lists + 1] - starts
        probe = np.repeat(np.arange(lists.shape[0]), counts)
        first = np.cumsum(counts) - counts
        positions = starts[probe] + np.arange(probe.shape[0]) - first[probe]
        return probe, self.images[positions].astype(np.int64), self.weights[positions]


def empty_lists(num_lists: int, weight_dtype) -> InvertedLists:
    return InvertedLists(
        np.zeros(num_lists + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, weight_dtype)
    )


def generation_prefix(prefix: str, generation: int) -> str:
    return f"{prefix}/g{int(generation)}"


def next_generation(index_dir: str, prefix: str) -> int:
    """One more than the largest `<prefix>/g*` generation on disk (0 when none)."""
    folder = records.folder(index_dir, prefix)
    if not storage.isdir(folder):
        return 0
    found = [
        int(entry[1:])
        for entry in storage.listdir(folder)
        if entry.startswith("g") and entry[1:].isdigit()
    ]
    return max(found, default=-1) + 1


def write_base(index_dir: str, prefix: str, generation: int, lists: InvertedLists) -> dict:
    """Writes `lists` as the base of `generation`; returns the record fields to commit."""
    base = generation_prefix(prefix, generation)
    store.write_array(index_dir, f"{base}/offsets", lists.offsets)
    store.write_array(index_dir, f"{base}/images", lists.images)
    store.write_array(index_dir, f"{base}/weights", lists.weights)
    return {
        "generation": int(generation),
        "num_lists": lists.num_lists,
        "base_postings": lists.num_postings,
        "delta_postings": 0,
    }


def _read_delta(index_dir: str, base: str, name: str, dtype) -> np.ndarray:
    path = records.folder(index_dir, f"{base}/{name}")
    if not storage.exists(storage.join(path, "zarr.json")):
        return np.zeros(0, dtype)
    return store.read_array(index_dir, f"{base}/{name}")


def _offsets_of(list_of_posting: np.ndarray, num_lists: int) -> np.ndarray:
    """[K+1] CSR offsets of postings in list order, given each one's list [P]."""
    offsets = np.zeros(num_lists + 1, np.int64)
    np.cumsum(np.bincount(list_of_posting, minlength=num_lists), out=offsets[1:])
    return offsets


def _read_base(index_dir: str, base: str, record: dict, kept) -> InvertedLists:
    """The base CSR; with kept [N] bool only those images' postings, read READ_POSTINGS at a
    time (a process of a sharded server never holds every posting)."""
    offsets = store.read_array(index_dir, f"{base}/offsets")
    images = arrays_lib.open_existing(index_dir, f"{base}/images", read_only=True)
    weights = arrays_lib.open_existing(index_dir, f"{base}/weights", read_only=True)
    total = record["base_postings"]
    if offsets.shape != (record["num_lists"] + 1,) or tuple(images.shape) != (total,):
        raise ValueError(
            f"{index_dir}/{base}: offsets/images shapes expected "
            f"({record['num_lists'] + 1},)/({total},) from the "
            f"stage record, got {offsets.shape}/{tuple(images.shape)}"
        )
    if kept is None:
        return InvertedLists(
            offsets, np.asarray(images.read().result()), np.asarray(weights.read().result())
        )
    pieces = []
    for start in range(0, total, READ_POSTINGS):
        stop = min(total, start + READ_POSTINGS)
        block = np.asarray(images[start:stop].read().result())
        mask = kept[block]
        lists = np.searchsorted(offsets, np.arange(start, stop)[mask], side="right") - 1
        pieces.append((lists, block[mask], np.asarray(weights[start:stop].read().result())[mask]))
    lists, kept_images, kept_weights = (
        np.concatenate([piece[column] for piece in pieces]) if pieces else np.zeros(0, dtype)
        for column, dtype in ((0, np.int64), (1, np.int32), (2, weights.dtype.numpy_dtype))
    )
    return InvertedLists(_offsets_of(lists, record["num_lists"]), kept_images, kept_weights)


def read_lists(index_dir: str, prefix: str, record: dict, kept=None) -> InvertedLists:
    """The committed postings of a stage (base merged with the delta) as one CSR. kept [N]
    bool: only the postings of those images (ids unchanged), the base read block by block."""
    base = generation_prefix(prefix, record["generation"])
    kept = None if kept is None else np.asarray(kept, bool)
    lists = _read_base(index_dir, base, record, kept)
    delta = record["delta_postings"]
    if delta == 0:
        return lists
    columns = [
        _read_delta(index_dir, base, name, dtype)[:delta]
        for name, dtype in (
            ("delta_lists", np.int32),
            ("delta_images", np.int32),
            ("delta_weights", lists.weights.dtype),
        )
    ]
    if any(column.shape[0] != delta for column in columns):
        raise ValueError(
            f"{index_dir}/{base}: delta arrays hold fewer than the committed {delta} postings"
        )
    if kept is not None:
        mask = kept[columns[1]]
        columns = [column[mask] for column in columns]
    return lists.merge(InvertedLists.from_postings(*columns, record["num_lists"]))


def append_postings(index_dir: str, prefix: str, record: dict, lists, images, weights) -> dict:
    """Adds postings of new images (ids above every stored one); returns the postings fields
    (generation, num_lists, base_postings, delta_postings) to commit.

    Appends to the delta, or compacts base + delta + new into a new generation when the delta
    would exceed COMPACT_FRACTION of the base or holds uncommitted rows of a killed run. The
    caller commits by writing these postings fields into its record; `remove_stale_generations`
    then cleans up.
    """
    lists = np.asarray(lists, np.int32)
    images = np.asarray(images, np.int32)
    base = generation_prefix(prefix, record["generation"])
    stored = _read_delta(index_dir, base, "delta_lists", np.int32).shape[0]
    delta = record["delta_postings"]
    grown = delta + lists.shape[0]
    if stored == delta and grown <= max(
        COMPACT_FRACTION * record["base_postings"], MIN_COMPACT_POSTINGS
    ):
        if lists.shape[0]:
            order = np.lexsort((lists, images))
            store.append_array(index_dir, f"{base}/delta_lists", lists[order])
            store.append_array(index_dir, f"{base}/delta_images", images[order])
            store.append_array(index_dir, f"{base}/delta_weights", np.asarray(weights)[order])
        return {
            "generation": record["generation"],
            "num_lists": record["num_lists"],
            "base_postings": record["base_postings"],
            "delta_postings": grown,
        }
    merged = read_lists(index_dir, prefix, record).merge(
        InvertedLists.from_postings(lists, images, weights, record["num_lists"])
    )
    return write_base(index_dir, prefix, next_generation(index_dir, prefix), merged)


def remove_stale_generations(index_dir: str, prefix: str, keep: int) -> None:
    """Deletes `<prefix>/g*` folders other than generation `keep` (after its record commit) and
    those the INDEX manifest still publishes (records.referenced_generations)."""
    kept = {int(keep)} | records.referenced_generations(index_dir, prefix)
    remove_folders(index_dir, prefix, {f"g{generation}" for generation in kept})


def remove_folders(index_dir: str, prefix: str, keep) -> None:
    """Deletes the `<prefix>/g<n>` entries whose name is not in `keep`."""
    folder = records.folder(index_dir, prefix)
    if not storage.isdir(folder):
        return
    for entry in storage.listdir(folder):
        if entry.startswith("g") and entry[1:].isdigit() and entry not in keep:
            storage.rmtree(storage.join(folder, entry))


def update_stage(index_dir: str, stage: str, source, start: int, change) -> dict:
    """The body every stage's `add` shares: reads the stage's record, checks `source` against
    it, lets change(record) -> record fields (generation, ...) write images start..start+B-1,
    commits the record with num_images start + B, then removes stale generations."""
    record = records.read_record(index_dir, stage)
    sources.check_source(source, record["concept_dim"], record["regions"], stage)
    record = dict(record, **change(record), num_images=start + source.num_images)
    records.write_record(index_dir, stage, record)
    remove_stale_generations(index_dir, records.generations_prefix(stage), record["generation"])
    return record


def add_postings(
    index_dir: str, stage: str, source, start: int, image_postings, extra_fields=None
) -> dict:
    """`update_stage` for an inverted-list stage: image_postings(record) -> (lists [P],
    images [P], weights [P]) of the new images, appended as a delta (append_postings);
    extra_fields(record, weights) -> more record fields to commit with them."""
    prefix = records.generations_prefix(stage)

    def change(record):
        lists, images, weights = image_postings(record)
        fields = append_postings(index_dir, prefix, record, lists, images, weights)
        return dict(fields, **(extra_fields(record, weights) if extra_fields else {}))

    return update_stage(index_dir, stage, source, start, change)


def compact_postings(index_dir: str, stage: str, record: dict, alive, extra=None) -> dict:
    """Folds `record`'s delta into a new base without the images where alive [N] is False
    (renumbered), commits the stage record and returns it. extra: record fields to set."""
    prefix = records.generations_prefix(stage)
    lists = read_lists(index_dir, prefix, record).select(alive)
    fields = write_base(index_dir, prefix, next_generation(index_dir, prefix), lists)
    record = dict(record, **fields, **(extra or {}), num_images=int(np.sum(alive)))
    records.write_record(index_dir, stage, record)
    remove_stale_generations(index_dir, prefix, record["generation"])
    return record
