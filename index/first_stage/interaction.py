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
    """Image -> its centroids, padded: image i reaches centroids[i, :counts[i]] with those
    weights. D = the most centroids any image reaches (at most R); padding holds centroid K,
    whose similarity column rescoring sets to -inf, and weight 1."""

    centroids: np.ndarray  # [N, D] int32
    weights: np.ndarray  # [N, D] float32
    counts: np.ndarray  # [N] int32

    @classmethod
    def from_lists(cls, lists, num_images: int) -> ForwardIndex:
        """Transposes postings.InvertedLists (offsets [K+1], images [P], weights [P])."""
        list_of_posting = np.repeat(
            np.arange(lists.num_lists, dtype=np.int32), np.diff(lists.offsets)
        )
        order = np.argsort(lists.images, kind="stable")
        images = lists.images[order].astype(np.int64)
        counts = np.bincount(images, minlength=num_images)[:num_images].astype(np.int32)
        width = max(1, int(counts.max()) if counts.size else 1)
        starts = np.cumsum(counts) - counts
        slot = np.arange(images.shape[0]) - starts[images]
        centroids = np.full((num_images, width), lists.num_lists, np.int32)
        weights = np.ones((num_images, width), np.float32)
        centroids[images, slot] = list_of_posting[order]
        weights[images, slot] = lists.weights[order]
        return cls(centroids, weights, counts)

    @property
    def nbytes(self) -> int:
        return self.centroids.nbytes + self.weights.nbytes + self.counts.nbytes


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
      [M] float32: sum over real words of the max over the image's centroids (0 for an image
      without any).
    """
    query_index = np.asarray(query_index, np.int64)
    images = np.asarray(images, np.int64)
    # [Q, K+1, T]: centroid-major so one pair's gather reads contiguous rows; column K pads.
    table = np.concatenate(
        [
            np.swapaxes(similarities, 1, 2),
            np.full((similarities.shape[0], 1, similarities.shape[1]), -np.inf, np.float32),
        ],
        axis=1,
    )
    scores = np.zeros(query_index.shape[0], np.float32)
    for start in range(0, query_index.shape[0], PAIRS_PER_CHUNK):
        chunk = slice(start, start + PAIRS_PER_CHUNK)
        rows, pairs = images[chunk], query_index[chunk]
        values = table[pairs[:, None], forward.centroids[rows]]  # [m, D, T]
        if weighted:
            values = values * forward.weights[rows][:, :, None]
        best = values.max(axis=1)  # [m, T]; -inf only for an image without centroids
        best = np.where(np.isfinite(best), best, 0.0)
        scores[chunk] = (best * mask[pairs]).sum(axis=1)
    return scores
