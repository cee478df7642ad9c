"""Training batches: deterministic per step, distinct images, whole groups when asked."""

import numpy as np

from lateint.data import scenes
from lateint.data.corpus import load_corpus
from lateint.pretrained import default_minilm_directory
from lateint.tokenizer import WordPieceTokenizer
from lateint.train.data import TrainBatches


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


def test_semantic_batches_mark_true_captions_and_carry_false_rewrites(scenes_dir):
    """positives[i, j] is the layouts' truth of caption i about image j (not only i == j), and
    every valid text negative is a rewrite false of its own image; with attribute rewrites,
    inventory captions get text negatives too."""
    from lateint.data import semantics
    from lateint.train.data import CaptionSemantics

    corpus = load_corpus(scenes_dir, "train")
    records = scenes.read_records(scenes_dir, "train", corpus.image_ids)
    tokenizer = WordPieceTokenizer.from_directory(default_minilm_directory(), buckets=(32,))
    caption_semantics = CaptionSemantics(
        corpus, records, negatives_per_caption=3, seed=0, attributes_per_caption=2
    )
    batches = TrainBatches(
        corpus,
        tokenizer,
        32,
        8,
        seed=4,
        groups=scenes.read_groups(scenes_dir, "train", corpus.image_ids),
        caption_semantics=caption_semantics,
        text_negatives=2,
    )
    truth = semantics.SceneTruth.from_records(records)
    decode = {token_id: token for token, token_id in tokenizer._tokenizer.get_vocab().items()}
    valid_seen, inventory_seen = 0, 0
    for step in range(6):
        batch = batches.batch(step)
        images = [
            int(np.flatnonzero((corpus.regions == r).all(axis=(1, 2)))[0]) for r in batch["regions"]
        ]
        for row in range(8):
            caption = [
                c
                for c, ids in zip(*(range(corpus.num_captions), batches.token_ids))
                if (ids == batch["token_ids"][row]).all()
            ][0]
            expected = truth.subset(np.array(images)).holds(
                semantics.parse(corpus.captions[caption])
            )
            np.testing.assert_array_equal(batch["positives"][row], expected)
            for slot in range(2):
                mask = batch["negative_token_mask"][row, slot]
                if not batch["negative_valid"][row, slot]:
                    assert not mask.any()
                    continue
                valid_seen += 1
                words = [decode[t] for t in batch["negative_token_ids"][row, slot][mask]][1:-1]
                text = " ".join(words).replace(" ##", "").replace(" ,", ",").replace(" .", ".")
                assert text in caption_semantics.negatives[caption]
                assert not truth.subset(np.array([images[row]])).holds(semantics.parse(text))[0]
                claims = semantics.parse(corpus.captions[caption])
                inventory_seen += semantics.kind(claims) == "inventory"
    assert valid_seen >= 40 and inventory_seen >= 3


def _row_in(ids, texts, tokenizer):
    """Index of the text of `texts` whose 32-token encoding is `ids`, or -1."""
    if not texts:
        return -1
    matches = np.flatnonzero((tokenizer.encode(texts, length=32)[0] == ids).all(axis=1))
    return int(matches[0]) if len(matches) else -1


def test_paraphrased_batches_keep_claims_and_paraphrase_the_rewrites_too(scenes_dir):
    """paraphrase_prob=1: every row whose drawn paraphrase fits holds a paraphrase of one of its
    image's captions, its positives are that caption's truth, and its valid negatives are the
    paraphrases of that caption's rewrites (false of the image). paraphrase_prob=0 gives the
    very batches of a run without paraphrases."""
    from lateint.data import semantics
    from lateint.train.data import CaptionSemantics

    corpus = load_corpus(scenes_dir, "train")
    records = scenes.read_records(scenes_dir, "train", corpus.image_ids)
    tokenizer = WordPieceTokenizer.from_directory(default_minilm_directory(), buckets=(32,))
    groups = scenes.read_groups(scenes_dir, "train", corpus.image_ids)
    caption_semantics = CaptionSemantics(corpus, records, 3, seed=0, paraphrases_per_caption=3)

    def batches(prob, with_semantics=caption_semantics):
        return TrainBatches(corpus, tokenizer, 32, 8, 4, groups, with_semantics, 2, prob)

    plain = batches(0.0, CaptionSemantics(corpus, records, 3, seed=0))
    for step in range(3):
        first, second = batches(0.0).batch(step), plain.batch(step)
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])

    truth = semantics.SceneTruth.from_records(records)
    paraphrased_rows = negatives_seen = 0
    for step in range(4):
        batch = batches(1.0).batch(step)
        images = [
            int(np.flatnonzero((corpus.regions == r).all(axis=(1, 2)))[0]) for r in batch["regions"]
        ]
        for row in range(8):
            own = np.flatnonzero(corpus.caption_image == images[row])
            found = [
                (c, _row_in(batch["token_ids"][row], caption_semantics.paraphrases[c], tokenizer))
                for c in own
            ]
            found = [(c, k) for c, k in found if k >= 0]
            if not found:  # the drawn paraphrase was too long: the caption itself stands
                assert (
                    _row_in(batch["token_ids"][row], [corpus.captions[c] for c in own], tokenizer)
                    >= 0
                )
                continue
            paraphrased_rows += 1
            caption = found[0][0]
            expected = truth.subset(np.array(images)).holds(caption_semantics.claims[caption])
            np.testing.assert_array_equal(batch["positives"][row], expected)
            for slot in range(2):
                if not batch["negative_valid"][row, slot]:
                    continue
                ids = batch["negative_token_ids"][row, slot]
                k = _row_in(ids, caption_semantics.negative_paraphrases[caption], tokenizer)
                assert k >= 0, "a paraphrased row carries an unparaphrased rewrite"
                rewrite = semantics.parse(caption_semantics.negatives[caption][k])
                assert not truth.subset(np.array([images[row]])).holds(rewrite)[0]
                negatives_seen += 1
    assert paraphrased_rows >= 24 and negatives_seen >= 20
