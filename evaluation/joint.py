"""The joint layers inside the evaluation harness: pair scores at each caption's own length
bucket, the exhaustive cross-encoder in both directions, and the staged i2t rerank.

    joint = JointScorer(inference, text, caption_lengths)
    scores = joint.pairs(captions, stored, image_mask)                 # [P]
    scores = joint.one_text(caption, stored, image_mask)               # [P]
    scores, joint_ms, gather_ms = joint.text_to_images(store, queries)  # [Q, N]

Shapes: M captions (text = the split's encoded captions), N stored images of R regions and H'
stored activation width, P (caption, image) pairs.
"""

from __future__ import annotations

import time

import numpy as np

from lateint.evaluation.latency import milliseconds
from lateint.index.store import ActivationStore
from lateint.inference import Inference
from lateint.model import TowerOutput
from lateint.ranking import rerank, top_indices

JOINT_BATCH = 64  # pairs per joint call: 1.2-1.5x faster per pair than 256 on 2 CPU cores
RERANK_PAIRS = 4096  # (caption, image) pairs per step of the staged i2t rerank


class JointScorer:
    """Joint scores of the split's captions (`text`, [M] length buckets `caption_lengths`)
    against stored images."""

    def __init__(self, inference: Inference, text: TowerOutput, caption_lengths: np.ndarray):
        self.inference = inference
        self.text = text
        self.caption_lengths = caption_lengths

    def pairs(self, captions, stored, image_mask) -> np.ndarray:
        """Joint scores of pairs: captions [P] int with stored images [P, R, H'] and masks [P, R]
        (broadcast views are fine) -> [P]. Each caption keeps the tokens of its length bucket,
        as the searcher pads queries, so short captions cost what they cost online."""
        captions = np.asarray(captions)
        scores = np.empty(captions.size, np.float32)
        lengths = self.caption_lengths[captions]
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            chosen = captions[rows]
            scores[rows] = self.inference.joint_scores(
                self.text.activations[chosen, :length],
                self.text.mask[chosen, :length],
                stored[rows],
                image_mask[rows],
                JOINT_BATCH,
            )
        return scores

    def one_text(self, caption: int, stored, image_mask) -> np.ndarray:
        """Joint scores of caption `caption` with stored images [P, R, H'] and masks [P, R] ->
        [P], at the caption's length bucket; its text-only parts run once per batch (as the
        server scores a query's candidates), so this equals `pairs` of the caption repeated."""
        length = self.caption_lengths[caption]
        return self.inference.joint_scores_of_text(
            self.text.activations[caption : caption + 1, :length],
            self.text.mask[caption : caption + 1, :length],
            stored,
            image_mask,
            JOINT_BATCH,
        )

    def text_to_images(self, store: ActivationStore, queries: np.ndarray):
        """The cross-encoder: captions `queries` [Q] against every stored image, block by block.
        Returns (scores [Q, N] float32, joint milliseconds per query [Q], gather milliseconds)."""
        scores = np.empty((queries.size, store.num_images), np.float32)
        joint_ms, gather_ms = np.zeros(queries.size), 0.0
        for start, stop in store.blocks():
            started = time.perf_counter()
            stored, image_mask = store.gather(np.arange(start, stop))  # [b, R, H'], [b, R]
            gather_ms += milliseconds(started)
            for row, caption in enumerate(queries):
                started = time.perf_counter()
                scores[row, start:stop] = self.one_text(caption, stored, image_mask)
                joint_ms[row] += milliseconds(started)
        return scores, joint_ms, gather_ms

    def images_to_texts(self, store: ActivationStore, images: np.ndarray) -> np.ndarray:
        """The cross-encoder the other way: stored images `images` [S] against every caption.
        Returns [S, M] float32."""
        captions = self.caption_lengths.size
        scores = np.empty((images.size, captions), np.float32)
        for row, image in enumerate(images):
            stored, image_mask = store.gather(np.array([image]))  # [1, R, H'], [1, R]
            scores[row] = self.pairs(
                np.arange(captions),
                np.broadcast_to(stored, (captions,) + stored.shape[1:]),
                np.broadcast_to(image_mask, (captions, image_mask.shape[1])),
            )
        return scores

    def rerank_images_to_texts(
        self, store: ActivationStore, base: np.ndarray, K: int, images: np.ndarray | None = None
    ):
        """base [S, M] (MaxSim of stored images `images` [S] against every caption; default:
        the split's images 0..N0-1): each image's top-K captions reranked by the joint layers,
        the others below them in base order (lateint.ranking.rerank). Returns [S, M] scores."""
        images = np.arange(base.shape[0]) if images is None else np.asarray(images)
        if images.shape != base.shape[:1]:
            raise ValueError(f"images: {images.shape[0]} ids for {base.shape[0]} rows of base")
        top = min(K, base.shape[1])
        candidates = top_indices(base, top)  # [S, K]
        joint = np.empty(candidates.shape, np.float32)
        block = max(1, RERANK_PAIRS // top)  # images per step
        for start in range(0, base.shape[0], block):
            rows = candidates[start : start + block]  # [b, K]
            stored, image_mask = store.gather(images[start : start + rows.shape[0]])
            owner = np.repeat(np.arange(rows.shape[0]), top)  # [b K] row of each pair
            joint[start : start + rows.shape[0]] = self.pairs(
                rows.reshape(-1), stored[owner], image_mask[owner]
            ).reshape(rows.shape)
        return rerank(base, candidates, joint)
