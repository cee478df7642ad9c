"""lateint.retrieval_metrics on hand-computed cases and against a VSE++-style argsort reference."""

import numpy as np
import pytest

from lateint import retrieval_metrics


def argsort_rank(row, positives):
    """VSE++ reference: 0-based position of the first positive in the descending order."""
    order = np.argsort(row)[::-1]
    return int(min(np.flatnonzero(np.isin(order, positives))))


def test_text_to_image_ties_are_pessimistic():
    scores = np.array(
        [
            [1.0, 1.0, 0.5],  # true image 0 ties with image 1 → rank 1
            [0.2, 0.9, 0.9],  # true image 2 ties with image 1 → rank 1
            [0.1, 0.3, 0.7],  # true image 2 strictly best → rank 0
            [0.5, 0.6, 0.7],  # true image 0 worst → rank 2
        ]
    )
    ranks = retrieval_metrics.ranks_text_to_image(scores, np.array([0, 2, 2, 0]))
    np.testing.assert_array_equal(ranks, [1, 1, 0, 2])
    assert ranks.dtype == np.int64
    # A constant scorer gets the worst rank, never a perfect one.
    constant = retrieval_metrics.ranks_text_to_image(np.zeros((4, 3)), np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(constant, [2, 2, 2, 2])


def test_image_to_text_best_caption_and_ties():
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array(
        [
            # best positive 0.8 (caption 1); negatives >= 0.8: caption 2 (0.9), caption 5 (tie)
            [0.1, 0.8, 0.9, 0.2, 0.3, 0.8],
            # best positive 0.5 (caption 2); caption 0 ties → rank 1
            [0.5, 0.4, 0.5, 0.1, 0.2, 0.3],
            # both positives tie with each other at the top: ties among positives cost nothing
            [0.0, 0.0, 0.0, 0.0, 0.6, 0.6],
        ]
    )
    np.testing.assert_array_equal(
        retrieval_metrics.ranks_image_to_text(scores, caption_image), [2, 1, 0]
    )
    constant = retrieval_metrics.ranks_image_to_text(np.ones((3, 6)), caption_image)
    np.testing.assert_array_equal(constant, [4, 4, 4])


def test_ranks_match_argsort_reference_with_five_captions():
    rng = np.random.default_rng(1)
    num_images = 40
    caption_image = np.repeat(np.arange(num_images), 5)
    rng.shuffle(caption_image)
    scores = rng.normal(size=(caption_image.size, num_images))  # continuous: no ties
    ranks = retrieval_metrics.ranks_text_to_image(scores, caption_image)
    expected = [argsort_rank(scores[m], [caption_image[m]]) for m in range(caption_image.size)]
    np.testing.assert_array_equal(ranks, expected)
    ranks = retrieval_metrics.ranks_image_to_text(scores.T, caption_image)
    expected = [
        argsort_rank(scores.T[n], np.flatnonzero(caption_image == n)) for n in range(num_images)
    ]
    np.testing.assert_array_equal(ranks, expected)


def test_rank_errors():
    with pytest.raises(ValueError, match="images \\[1\\]"):
        retrieval_metrics.ranks_image_to_text(np.zeros((2, 2)), np.array([0, 0]))
    with pytest.raises(ValueError, match="caption_image"):
        retrieval_metrics.ranks_text_to_image(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics.ranks_text_to_image(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="expected shape"):
        retrieval_metrics.ranks_image_to_text(np.zeros((2, 3)), np.array([0, 1]))


def test_recall_summary_hand_computed():
    summary = retrieval_metrics.recall_summary(
        np.array([0, 1, 4, 9, 10, 20]), np.array([0, 0, 2, 5])
    )
    assert tuple(summary) == retrieval_metrics.SUMMARY_KEYS
    expected = {
        "t2i_r1": 100 / 6,
        "t2i_r5": 50.0,
        "t2i_r10": 400 / 6,
        "t2i_medr": 7.0,  # median rank 6.5 (0-based) → floor + 1
        "t2i_meanr": 44 / 6 + 1,
        "i2t_r1": 50.0,
        "i2t_r5": 75.0,
        "i2t_r10": 100.0,
        "i2t_medr": 2.0,  # median of [0, 0, 2, 5] is 1 → 2
        "i2t_meanr": 7 / 4 + 1,
        "rsum": 100 / 6 + 50 + 400 / 6 + 50 + 75 + 100,
    }
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value), key


def fold_test_data(num_images=10, fold_size=2, captions_per_image=2):
    """Scores that are perfect inside every fold but lose to every image of other folds."""
    caption_image = np.repeat(np.arange(num_images), captions_per_image)
    np.random.default_rng(2).shuffle(caption_image)  # folds must be chosen by caption_image
    fold_of_image = np.arange(num_images) // fold_size
    fold_of_caption = fold_of_image[caption_image]
    scores = np.where(fold_of_caption[:, None] != fold_of_image[None, :], 2.0, 0.0)
    scores[np.arange(caption_image.size), caption_image] = 1.0
    return scores, caption_image


def test_1k_folds_only_rank_inside_the_fold():
    scores, caption_image = fold_test_data()
    summary = retrieval_metrics.coco_1k_5fold(scores, caption_image, fold_size=2)
    assert summary["t2i_r1"] == 100.0 and summary["i2t_r1"] == 100.0
    assert summary["rsum"] == 600.0 and summary["t2i_medr"] == 1.0
    # Over the whole corpus the cross-fold images win: 8 of them beat every true image.
    whole = retrieval_metrics.evaluate(scores, caption_image)
    assert whole["t2i_r1"] == 0.0 and whole["t2i_meanr"] == 9.0


def test_1k_folds_average_per_fold_summaries():
    scores, caption_image = fold_test_data()
    # Break fold 3 (images 6 and 7) only: in-fold, image 7 now beats image 6 for image 6's
    # captions, and image 6's captions beat image 7's for image 7 (i2t).
    captions_of_6 = np.flatnonzero(caption_image == 6)
    scores[captions_of_6, 7] = 1.5
    summary = retrieval_metrics.coco_1k_5fold(scores, caption_image, fold_size=2)
    # Fold 3 t2i: 2 of 4 captions at rank 1 → R@1 50; the other folds 100 → mean 90.
    assert summary["t2i_r1"] == pytest.approx(90.0)
    assert summary["t2i_r5"] == 100.0
    # Fold 3 i2t: image 7's own captions score 1.0, image 6's two captions 1.5 → rank 2;
    # image 6 keeps rank 0 → R@1 50, meanr 2.
    assert summary["i2t_r1"] == pytest.approx(90.0)
    assert summary["i2t_meanr"] == pytest.approx((4 * 1.0 + 2.0) / 5)
    assert summary["t2i_meanr"] == pytest.approx((4 * 1.0 + 1.5) / 5)


def test_1k_folds_with_a_score_function_see_the_right_slices():
    scores, caption_image = fold_test_data()
    calls = []

    def score_fn(caption_indices, image_indices):
        calls.append((caption_indices.copy(), image_indices.copy()))
        return scores[np.ix_(caption_indices, image_indices)]

    from_function = retrieval_metrics.coco_1k_5fold(
        score_fn, caption_image, num_images=10, fold_size=2
    )
    assert from_function == retrieval_metrics.coco_1k_5fold(scores, caption_image, fold_size=2)
    assert len(calls) == 5
    for fold, (caption_indices, image_indices) in enumerate(calls):
        np.testing.assert_array_equal(image_indices, [2 * fold, 2 * fold + 1])
        expected = np.flatnonzero(caption_image // 2 == fold)
        np.testing.assert_array_equal(caption_indices, expected)


def test_1k_default_protocol_is_five_folds_of_1000():
    caption_image = np.repeat(np.arange(5000), 5)
    rng = np.random.default_rng(3)
    image_batches = []

    def score_fn(caption_indices, image_indices):
        image_batches.append(image_indices)
        return rng.normal(size=(caption_indices.size, image_indices.size)).astype(np.float32)

    summary = retrieval_metrics.coco_1k_5fold(score_fn, caption_image, num_images=5000)
    assert [(batch[0], batch.size) for batch in image_batches] == [
        (0, 1000),
        (1000, 1000),
        (2000, 1000),
        (3000, 1000),
        (4000, 1000),
    ]
    assert summary["t2i_r1"] < 1.0  # random scores: chance level is 0.1 %


def test_protocol_errors():
    scores, caption_image = fold_test_data()
    with pytest.raises(ValueError, match="N=10 .*fold_size=1000"):
        retrieval_metrics.coco_1k_5fold(scores, caption_image)
    with pytest.raises(ValueError, match="num_images"):
        retrieval_metrics.coco_1k_5fold(lambda captions, images: None, caption_image)
    with pytest.raises(ValueError, match="coco_5k.*5000"):
        retrieval_metrics.coco_5k(scores, caption_image)
    with pytest.raises(ValueError, match="returned"):
        retrieval_metrics.coco_1k_5fold(
            lambda captions, images: np.zeros((1, 1)), caption_image, num_images=10, fold_size=2
        )


def test_coco_5k_ranks_over_all_5000_images():
    caption_image = np.arange(5000)  # one caption per image keeps the matrix small
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(5000, 5000)).astype(np.float32)
    scores[np.arange(2500), np.arange(2500)] += 10.0  # the first half is retrieved exactly
    summary = retrieval_metrics.coco_5k(scores, caption_image)
    assert summary == retrieval_metrics.evaluate(scores, caption_image)
    assert 50.0 <= summary["t2i_r1"] < 50.5 and 50.0 <= summary["i2t_r1"] < 50.5
    # Without the bonus a random caption's rank is uniform over 0..4999: meanr ≈ 2500.
    assert 1000 < summary["t2i_meanr"] < 2000


def test_image_to_text_scores_override_the_transpose():
    caption_image = np.array([0, 1])
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])  # perfect both ways
    wrong_for_images = np.array([[0.0, 1.0], [1.0, 0.0]])  # [N, M], every image prefers the other
    summary = retrieval_metrics.evaluate(scores, caption_image, wrong_for_images)
    assert summary["t2i_r1"] == 100.0 and summary["i2t_r1"] == 0.0


def test_first_stage_recall():
    candidates = np.array([[1, 2, 1, -1], [4, 5, 6, 7], [8, 8, -1, -1]])  # duplicates count once
    reference = np.array([[1, 9], [7, 4], [0, 2]])
    assert retrieval_metrics.first_stage_recall(candidates, reference) == pytest.approx(
        (0.5 + 1 + 0) / 3
    )
    assert retrieval_metrics.first_stage_recall(reference, reference) == 1.0
    with pytest.raises(ValueError, match="row 0 repeats"):
        retrieval_metrics.first_stage_recall(candidates, np.array([[1, 1], [2, 3], [4, 5]]))
    with pytest.raises(ValueError, match="non-negative"):
        retrieval_metrics.first_stage_recall(candidates, np.array([[-1, 1], [2, 3], [4, 5]]))
    with pytest.raises(ValueError, match="Q=3 rows"):
        retrieval_metrics.first_stage_recall(candidates, reference[:2])
