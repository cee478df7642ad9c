"""Training batches: deterministic from (seed, step), so a resumed run sees the same data order.

Each batch holds B distinct images and one of each image's captions, tokenized once up front.
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
                 batch_size: int, seed: int):
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

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        images = np.sort(rng.choice(self.corpus.num_images, self.batch_size, replace=False))
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
