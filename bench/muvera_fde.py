"""MUVERA fixed-dimensional encodings (arXiv 2405.19504) in NumPy, batched over images.

    encoder = FdeEncoder(dim=C, repetitions=10, simhash_bits=3, projection=16)
    images = encoder.documents(concepts, region_mask)   # [N, D] float32
    queries = encoder.queries(words, word_mask)         # [Q, D]
    scores = queries @ images.T                         # approximates MaxSim (Chamfer)

Per repetition r (seed + r): SimHash with `simhash_bits` Gaussian hyperplanes splits the space
into 2^bits partitions (Gray-code numbered); each vector is projected (identity, or an AMS
sketch to `projection` dims); an image's block per partition is the mean of its vectors there
(an empty partition takes the vector whose sign pattern is nearest in Hamming distance), a
query's block the sum. D = repetitions * 2^bits * projection. The seeded matrices and the
conventions are those of the `muvera-python` package (Google graph-mining's
fixed_dimensional_encoding.cc), so both give the same encodings: bench/first_stage.py checks
that on its own inputs when the package is installed. No final Count Sketch projection.
Shapes: N images, R regions, Q queries, T words, C dim, P = 2^bits partitions.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 2048  # images encoded at once


class FdeEncoder:
    def __init__(
        self,
        dim: int,
        repetitions: int = 10,
        simhash_bits: int = 3,
        projection: int | None = None,
        seed: int = 42,
    ):
        if repetitions < 1 or not 0 <= simhash_bits < 31:
            raise ValueError(
                f"FdeEncoder: repetitions expected >= 1 and simhash_bits in [0, 31), got "
                f"{repetitions}, {simhash_bits}"
            )
        self.dim, self.repetitions, self.bits, self.seed = dim, repetitions, simhash_bits, seed
        self.projection = projection
        self.partitions = 2**simhash_bits
        width = projection or dim
        self.output_dim = repetitions * self.partitions * width
        self._hyperplanes, self._projections = [], []
        for repetition in range(repetitions):
            generator = np.random.default_rng(seed + repetition)
            self._hyperplanes.append(
                generator.normal(0.0, 1.0, (dim, simhash_bits)).astype(np.float32)
            )
            self._projections.append(None if projection is None else self._ams(seed + repetition))
        # Sign pattern (most significant bit = hyperplane 0) of each partition: [P, bits].
        binary = np.array([_gray_to_binary(p) for p in range(self.partitions)], np.int64)
        self._partition_bits = (binary[:, None] >> np.arange(simhash_bits - 1, -1, -1)) & 1

    def _ams(self, seed: int) -> np.ndarray:
        generator = np.random.default_rng(seed)
        matrix = np.zeros((self.dim, self.projection), np.float32)
        columns = generator.integers(0, self.projection, size=self.dim)
        signs = generator.choice(np.array([-1.0, 1.0], np.float32), size=self.dim)
        matrix[np.arange(self.dim), columns] = signs
        return matrix

    def _partition(self, sketches) -> np.ndarray:
        """sketches [..., bits] -> Gray-code partition index [...] int64."""
        index = np.zeros(sketches.shape[:-1], np.int64)
        for bit in range(self.bits):
            index = (index << 1) + ((sketches[..., bit] > 0).astype(np.int64) ^ (index & 1))
        return index

    def _encode(self, vectors, mask, is_query: bool) -> np.ndarray:
        """vectors [B, S, C] float32, mask [B, S] bool -> [B, D] float32."""
        vectors = np.asarray(vectors, np.float32)
        mask = np.asarray(mask, bool)
        rows = mask.shape[0]
        blocks = []
        for hyperplanes, projection in zip(self._hyperplanes, self._projections):
            sketches = vectors @ hyperplanes  # [B, S, bits]
            projected = vectors if projection is None else vectors @ projection  # [B, S, w]
            partition = self._partition(sketches)  # [B, S]
            member = (partition[:, :, None] == np.arange(self.partitions)) & mask[:, :, None]
            sums = np.einsum("bsp,bsw->bpw", member.astype(np.float32), projected)  # [B, P, w]
            if not is_query:
                counts = member.sum(axis=1)  # [B, P]
                sums = sums / np.maximum(counts, 1)[:, :, None]
                if self.bits:
                    # Empty partitions: the real vector nearest in sign pattern (first on ties).
                    signs = (sketches > 0).astype(np.int64)  # [B, S, bits]
                    distance = (signs[:, :, None, :] != self._partition_bits).sum(-1)  # [B,S,P]
                    distance = np.where(mask[:, :, None], distance, self.bits + 1)
                    nearest = distance.argmin(axis=1)  # [B, P]
                    filled = np.take_along_axis(projected, nearest[:, :, None], axis=1)
                    empty = (counts == 0) & mask.any(axis=1, keepdims=True)
                    sums = np.where(empty[:, :, None], filled, sums)
            blocks.append(sums.reshape(rows, -1))
        return np.concatenate(blocks, axis=1)

    def documents(self, concepts, region_mask) -> np.ndarray:
        """concepts [N, R, C], region_mask [N, R] -> [N, D] float32, in blocks of images."""
        if not concepts.shape[0]:
            return np.zeros((0, self.output_dim), np.float32)
        return np.concatenate(
            [
                self._encode(
                    concepts[start : start + BLOCK_ROWS],
                    region_mask[start : start + BLOCK_ROWS],
                    False,
                )
                for start in range(0, concepts.shape[0], BLOCK_ROWS)
            ]
        )

    def queries(self, words, word_mask) -> np.ndarray:
        """words [Q, T, C], word_mask [Q, T] -> [Q, D] float32."""
        return self._encode(words, word_mask, True)


def _gray_to_binary(number: int) -> int:
    shift = number >> 1
    while shift:
        number ^= shift
        shift >>= 1
    return number


def cross_check(encoder: FdeEncoder, concepts, region_mask, words, word_mask) -> dict | None:
    """Largest absolute difference from `muvera-python` on the same inputs (None: not installed)."""
    try:
        from muvera import Muvera
    except ImportError:
        return None
    reference = Muvera(
        num_repetitions=encoder.repetitions,
        num_simhash_projections=encoder.bits,
        dimension=encoder.dim,
        projection_type="identity" if encoder.projection is None else "ams_sketch",
        projection_dimension=encoder.projection,
        fill_empty_partitions=True,
        seed=encoder.seed,
    )
    images = reference.encode_documents([c[m] for c, m in zip(concepts, region_mask)])
    texts = reference.encode_queries([w[m] for w, m in zip(words, word_mask)])
    return {
        "documents": float(np.abs(images - encoder.documents(concepts, region_mask)).max()),
        "queries": float(np.abs(texts - encoder.queries(words, word_mask)).max()),
        "rows": int(len(concepts)),
    }
