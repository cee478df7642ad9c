"""lateint.relational_metrics on hand-computed cases."""

import numpy as np
import pytest

from lateint import relational_metrics


def test_oracle_recall_counts_any_true_scene_in_the_top_k():
    truth = np.array(
        [
            [True, False, False, True],  # caption 0 true of images 0 and 3
            [False, False, True, False],
        ]
    )  # caption 1 true of image 2
    top = np.array([[1, 3, 0], [0, 1, 2]])
    found = relational_metrics.oracle_recall(
        top, truth, np.array(["relation", "inventory"]), levels=(1, 2, 3)
    )
    assert found["oracle_r1"] == 0.0 and found["oracle_r2"] == 50.0
    assert found["oracle_r3"] == 100.0
    assert found["oracle_r2/relation"] == 100.0 and found["oracle_r2/inventory"] == 0.0
    assert found["captions/relation"] == 1 and "oracle_r1/count" not in found


def test_partner_pairs_and_accuracy():
    groups = np.array([0, 0, 1, 1, 1])
    caption_image = np.array([0, 1, 2, 4])
    truth = np.zeros((4, 5), bool)
    truth[np.arange(4), caption_image] = True
    truth[2, 3] = True  # caption 2 also true of its partner 3
    captions, own, partner = relational_metrics.partner_pairs(groups, caption_image, truth)
    assert list(zip(captions, own, partner)) == [
        (0, 0, 1),
        (1, 1, 0),
        (2, 2, 4),
        (3, 4, 2),
        (3, 4, 3),
    ]
    own_scores = np.array([1.0, 0.5, 2.0, 1.0, 1.0])
    partner_scores = np.array([0.0, 0.5, 3.0, 0.0, 0.0])
    found = relational_metrics.partner_accuracy(
        own_scores, partner_scores, np.array(["relation"] * 3 + ["count"] * 2)
    )
    assert found["partner_accuracy"] == pytest.approx(100 * 3.5 / 5)  # a tie counts one half
    assert found["partner_pairs"] == 5
    assert found["partner_accuracy/relation"] == pytest.approx(100 * 1.5 / 3)
    assert found["partner_accuracy/count"] == 100.0
