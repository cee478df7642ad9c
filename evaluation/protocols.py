"""What the evaluation harness measures on: its Settings, the recall protocols (SCAN's COCO 1K
and 5K besides ranking against every INDEX image) and the evenly spaced query subsets.

Shapes: M captions, N0 split images, Q queries.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lateint import retrieval_metrics

PROTOCOLS = ("full", "1k5fold", "5k")
RECALL_KEYS = tuple(f"t2i_r{level}" for level in retrieval_metrics.RECALL_LEVELS)


@dataclasses.dataclass(frozen=True)
class Settings:
    """n, K: the staged pipeline's candidates and reranked images (K >= 10 for R@10).
    max_queries: t2i captions (0: all). The exhaustive joint model runs on at most
    max_exhaustive_queries queries and max_exhaustive_pairs (query, image) pairs per direction.
    protocol: 'all' or one of PROTOCOLS ('full', ranking against every INDEX image, always)."""

    n: int = 256
    K: int = 32
    first_stages: tuple = ("concepts", "sq", "permutation", "exact")
    protocol: str = "all"
    max_queries: int = 1000
    max_exhaustive_queries: int = 200
    max_exhaustive_pairs: int = 100_000
    latency_queries: int = 20
    sample_queries: int = 3
    recall_queries: int = 200  # queries of the first-stage recall (vs exact MaxSim top K)
    batch_size: int = 256  # captions per text-tower call

    def protocols(self) -> tuple:
        if self.protocol not in ("all",) + PROTOCOLS:
            raise ValueError(
                f"protocol: expected 'all' or one of {list(PROTOCOLS)}, got {self.protocol!r}"
            )
        return (
            PROTOCOLS if self.protocol == "all" else tuple(dict.fromkeys(("full", self.protocol)))
        )


def spaced(total: int, count: int) -> np.ndarray:
    """min(count, total) evenly spaced distinct indices of [0, total), ascending; count 0: all."""
    count = min(total, count) if count else total
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


def recall_by_protocol(
    protocol: str, t2i_ranks, i2t_ranks, t2i_known, matrix, caption_image, notes: list
) -> dict | None:
    """One protocol's recall summary. 'full': from the ranks (t2i_known: t2i ranks are known
    within the top t2i_known only); '5k' / '1k5fold': from matrix [M, N0], the pair scores of
    every caption x split image (None: the scorer has none, i2t uses its transpose). A protocol
    that cannot run gives None and a line in `notes`."""
    if protocol == "full":
        return retrieval_metrics.top_k_summary(t2i_ranks, i2t_ranks, t2i_known)
    reason = None
    if matrix is None:
        reason = "no score matrix of every caption x split image (top K or a subset)"
    elif protocol == "5k" and matrix.shape[1] != 5000:
        reason = f"needs a 5000-image split, this one has {matrix.shape[1]}"
    elif protocol == "1k5fold" and matrix.shape[1] % 1000:
        reason = f"needs a split of a multiple of 1000 images, this one has {matrix.shape[1]}"
    if reason:
        notes.append(f"protocol {protocol}: null: {reason}")
        return None
    if protocol == "5k":
        return retrieval_metrics.coco_5k(matrix, caption_image)
    return retrieval_metrics.coco_1k_5fold(matrix, caption_image)
