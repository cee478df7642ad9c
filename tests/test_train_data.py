"""Training batches: deterministic per step, distinct images, whole groups when asked."""

import numpy as np

from lateint.data import scenes
from lateint.data.corpus import load_corpus
from lateint.pretrained import default_minilm_directory
from lateint.tokenizer import WordPieceTokenizer
from train.data import TrainBatches


def _batches(scenes_dir, groups):
    corpus = load_corpus(scenes_dir, "train")
    tokenizer = WordPieceTokenizer.from_directory(default_minilm_directory(), buckets=(32,))
    return corpus, TrainBatches(corpus, tokenizer, 32, 8, seed=4, groups=groups)


def test_batches_are_deterministic_and_aligned(scenes_dir):
    corpus, batches = _batches(scenes_dir, None)
    first, again, other = batches.batch(3), batches.batch(3), batches.batch(4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["regions"], other["regions"])
    tokenizer = WordPieceTokenizer.from_directory(default_minilm_directory(), buckets=(32,))
    for row in range(8):  # each caption belongs to the image in the same row
        image = int(np.flatnonzero((corpus.regions == first["regions"][row]).all(axis=(1, 2)))[0])
        own = [c for c, i in zip(corpus.captions, corpus.caption_image) if i == image]
        own_ids = tokenizer.encode(own, length=32)[0]
        assert any((ids == first["token_ids"][row]).all() for ids in own_ids)


def test_group_batches_hold_whole_groups(scenes_dir):
    corpus = load_corpus(scenes_dir, "train")
    groups = scenes.read_groups(scenes_dir, "train", corpus.image_ids)
    assert len(set(groups)) < corpus.num_images  # the generator made groups
    _, batches = _batches(scenes_dir, groups)
    for step in range(5):
        regions = batches.batch(step)["regions"]
        images = [int(np.flatnonzero((corpus.regions == r).all(axis=(1, 2)))[0]) for r in regions]
        assert len(set(images)) == 8
        batch_groups, counts = np.unique(groups[images], return_counts=True)
        full = np.bincount(groups)[batch_groups]
        assert (counts == full).sum() >= len(batch_groups) - 1  # only the last may be cut
