"""The exact first stage's own float32 copy of the vectors, under
INDEX/first_stage/exact/g<generation>/ (concepts [N, R, C], region_mask [N, R], global [N, C]):
images added after the activation store was written are searchable, and new rows are appended
with lateint.index.store.append_array; the record's num_images is the commit point (rows past
it, from a killed add, are compacted away by the next add). The searchers over it are
lateint.index.first_stage.exact.
"""

from __future__ import annotations

import logging

import numpy as np

from lateint.index import arrays as arrays_lib
from lateint.index import store
from lateint.index.first_stage import postings, records, sources

logger = logging.getLogger(__name__)

NAME = "exact"
PREFIX = records.stage_prefix(NAME)
ARRAYS = ("concepts", "region_mask", "global")


def _read(source, name: str, start: int, stop: int) -> np.ndarray:
    if name == "concepts":
        return source.read_concepts(start, stop).astype(np.float32, copy=False)
    if name == "region_mask":
        return source.read_region_mask(start, stop)
    return source.read_global(start, stop).astype(np.float32, copy=False)


def _write_rows(index_dir: str, generation: int, source, block_rows: int, create: bool) -> None:
    base = postings.generation_prefix(PREFIX, generation)
    for start, stop in sources.blocks(source, block_rows):
        for name in ARRAYS:
            rows = _read(source, name, start, stop)
            if create and start == 0:  # write_array sizes the chunks from the first block
                store.write_array(index_dir, f"{base}/{name}", rows)
            else:
                store.append_array(index_dir, f"{base}/{name}", rows)
        logger.info(f"{NAME}: copied images [{start}, {stop})")


def build(index_dir: str, source, block_rows: int = sources.DEFAULT_BLOCK_ROWS) -> dict:
    """Copies the source's vectors into the exact stage; returns the committed record."""
    sources.check_source(source, None, None, NAME)
    records.mark_building(index_dir, NAME, {})
    generation = postings.next_generation(index_dir, PREFIX)
    _write_rows(index_dir, generation, source, block_rows, True)
    record = {
        "state": "ready",
        "parameters": {},
        "generation": generation,
        "num_images": source.num_images,
        "regions": source.regions,
        "concept_dim": source.concept_dim,
    }
    records.write_record(index_dir, NAME, record)
    postings.remove_stale_generations(index_dir, PREFIX, generation)
    return record


def read_arrays(index_dir: str, record: dict, names=ARRAYS) -> dict:
    base = postings.generation_prefix(PREFIX, record["generation"])
    arrays = {}
    for name in names:
        array = store.read_array(index_dir, f"{base}/{name}")
        if array.shape[0] < record["num_images"]:
            raise ValueError(
                f"{index_dir}/{base}/{name}: expected at least "
                f"{record['num_images']} rows (stage record), got {array.shape[0]}"
            )
        arrays[name] = array[: record["num_images"]]
    return arrays


def row_readers(index_dir: str, record: dict, names=ARRAYS) -> dict:
    """{name: read(start, stop) -> rows [stop - start, ...]} over the stage's arrays, read from
    TensorStore on demand (rows past the record's num_images are never committed: refused)."""
    base = postings.generation_prefix(PREFIX, record["generation"])
    count = record["num_images"]

    def reader(name):
        array = arrays_lib.open_existing(index_dir, f"{base}/{name}", read_only=True)
        if array.shape[0] < count:
            raise ValueError(
                f"{index_dir}/{base}/{name}: expected at least {count} rows (stage record), "
                f"got {array.shape[0]}"
            )

        def read(start: int, stop: int) -> np.ndarray:
            if not 0 <= start <= stop <= count:
                raise IndexError(f"{base}/{name}: rows [{start}, {stop}) outside [0, {count})")
            return np.asarray(array[start:stop].read().result())

        return read

    return {name: reader(name) for name in names}


def add(index_dir: str, source, start: int, block_rows: int = sources.DEFAULT_BLOCK_ROWS) -> dict:
    """Appends images start..start+B-1; compacts first if a killed add left extra rows."""

    def append(record):
        base = postings.generation_prefix(PREFIX, record["generation"])
        stored = store.read_array(index_dir, f"{base}/region_mask").shape[0]
        generation = record["generation"]
        if stored != record["num_images"]:
            logger.info(f"{NAME}: {stored - record['num_images']} uncommitted rows; compacting")
            generation = _rewrite(
                index_dir, record, np.ones(record["num_images"], bool), block_rows
            )
        _write_rows(index_dir, generation, source, block_rows, False)
        return {"generation": generation}

    return postings.update_stage(index_dir, NAME, source, start, append)


def _rewrite(index_dir: str, record: dict, alive, block_rows: int) -> int:
    """Copies the record's rows where alive [N] is True into a new generation; returns it."""
    arrays = read_arrays(index_dir, record)
    kept = sources.ArraySource(
        arrays["concepts"][alive], arrays["region_mask"][alive], arrays["global"][alive]
    )
    generation = postings.next_generation(index_dir, PREFIX)
    _write_rows(index_dir, generation, kept, block_rows, True)
    return generation


def compact(
    index_dir: str, record: dict, alive, block_rows: int = sources.DEFAULT_BLOCK_ROWS
) -> dict:
    """Rewrites `record`'s rows without the images where alive [N] is False (renumbered, in
    order) as a new generation; commits and returns the record."""
    generation = _rewrite(index_dir, record, np.asarray(alive, bool), block_rows)
    record = dict(record, generation=generation, num_images=int(np.sum(alive)))
    records.write_record(index_dir, NAME, record)
    postings.remove_stale_generations(index_dir, PREFIX, generation)
    return record


def as_reader(source, dtype=None):
    """read(start, stop) -> rows [stop - start, ...] (as `dtype` when given) of `source`: an
    array [N, ...], or a reader read(start, stop) (rows read on demand, e.g. row_readers)."""
    if callable(source):
        return lambda start, stop: np.asarray(source(start, stop), dtype)
    return lambda start, stop: np.asarray(source[start:stop], dtype)
