"""Ranking helpers that training's dev recall and the evaluation harness share: exact MaxSim of
every caption against every image, top-k of a score matrix, and the rerank of a first ranking's
top-K by the joint layers' scores.

Shapes: M captions (T tokens), N images (R regions), C concept dimensions, Q queries, K reranked
candidates per query. NumPy in and out; MaxSim runs jitted (lateint.scoring.maxsim).
"""

from __future__ import annotations

import jax
import numpy as np

from lateint import scoring
from lateint.inference import batch_ranges

_maxsim = jax.jit(scoring.maxsim)


def maxsim_matrix(text_concepts, text_mask, image_concepts, image_mask, block: int = 256):
    """[M, T, C] x [N, R, C] -> [M, N] MaxSim, in fixed-size caption blocks."""
    rows = []
    for start, stop in batch_ranges(text_concepts.shape[0], block):
        rows.append(
            np.asarray(
                _maxsim(
                    text_concepts[start:stop], text_mask[start:stop], image_concepts, image_mask
                )
            )
        )
    return np.concatenate(rows)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, N] scores -> [Q, min(k, N)] column indices, best first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rerank(base: np.ndarray, candidates: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """Puts each row's candidates [Q, K] first, ordered by joint [Q, K]; the rest keep their
    base order below them. base: [Q, N]. Returns a [Q, N] score matrix for the ranks of
    lateint.retrieval_metrics."""
    reranked = np.array(base, np.float64)
    candidate_scores = base.max() + 1.0 + (joint - joint.min())  # above every non-candidate
    np.put_along_axis(reranked, candidates, candidate_scores, axis=1)
    return reranked
