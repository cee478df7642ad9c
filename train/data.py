"""Training batches: deterministic from (seed, step), so a resumed run sees the same data order.

Each batch holds B distinct images and one of each image's captions, tokenized once up front.
With `groups`, a batch is made of whole groups (e.g. scenes with the same objects in other
arrangements), so the in-batch hard negatives the joint layers train on include the images that
only relations tell apart.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from lateint.data import paraphrase, rewrites, semantics
from lateint.data.corpus import RegionCorpus
from lateint.progress import Progress
from lateint.tokenizer import WordPieceTokenizer


class CaptionSemantics:
    """What the scenes layouts add to a batch: which captions are true of which images,
    rewrites of each caption that are false of its own image (up to negatives_per_caption
    relational ones, then up to attributes_per_caption that change a count, size or class word:
    lateint.data.rewrites), and paraphrases of both (lateint.data.paraphrase: same claims,
    wordings the generator never writes).

    truth: SceneTruth of the N training scenes (aligned with the corpus images); claims: the
    parsed claims of each of the M captions; negatives: [M] lists of rewrite strings;
    paraphrases: [M] lists of P strings; negative_paraphrases: [M] lists, one paraphrase per
    rewrite (aligned with negatives). P = 0: no paraphrases.
    """

    def __init__(
        self,
        corpus: RegionCorpus,
        records: list,
        negatives_per_caption: int,
        seed: int,
        paraphrases_per_caption: int = 0,
        attributes_per_caption: int = 0,
    ):
        self.truth = semantics.SceneTruth.from_records(records)
        self.claims = [semantics.parse(caption) for caption in corpus.captions]
        self.negatives, self.paraphrases, self.negative_paraphrases = [], [], []
        progress = Progress(len(corpus.captions), 0, "captions")
        for index, caption in enumerate(corpus.captions):
            scene = self.truth.subset(corpus.caption_image[index : index + 1])
            negatives = rewrites.relational_negatives(
                caption, scene, negatives_per_caption, seed=seed * 1_000_003 + index
            )
            if attributes_per_caption:
                negatives += rewrites.attribute_negatives(
                    caption, scene, attributes_per_caption, seed=[seed, index, 11]
                )
            self.negatives.append(negatives)
            if paraphrases_per_caption:
                rng = np.random.default_rng([seed, index, 7])
                self.paraphrases.append(
                    [
                        paraphrase.paraphrase(self.claims[index], rng)
                        for _ in range(paraphrases_per_caption)
                    ]
                )
                self.negative_paraphrases.append(
                    [paraphrase.paraphrase(semantics.parse(text), rng) for text in negatives]
                )
            if (index + 1) % 5000 == 0:
                progress.log(index + 1, "relational rewrites and paraphrases")

    def positives(self, captions: np.ndarray, images: np.ndarray) -> np.ndarray:
        """[B, B] bool: caption captions[i] is true of image images[j]."""
        scenes = self.truth.subset(images)
        return np.stack([scenes.holds(self.claims[c]) for c in captions])


class TrainBatches:
    """batch(step) -> dict of NumPy arrays:
    token_ids [B, T] int32, token_mask [B, T] bool, regions [B, R, F] float32,
    boxes [B, R, 5] float32, region_mask [B, R] bool.

    paraphrase_prob: the chance that a batch row's caption and its rewrites are replaced by
    paraphrases (CaptionSemantics.paraphrases); a paraphrase longer than text_length tokens is
    never used (the original stands), so no claim is truncated away.
    """

    def __init__(
        self,
        corpus: RegionCorpus,
        tokenizer: WordPieceTokenizer,
        text_length: int,
        batch_size: int,
        seed: int,
        groups: np.ndarray | None = None,
        caption_semantics: CaptionSemantics | None = None,
        text_negatives: int = 0,
        paraphrase_prob: float = 0.0,
    ):
        if batch_size > corpus.num_images:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {corpus.num_images} training "
                "images (a batch holds distinct images)"
            )
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
        self.semantics = caption_semantics
        self.text_negatives = text_negatives if caption_semantics is not None else 0
        if self.text_negatives:
            self._negatives_table = _TextTable(
                caption_semantics.negatives, tokenizer, text_length, "rewrites"
            )
        self.paraphrase_prob = paraphrase_prob if caption_semantics is not None else 0.0
        if self.paraphrase_prob:
            self._paraphrases = _TextTable(
                caption_semantics.paraphrases, tokenizer, text_length, "paraphrases"
            )
            self._negative_paraphrases = _TextTable(
                caption_semantics.negative_paraphrases,
                tokenizer,
                text_length,
                "paraphrased rewrites",
            )
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
            members = self._group_members[group][: self.batch_size - count]
            chosen.append(members)
            count += len(members)
            if count == self.batch_size:
                break
        return np.sort(np.concatenate(chosen))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        images = self._images(rng)
        starts, stops = self._caption_offsets[images], self._caption_offsets[images + 1]
        captions = self._caption_order[
            starts + (rng.random(len(images)) * (stops - starts)).astype(np.int64)
        ]
        mask = self.corpus.region_mask[images]
        token_ids, token_mask = self.token_ids[captions], self.token_mask[captions]
        paraphrased = np.zeros(len(captions), bool)
        if self.paraphrase_prob:
            table = self._paraphrases
            per_caption = table.offsets[captions + 1] - table.offsets[captions]
            use = rng.random(len(captions)) < self.paraphrase_prob
            rows = table.offsets[captions] + (rng.random(len(captions)) * per_caption).astype(
                np.int64
            )
            rows = np.minimum(rows, len(table.usable) - 1)
            paraphrased = use & (per_caption > 0) & table.usable[rows]
            token_ids = np.where(paraphrased[:, None], table.ids[rows], token_ids)
            token_mask = np.where(paraphrased[:, None], table.mask[rows], token_mask)
        mask = self.corpus.region_mask[images]
        batch = {
            "token_ids": token_ids,
            "token_mask": token_mask,
            "regions": np.asarray(self.corpus.regions[images], np.float32),
            "boxes": np.asarray(self.corpus.boxes[images], np.float32),
            "region_mask": mask,
        }
        if self.semantics is not None:
            batch["positives"] = self.semantics.positives(captions, images)
        if self.text_negatives:
            batch.update(self._negatives(captions, rng, paraphrased))
        return batch

    def _negatives(
        self, captions: np.ndarray, rng: np.random.Generator, paraphrased: np.ndarray
    ) -> dict:
        """n = text_negatives rewrites per caption (drawn without replacement; slots beyond a
        caption's rewrites, or holding one longer than T tokens, are invalid): ids/mask
        [B, n, T], valid [B, n]. A paraphrased row
        (paraphrased [B] bool) gets its rewrites paraphrased too, so wording never tells the
        positive from its negatives."""
        count = self.text_negatives
        table = self._negatives_table
        starts = table.offsets[captions]
        available = table.offsets[captions + 1] - starts  # [B]
        keys = rng.random((len(captions), max(int(available.max(initial=0)), count)))
        keys = np.where(np.arange(keys.shape[1])[None] < available[:, None], keys, 2.0)
        slots = np.argsort(keys, axis=1)[:, :count]  # [B, n]
        valid = slots < available[:, None]
        rows = np.where(valid, starts[:, None] + slots, 0)
        valid &= table.usable[rows]  # a rewrite cut short may have lost what made it false
        ids, mask = table.ids[rows], table.mask[rows]
        if paraphrased.any():
            other = self._negative_paraphrases
            swap = paraphrased[:, None] & valid & other.usable[rows]  # [B, n]
            ids = np.where(swap[..., None], other.ids[rows], ids)
            mask = np.where(swap[..., None], other.mask[rows], mask)
        return {
            "negative_token_ids": ids,
            "negative_token_mask": mask & valid[..., None],
            "negative_valid": valid,
        }


class _TextTable:
    """M lists of strings, flattened and tokenized once: ids/mask [S, T], offsets [M + 1]
    (list m is rows offsets[m]:offsets[m + 1]), usable [S] bool (the text fits in T tokens)."""

    def __init__(self, lists: list, tokenizer: WordPieceTokenizer, text_length: int, what: str):
        flat = [text for texts in lists for text in texts]
        self.offsets = np.concatenate([[0], np.cumsum([len(texts) for texts in lists])]).astype(
            np.int64
        )
        self.ids, self.mask = tokenizer.encode(flat or ["[PAD]"], length=text_length)
        self.usable = tokenizer.token_counts(flat) <= text_length if flat else np.zeros(1, bool)
        if flat and not self.usable.all():
            logging.info(
                "%s: %d of %d longer than %d tokens, not used",
                what,
                int((~self.usable).sum()),
                len(flat),
                text_length,
            )
