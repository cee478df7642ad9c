"""Training batches: deterministic from (seed, step), so a resumed run sees the same data order.

Each batch holds B distinct images and one of each image's captions, tokenized once up front.
With `groups`, a batch is made of whole groups (e.g. scenes with the same objects in other
arrangements), so the in-batch hard negatives the joint layers train on include the images that
only relations tell apart.
"""

from __future__ import annotations

import numpy as np

from lateint.data.corpus import RegionCorpus
from lateint.tokenizer import WordPieceTokenizer


class TrainBatches:
    """batch(step) -> dict of NumPy arrays:
    token_ids [B, T] int32, token_mask [B, T] bool, regions [B, R, F] float32,
    boxes [B, R, 5] float32, region_mask [B, R] bool.
    """

    def __init__(self, corpus: RegionCorpus, tokenizer: WordPieceTokenizer, text_length: int,
                 batch_size: int, seed: int, groups: np.ndarray | None = None):
        if batch_size > corpus.num_images:
            raise ValueError(f"batch_size {batch_size} exceeds the {corpus.num_images} training "
                             "images (a batch holds distinct images)")
        self.corpus = corpus
        self.batch_size = batch_size
        self.seed = seed
        self.token_ids, self.token_mask = tokenizer.encode(corpus.captions, length=text_length)
        order = np.argsort(corpus.caption_image, kind="stable")
        counts = np.bincount(corpus.caption_image, minlength=corpus.num_images)
        if (counts == 0).any():
            missing = int(np.flatnonzero(counts == 0)[0])
            raise ValueError(f"image {corpus.image_ids[missing]!r} has no caption")
        self._caption_order = order
        self._caption_offsets = np.concatenate([[0], np.cumsum(counts)])
        self._group_members = None
        if groups is not None:
            if len(groups) != corpus.num_images:
                raise ValueError(f"groups: expected {corpus.num_images} labels, got {len(groups)}")
            order = np.argsort(groups, kind="stable")
            boundaries = np.flatnonzero(np.diff(groups[order])) + 1
            self._group_members = np.split(order, boundaries)

    def _images(self, rng: np.random.Generator) -> np.ndarray:
        if self._group_members is None:
            return np.sort(rng.choice(self.corpus.num_images, self.batch_size, replace=False))
        chosen, count = [], 0
        for group in rng.permutation(len(self._group_members)):
            members = self._group_members[group][:self.batch_size - count]
            chosen.append(members)
            count += len(members)
            if count == self.batch_size:
                break
        return np.sort(np.concatenate(chosen))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        images = self._images(rng)
        starts, stops = self._caption_offsets[images], self._caption_offsets[images + 1]
        captions = self._caption_order[starts + (rng.random(len(images)) * (stops - starts)
                                                 ).astype(np.int64)]
        mask = self.corpus.region_mask[images]
        return {
            "token_ids": self.token_ids[captions],
            "token_mask": self.token_mask[captions],
            "regions": np.asarray(self.corpus.regions[images], np.float32),
            "boxes": np.asarray(self.corpus.boxes[images], np.float32),
            "region_mask": mask,
        }
