"""Metrics the scenes benchmark can tell and strict recall cannot: oracle recall and partner
accuracy, split by caption kind.

- oracle R@K: a hit when any of a caption's top K images is a scene the caption is *true of*
  (lateint.data.semantics), not only the scene it was written for;
- partner accuracy: over the pairs (caption of scene s, group partner s' of s — same sprites,
  another arrangement — with the caption false of s'), the share with
  score(caption, s) > score(caption, s') (ties count one half). 50 is chance; a bag of
  concepts stays near it, since s and s' hold the same objects.

Shapes: M captions, N images, K ranked images per caption, P partner pairs. Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from lateint.data import semantics

LEVELS = (1, 5, 10)


def caption_kinds(captions: list) -> np.ndarray:
    """[M] str: "inventory" | "relation" | "count" (semantics.kind) per caption."""
    return np.array([semantics.kind(semantics.parse(caption)) for caption in captions])


def oracle_recall(
    top: np.ndarray, truth: np.ndarray, kinds: np.ndarray | None = None, levels=LEVELS
) -> dict:
    """top [M, K] ranked image indices, truth [M, N] bool. Returns {"oracle_r1": %, ...} and,
    with kinds [M], {"oracle_r1/relation": %, ...} per kind present (plus its caption count)."""
    hits = np.take_along_axis(truth, top, axis=1)  # [M, K]
    found = {}
    groups = {"": np.ones(len(top), bool)}
    if kinds is not None:
        groups.update(
            {f"/{kind}": kinds == kind for kind in semantics.KINDS if np.any(kinds == kind)}
        )
    for suffix, rows in groups.items():
        for level in levels:
            if level <= top.shape[1]:
                found[f"oracle_r{level}{suffix}"] = float(
                    100.0 * np.mean(np.any(hits[rows, :level], axis=1))
                )
        if suffix:
            found[f"captions{suffix}"] = int(rows.sum())
    return found


def partner_pairs(
    groups: np.ndarray, caption_image: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs partner accuracy is measured on.

    groups [N] group label of each image, caption_image [M], truth [M, N] bool. Returns
    (caption [P], own image [P], partner image [P]): every caption with every other scene of its
    group that the caption is false of.
    """
    captions, own, partner = [], [], []
    members = {}
    for image, group in enumerate(groups):
        members.setdefault(group, []).append(image)
    for caption, image in enumerate(caption_image):
        for other in members[groups[image]]:
            if other != image and not truth[caption, other]:
                captions.append(caption)
                own.append(image)
                partner.append(other)
    as_array = lambda values: np.asarray(values, np.int64)  # noqa: E731
    return as_array(captions), as_array(own), as_array(partner)


def partner_accuracy(
    own_scores: np.ndarray, partner_scores: np.ndarray, kinds: np.ndarray | None = None
) -> dict:
    """own_scores, partner_scores [P]; kinds [P] (optional). Returns {"partner_accuracy": %,
    "partner_pairs": P} and per kind "partner_accuracy/relation" etc."""
    wins = (own_scores > partner_scores) + 0.5 * (own_scores == partner_scores)
    found = {
        "partner_accuracy": float(100.0 * wins.mean()) if wins.size else float("nan"),
        "partner_pairs": int(wins.size),
    }
    if kinds is not None:
        for kind in semantics.KINDS:
            rows = kinds == kind
            if rows.any():
                found[f"partner_accuracy/{kind}"] = float(100.0 * wins[rows].mean())
    return found
