"""Centroid interaction over every centroid an image reaches (PLAID's stage 2, arXiv 2205.09707).

The concept lists give, for each probed (word, centroid), the images posted to it. A word scores
an image only through the centroids it probed, so an image whose best region for that word sits
in an unprobed centroid gets 0 for the word. Centroid interaction rescores a candidate with
all of its centroids: each word takes the max over the image's centroids c of s(word, c) · w,
where s = word·c (already computed for probing: the [Q, T, K] table) and w is the image's
posting weight for c (its best region's cosine to c; w = 1 is PLAID's plain centroid score).
Shapes: N images, K centroids, P postings, Q queries, T words, M candidate (query, image) pairs.

The forward index (image -> its centroids) is the transpose of the inverted lists, built when the
stage loads: nothing extra is stored, and adds, deletes and reclusters keep it consistent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PAIRS_PER_CHUNK = 1 << 15  # candidate pairs rescored at once (bounds the [rows, T] temporaries)


@dataclasses.dataclass(frozen=True)
class ForwardIndex:
    """CSR by image: image i reaches centroids[offsets[i]:offsets[i+1]] with those weights."""

    offsets: np.ndarray  # [N+1] int64
    centroids: np.ndarray  # [P] int32
    weights: np.ndarray  # [P] float32

    @classmethod
    def from_lists(cls, lists, num_images: int) -> ForwardIndex:
        """Transposes postings.InvertedLists (offsets [K+1], images [P], weights [P])."""
        list_of_posting = np.repeat(
            np.arange(lists.num_lists, dtype=np.int32), np.diff(lists.offsets)
        )
        order = np.argsort(lists.images, kind="stable")
        offsets = np.zeros(num_images + 1, np.int64)
        np.cumsum(np.bincount(lists.images, minlength=num_images)[:num_images], out=offsets[1:])
        return cls(offsets, list_of_posting[order], np.asarray(lists.weights[order], np.float32))

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.centroids.nbytes + self.weights.nbytes


def rescore(similarities, mask, query_index, images, forward: ForwardIndex, weighted: bool):
    """Centroid-interaction scores of candidate pairs.

    Args:
      similarities: [Q, T, K] float32 word·centroid.
      mask: [Q, T] bool real words.
      query_index: [M] int query of each pair; images: [M] int image of each pair.
      forward: the stage's ForwardIndex.
      weighted: multiply s(word, c) by the image's posting weight for c (else PLAID's plain
        centroid score).
    Returns:
      [M] float32: sum over real words of the max over the image's centroids.
    """
    query_index = np.asarray(query_index, np.int64)
    images = np.asarray(images, np.int64)
    scores = np.zeros(query_index.shape[0], np.float32)
    for start in range(0, query_index.shape[0], PAIRS_PER_CHUNK):
        chunk = slice(start, start + PAIRS_PER_CHUNK)
        scores[chunk] = _rescore_chunk(
            similarities, mask, query_index[chunk], images[chunk], forward, weighted
        )
    return scores


def _rescore_chunk(similarities, mask, query_index, images, forward, weighted):
    starts = forward.offsets[images]
    counts = forward.offsets[images + 1] - starts  # [m] centroids per image
    reached = counts > 0
    result = np.zeros(images.shape[0], np.float32)
    if not np.any(reached):
        return result
    query_index, starts, counts = query_index[reached], starts[reached], counts[reached]
    pair = np.repeat(np.arange(counts.shape[0]), counts)  # [S]
    first = np.cumsum(counts) - counts
    positions = starts[pair] + np.arange(pair.shape[0]) - first[pair]
    centroid = forward.centroids[positions]
    # [S, T]: each word's similarity to each of the pair's centroids.
    values = similarities[query_index[pair], :, centroid]
    if weighted:
        values = values * forward.weights[positions][:, None]
    best = np.maximum.reduceat(values, first, axis=0)  # [m', T]
    result[reached] = (best * mask[query_index]).sum(axis=1)
    return result
