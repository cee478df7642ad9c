"""Oracle recall and partner accuracy inside the evaluation harness (scenes corpora only).

    relational = RelationalTruth.load(data, split, corpus)   # None without scenes layouts
    record["oracle"] = relational.oracle(queries, top)       # top [Q, >=10] image indices
    record["partner"] = relational.partner(pair_scores)      # pair_scores(captions, images)

Oracle recall counts a hit when a retrieved image is a scene the caption is true of; it is
defined over the split's own N0 scenes (distractor rows, N > N0, are never hits: their layouts
are not read). Partner accuracy compares each caption's scene with its group partners that the
caption is false of (lateint.relational_metrics).
"""

from __future__ import annotations

import os

import numpy as np

from lateint import relational_metrics
from lateint.data import scenes, semantics


class RelationalTruth:
    """truth [M, N0] bool, kinds [M], partner pairs (captions, own, partner) [P] each."""

    def __init__(
        self, truth: np.ndarray, kinds: np.ndarray, groups: np.ndarray, caption_image: np.ndarray
    ):
        self.truth, self.kinds = truth, kinds
        self.pairs = relational_metrics.partner_pairs(groups, caption_image, truth)

    @classmethod
    def load(cls, data: str, split: str, corpus) -> RelationalTruth | None:
        """From DATA/{split}_scenes.jsonl; None when the corpus has no scenes layouts."""
        if not os.path.exists(os.path.join(data, f"{split}_scenes.jsonl")):
            return None
        records = scenes.read_records(data, split, corpus.image_ids)
        truth = semantics.SceneTruth.from_records(records).truth_matrix(corpus.captions)
        labels = {}
        groups = np.array([labels.setdefault(record["group"], len(labels)) for record in records])
        return cls(
            truth, relational_metrics.caption_kinds(corpus.captions), groups, corpus.caption_image
        )

    def oracle(self, queries: np.ndarray, top: np.ndarray) -> dict:
        """queries [Q] caption indices, top [Q, K] ranked image indices (any N; rows >= N0
        are distractors, never hits). Returns oracle R@1/5/10 overall and per caption kind."""
        count = self.truth.shape[1]
        padded = np.concatenate([self.truth[queries], np.zeros((queries.size, 1), bool)], 1)
        return relational_metrics.oracle_recall(
            np.where(top < count, top, count), padded, self.kinds[queries]
        )

    def partner(self, pair_scores) -> dict:
        """pair_scores(captions [P], images [P]) -> [P] scores. Returns partner accuracy
        overall and per caption kind."""
        captions, own, partner = self.pairs
        return relational_metrics.partner_accuracy(
            pair_scores(captions, own), pair_scores(captions, partner), self.kinds[captions]
        )


def annotate(
    records: list,
    relational: RelationalTruth | None,
    queries: np.ndarray,
    exhaustive_subset: np.ndarray,
    pair_scorers,
) -> None:
    """Pops each record's "top_images" [Q, 10] and, on scenes corpora, adds "oracle" (over the
    record's queries: the exhaustive model's subset for joint_exhaustive) and "partner".
    pair_scorers() -> {"global" | "maxsim" | "joint": scores(captions [P], images [P]) -> [P]};
    the joint score's partner accuracy is computed once and shared by joint_exhaustive and
    every staged row (one scorer)."""
    found, scorers = {}, None
    for record in records:
        top = record.pop("top_images")
        if relational is None:
            continue
        scorer = record["scorer"]
        rows = queries[exhaustive_subset] if scorer == "joint_exhaustive" else queries
        record["oracle"] = dict(relational.oracle(rows, top), queries=int(rows.size))
        kind = "joint" if scorer in ("staged", "joint_exhaustive") else scorer
        if kind not in found:
            scorers = scorers or pair_scorers()
            found[kind] = relational.partner(scorers[kind])
        record["partner"] = found[kind]
