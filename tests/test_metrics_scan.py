"""lateint.retrieval_metrics against SCAN's own evaluation code (kuanghuei/SCAN evaluation.py), ported.

`scan_i2t`, `scan_t2i` and `scan_evalrank` below are SCAN's `i2t`, `t2i` and the two branches of
`evalrank` (fold5 False / True) with Python 3 integer division and the model calls replaced by a
given similarity matrix `sims` [N, 5N] (image x caption, float64 as SCAN's shard_xattn_* fill
it). They are the independent reference: lateint's "scan" convention must equal them on matrices
with and without ties; the default ("pessimistic") must equal them without ties.
"""

import numpy as np
import pytest

from lateint import retrieval_metrics


def scan_i2t(sims):
    """SCAN evaluation.py i2t: sims (N, 5N) -> (r1, r5, r10, medr, meanr), ranks."""
    npts = sims.shape[0]
    ranks = np.zeros(npts)
    for index in range(npts):
        inds = np.argsort(sims[index])[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    return _scan_summary(ranks), ranks


def scan_t2i(sims):
    """SCAN evaluation.py t2i: sims (N, 5N) -> (r1, r5, r10, medr, meanr), ranks."""
    npts = sims.shape[0]
    ranks = np.zeros(5 * npts)
    sims = sims.T
    for index in range(npts):
        for i in range(5):
            inds = np.argsort(sims[5 * index + i])[::-1]
            ranks[5 * index + i] = np.where(inds == index)[0][0]
    return _scan_summary(ranks), ranks


def _scan_summary(ranks):
    r1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    r5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    r10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    medr = np.floor(np.median(ranks)) + 1
    meanr = ranks.mean() + 1
    return (r1, r5, r10, medr, meanr)


def scan_evalrank(sims, fold5):
    """SCAN evalrank's metric part over a full [N, 5N] sims: a dict in lateint's keys."""
    if not fold5:
        r, _ = scan_i2t(sims)
        ri, _ = scan_t2i(sims)
        return _as_summary(r, ri)
    results = []
    for i in range(5):
        # img_embs[i * 5000:(i + 1) * 5000:5] and cap_embs[i * 5000:(i + 1) * 5000]: images
        # [1000i, 1000(i+1)), captions [5000i, 5000(i+1)); sims recomputed for the fold.
        shard = sims[i * 1000 : (i + 1) * 1000, i * 5000 : (i + 1) * 5000].copy()
        r, _ = scan_i2t(shard)
        ri, _ = scan_t2i(shard)
        ar = (r[0] + r[1] + r[2]) / 3
        ari = (ri[0] + ri[1] + ri[2]) / 3
        rsum = r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2]
        results += [list(r) + list(ri) + [ar, ari, rsum]]
    mean_metrics = tuple(np.array(results).mean(axis=0).flatten())
    summary = _as_summary(mean_metrics[:5], mean_metrics[5:10])
    # SCAN's printed "rsum" after the folds is mean_metrics[10] * 6 = 2 x the i2t recall sum.
    summary["scan_printed_rsum"] = mean_metrics[10] * 6
    summary["mean_fold_rsum"] = mean_metrics[12]
    return summary


def _as_summary(r, ri):
    summary = {
        f"i2t_{key}": float(value) for key, value in zip(("r1", "r5", "r10", "medr", "meanr"), r)
    }
    summary.update(
        {f"t2i_{key}": float(value) for key, value in zip(("r1", "r5", "r10", "medr", "meanr"), ri)}
    )
    summary["rsum"] = float(r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2])
    return summary


def _sims(num_images, levels, seed, signal=1.0):
    """[N, 5N] image x caption similarities with some signal; `levels` rounds them to that many
    values (ties everywhere), None keeps them continuous."""
    rng = np.random.default_rng(seed)
    sims = rng.normal(size=(num_images, 5 * num_images))
    sims[np.arange(5 * num_images) // 5, np.arange(5 * num_images)] += signal * 2.5
    if levels:
        low, high = sims.min(), sims.max()
        sims = np.round((sims - low) / (high - low) * (levels - 1))
    return sims


CAPTION_IMAGE_1K = np.arange(5000) // 5


@pytest.mark.parametrize("levels", [None, 12, 3])
def test_rank_functions_equal_scans_i2t_t2i(levels):
    sims = _sims(1000, levels, seed=levels or 0)
    _, i2t_ranks = scan_i2t(sims)
    _, t2i_ranks = scan_t2i(sims)
    np.testing.assert_array_equal(
        retrieval_metrics.ranks_image_to_text(sims, CAPTION_IMAGE_1K, ties="scan"), i2t_ranks
    )
    np.testing.assert_array_equal(
        retrieval_metrics.ranks_text_to_image(sims.T, CAPTION_IMAGE_1K, ties="scan"), t2i_ranks
    )
    pessimistic_i2t = retrieval_metrics.ranks_image_to_text(sims, CAPTION_IMAGE_1K)
    pessimistic_t2i = retrieval_metrics.ranks_text_to_image(sims.T, CAPTION_IMAGE_1K)
    if levels is None:  # no ties: both conventions are SCAN's
        np.testing.assert_array_equal(pessimistic_i2t, i2t_ranks)
        np.testing.assert_array_equal(pessimistic_t2i, t2i_ranks)
    else:  # ties: the default ranks every tie against the positive, so never better
        assert (pessimistic_i2t >= i2t_ranks).all() and (pessimistic_t2i >= t2i_ranks).all()
        assert (pessimistic_i2t > i2t_ranks).any() and (pessimistic_t2i > t2i_ranks).any()


@pytest.mark.parametrize("levels", [None, 12])
def test_flickr_1k_test_equals_scan_evalrank(levels):
    """N = 1000 (Flickr30k test): coco_1k_5fold is one fold, SCAN's evalrank(fold5=False)."""
    sims = _sims(1000, levels, seed=7)
    expected = scan_evalrank(sims, fold5=False)
    found = retrieval_metrics.coco_1k_5fold(sims.T.astype(np.float32), CAPTION_IMAGE_1K)
    for key in retrieval_metrics.SUMMARY_KEYS:
        assert found[key] == pytest.approx(expected[key], abs=1e-9), key
    default = retrieval_metrics.evaluate(sims.T, CAPTION_IMAGE_1K)
    if levels is None:
        assert default == pytest.approx(found)
    else:
        assert default["rsum"] < found["rsum"]


def test_coco_protocols_equal_scan_evalrank_with_ties():
    """5,000 images x 25,000 captions with ties (the no-tie case is the 1K test's): coco_5k =
    evalrank(fold5=False), coco_1k_5fold = evalrank(fold5=True), value for value."""
    caption_image = np.arange(25000) // 5
    sims = _sims(5000, 12, seed=11, signal=1.6)
    scores = sims.T.astype(np.float32)  # lateint's caption x image matrix, float32
    five_k = retrieval_metrics.coco_5k(scores, caption_image)
    expected = scan_evalrank(sims, fold5=False)
    for key in retrieval_metrics.SUMMARY_KEYS:
        assert five_k[key] == pytest.approx(expected[key], abs=1e-9), key
    one_k = retrieval_metrics.coco_1k_5fold(scores, caption_image)
    expected = scan_evalrank(sims, fold5=True)
    for key in retrieval_metrics.SUMMARY_KEYS:
        assert one_k[key] == pytest.approx(expected[key], abs=1e-9), key
    assert one_k["rsum"] == pytest.approx(expected["mean_fold_rsum"])
    # SCAN's printed fold-5 "rsum" is twice the i2t recall sum, not the rsum.
    assert expected["scan_printed_rsum"] == pytest.approx(
        2 * (one_k["i2t_r1"] + one_k["i2t_r5"] + one_k["i2t_r10"])
    )


def test_scan_convention_follows_argsort_not_a_rule():
    """A row where the true image ties with another: SCAN's argsort decides, not the rule."""
    row = np.array([[0.5, 0.9, 0.9, 0.1]])
    order = np.argsort(row[0])[::-1]
    for true in (1, 2):
        expected = int(np.where(order == true)[0][0])
        assert (
            retrieval_metrics.ranks_text_to_image(row, np.array([true]), ties="scan")[0] == expected
        )
        assert retrieval_metrics.ranks_text_to_image(row, np.array([true]))[0] == 1  # pessimistic
    with pytest.raises(ValueError, match=r"ties: expected one of \['pessimistic', 'scan'\]"):
        retrieval_metrics.ranks_text_to_image(row, np.array([1]), ties="optimistic")


def test_subset_ranks_take_the_convention():
    sims = _sims(40, 4, seed=3)
    caption_image = np.arange(200) // 5
    images = np.array([3, 17, 30])
    np.testing.assert_array_equal(
        retrieval_metrics.ranks_image_subset_to_text(
            sims[images], images, caption_image, ties="scan"
        ),
        scan_i2t(sims)[1][images],
    )
