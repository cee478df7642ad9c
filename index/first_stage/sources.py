"""Where the first stages read image vectors from, in blocks of images.

A source is anything with `num_images`, `regions`, `concept_dim` and the row readers
`read_concepts(start, stop) -> [B, R, C]`, `read_region_mask(start, stop) -> [B, R] bool`,
`read_global(start, stop) -> [B, C]`: lateint.index.store.ActivationStore (a finished INDEX) has them,
and `ArraySource` wraps in-memory arrays (new images to add, tests, benchmarks).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BLOCK_ROWS = 1024


class ArraySource:
    """In-memory image vectors with the reader interface of ActivationStore.

    concepts: [N, R, C] float L2-normalised per real region (zeros where the mask is False).
    region_mask: [N, R] bool.
    global_vectors: [N, C] float L2-normalised.
    """

    def __init__(self, concepts, region_mask, global_vectors):
        self.concepts = np.asarray(concepts)
        self.region_mask = np.asarray(region_mask)
        self.global_vectors = np.asarray(global_vectors)
        if self.concepts.ndim != 3:
            raise ValueError(f"ArraySource: concepts expected [N, R, C], got {self.concepts.shape}")
        if self.region_mask.shape != self.concepts.shape[:2] or self.region_mask.dtype != bool:
            raise ValueError(
                f"ArraySource: region_mask expected bool {self.concepts.shape[:2]}, "
                f"got {self.region_mask.dtype} {self.region_mask.shape}"
            )
        expected = (self.concepts.shape[0], self.concepts.shape[2])
        if self.global_vectors.shape != expected:
            raise ValueError(
                f"ArraySource: global_vectors expected {expected}, got {self.global_vectors.shape}"
            )

    num_images = property(lambda self: self.concepts.shape[0])
    regions = property(lambda self: self.concepts.shape[1])
    concept_dim = property(lambda self: self.concepts.shape[2])

    def read_concepts(self, start: int, stop: int) -> np.ndarray:
        return self.concepts[start:stop].astype(np.float32, copy=False)

    def read_region_mask(self, start: int, stop: int) -> np.ndarray:
        return self.region_mask[start:stop]

    def read_global(self, start: int, stop: int) -> np.ndarray:
        return self.global_vectors[start:stop].astype(np.float32, copy=False)


def blocks(source, block_rows: int = DEFAULT_BLOCK_ROWS):
    """Yields (start, stop) covering [0, source.num_images) in blocks of block_rows."""
    for start in range(0, source.num_images, block_rows):
        yield start, min(source.num_images, start + block_rows)


def check_source(source, concept_dim: int | None, regions: int | None, stage: str) -> None:
    """Raises ValueError when the source's dims disagree with a built stage's."""
    for field, expected in (("concept_dim", concept_dim), ("regions", regions)):
        got = getattr(source, field)
        if expected is not None and got != expected:
            raise ValueError(
                f"first stage {stage!r}: source {field} expected {expected} "
                f"(the built stage), got {got}"
            )
    if source.num_images < 1:
        raise ValueError(f"first stage {stage!r}: the source holds no images")


class RowWindow:
    """Rows [start, stop) of another source (e.g. the images lateint.index.add appended to the
    activation store), renumbered from 0, with the same reader interface."""

    def __init__(self, source, start: int, stop: int):
        if not 0 <= start <= stop <= source.num_images:
            raise ValueError(
                f"RowWindow: rows [{start}, {stop}) outside [0, {source.num_images}) of the source"
            )
        self.source, self.start, self.stop = source, int(start), int(stop)

    num_images = property(lambda self: self.stop - self.start)
    regions = property(lambda self: self.source.regions)
    concept_dim = property(lambda self: self.source.concept_dim)

    def read_concepts(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_concepts(self.start + start, self.start + stop)

    def read_region_mask(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_region_mask(self.start + start, self.start + stop)

    def read_global(self, start: int, stop: int) -> np.ndarray:
        return self.source.read_global(self.start + start, self.start + stop)
