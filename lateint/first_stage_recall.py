"""First-stage recall: how much of the exact top-k a candidate stage keeps (lateint.retrieval_metrics
re-exports it)."""

import numpy as np

# Queries per block, to bound the [rows, k, n] comparison temporaries.
_BLOCK_ROWS = 256


def first_stage_recall(candidates, reference):
    """Fraction of the exact top-k found among a first stage's candidates, averaged over queries.

    Args:
      candidates: [Q, n] int item ids from the first stage; negative ids are padding (no match).
      reference: [Q, k] int exact top-k ids, non-negative and distinct within a row.
    Returns:
      float in [0, 1]: mean over queries of |reference ∩ candidates| / k.
    """
    candidates = np.asarray(candidates)
    reference = np.asarray(reference)
    if candidates.ndim != 2 or reference.ndim != 2:
        raise ValueError(
            f"first_stage_recall: expected candidates [Q, n] and reference [Q, k], got "
            f"{candidates.shape} and {reference.shape}"
        )
    if candidates.shape[0] != reference.shape[0]:
        raise ValueError(
            f"first_stage_recall: candidates has Q={candidates.shape[0]} rows but reference has "
            f"Q={reference.shape[0]}"
        )
    if reference.shape[0] == 0 or reference.shape[1] == 0:
        raise ValueError(f"reference: expected a non-empty [Q, k] array, got {reference.shape}")
    if reference.min() < 0:
        raise ValueError(
            "reference: expected non-negative ids (padding is allowed in candidates only)"
        )
    ordered = np.sort(reference, axis=1)
    if np.any(ordered[:, 1:] == ordered[:, :-1]):
        row = int(np.flatnonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))[0])
        raise ValueError(f"reference: row {row} repeats an id: {reference[row].tolist()}")
    found = 0
    for start in range(0, reference.shape[0], _BLOCK_ROWS):
        block_reference = reference[start : start + _BLOCK_ROWS]  # [b, k]
        block_candidates = candidates[start : start + _BLOCK_ROWS]  # [b, n]
        matches = block_reference[:, :, None] == block_candidates[:, None, :]  # [b, k, n]
        found += int(np.sum(np.any(matches, axis=2)))
    return found / reference.size
