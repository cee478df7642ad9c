"""Retrieval metrics (NumPy): ranks, R@K / rsum / medr / meanr, COCO 1K and 5K, first-stage recall.

Shapes: M captions, N images. `caption_image [M]` holds the index of each caption's image.

Tie conventions (`ties=`), equal without ties:
- "pessimistic" (default of the rank functions and `evaluate`): a positive's rank is the number
  of *negatives* scoring >= it, so a constant scorer gets the worst ranks, never perfect ones.
- "scan": SCAN's / VSE++'s / TERAN's `i2t` and `t2i` exactly: the position of the (first)
  positive in `np.argsort(row)[::-1]`, ties wherever NumPy's sort puts them (which can depend on
  dtype and CPU). `coco_5k` / `coco_1k_5fold` default to it, on float64 like `evalrank`'s sims.
Ranks are 0-based; R@K counts rank < K; medr = floor(median(rank)) + 1 and meanr = mean(rank) + 1
as VSE++ / SCAN report them.
"""

from collections.abc import Callable

import numpy as np

from lateint.first_stage_recall import first_stage_recall  # noqa: F401  (part of this API)

DIRECTIONS = ("t2i", "i2t")  # text→image (image retrieval), image→text (caption retrieval)
RECALL_LEVELS = (1, 5, 10)
# recall_summary keys: t2i_r1 t2i_r5 t2i_r10 t2i_medr t2i_meanr, the same for i2t, and rsum.
SUMMARY_KEYS = tuple(
    f"{direction}_{name}"
    for direction in DIRECTIONS
    for name in [f"r{level}" for level in RECALL_LEVELS] + ["medr", "meanr"]
) + ("rsum",)

# Rows per block when comparing scores, to bound the [rows, columns] temporaries.
_BLOCK_ROWS = 256
# Elements per block of the "scan" convention's argsort ([rows, columns] int64 temporaries).
_SORT_BLOCK_ELEMENTS = 1 << 22
TIES = ("pessimistic", "scan")

ScoreSource = np.ndarray | Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_scores(name, scores, shape):
    scores = np.asarray(scores)
    if scores.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{name}: contains NaN at {np.argwhere(np.isnan(scores))[:5].tolist()}")
    return scores


def _check_caption_image(caption_image, num_images):
    caption_image = np.asarray(caption_image)
    if caption_image.ndim != 1 or not np.issubdtype(caption_image.dtype, np.integer):
        raise ValueError(
            f"caption_image: expected a [M] integer array, got shape {caption_image.shape} "
            f"dtype {caption_image.dtype}"
        )
    if caption_image.size and (caption_image.min() < 0 or caption_image.max() >= num_images):
        raise ValueError(
            f"caption_image: expected image indices in [0, {num_images}), got range "
            f"[{caption_image.min()}, {caption_image.max()}]"
        )
    return caption_image


def _check_ties(ties):
    if ties not in TIES:
        raise ValueError(f"ties: expected one of {list(TIES)}, got {ties!r}")


def _sort_block_rows(columns):
    return max(1, _SORT_BLOCK_ELEMENTS // max(1, columns))


def _scan_positions(block):
    """[b, n] scores -> [b, n] int64: each column's position in np.argsort(row)[::-1]."""
    order = np.argsort(block, axis=1)  # ascending, NumPy's default kind, as SCAN's code
    positions = np.empty_like(order)
    rows = np.arange(block.shape[0])[:, None]
    positions[rows, order] = block.shape[1] - 1 - np.arange(block.shape[1])[None, :]
    return positions


def ranks_text_to_image(scores, caption_image, ties="pessimistic"):
    """0-based rank of each caption's true image among all images.

    ties="pessimistic": rank = number of other images scoring >= the true image (ties count
    against the caption); "scan": the position of the true image in np.argsort(row)[::-1].

    Args:
      scores: [M, N] float, caption × image.
      caption_image: [M] int, the true image of each caption.
      ties: "pessimistic" or "scan" (see the module docstring).
    Returns:
      [M] int64 ranks.
    """
    _check_ties(ties)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected [M, N] captions × images, got shape {scores.shape}")
    caption_image = _check_caption_image(caption_image, scores.shape[1])
    scores = _check_scores("scores", scores, (caption_image.shape[0], scores.shape[1]))
    ranks = np.empty(scores.shape[0], np.int64)
    if ties == "scan":
        step = _sort_block_rows(scores.shape[1])
        for start in range(0, scores.shape[0], step):
            positions = _scan_positions(scores[start : start + step])  # [b, N]
            rows = np.arange(positions.shape[0])
            ranks[start : start + step] = positions[rows, caption_image[start : start + step]]
        return ranks
    positive = scores[np.arange(scores.shape[0]), caption_image]  # [M]
    for start in range(0, scores.shape[0], _BLOCK_ROWS):
        block = scores[start : start + _BLOCK_ROWS]  # [b, N]
        at_least = np.sum(block >= positive[start : start + _BLOCK_ROWS, None], axis=1)
        ranks[start : start + block.shape[0]] = at_least - 1  # ">=" counts the true image once
    return ranks


def ranks_image_to_text(scores, caption_image, ties="pessimistic"):
    """0-based rank of each image's best caption among all captions.

    ties="pessimistic": rank = number of captions of *other* images scoring >= the image's
    best-scoring caption, the position of the first positive when ties are ordered negatives
    first; "scan": the first position of one of its captions in np.argsort(row)[::-1].

    Args:
      scores: [N, M] float, image × caption.
      caption_image: [M] int, the image of each caption; every image needs at least one caption.
      ties: "pessimistic" or "scan" (see the module docstring).
    Returns:
      [N] int64 ranks.
    """
    _check_ties(ties)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected [N, M] images × captions, got shape {scores.shape}")
    num_images = scores.shape[0]
    caption_image = _check_caption_image(caption_image, num_images)
    scores = _check_scores("scores", scores, (num_images, caption_image.shape[0]))
    caption_counts = np.bincount(caption_image, minlength=num_images)
    if np.any(caption_counts == 0):
        missing = np.flatnonzero(caption_counts == 0)
        raise ValueError(
            f"caption_image: images {missing[:10].tolist()} ({missing.size} in all) have no "
            "caption, so image→text ranks are undefined"
        )
    ranks = np.empty(num_images, np.int64)
    if ties == "scan":
        step = _sort_block_rows(scores.shape[1])
        for start in range(0, num_images, step):
            positions = _scan_positions(scores[start : start + step])  # [b, M]
            images = np.arange(start, start + positions.shape[0])
            positive = caption_image[None, :] == images[:, None]  # [b, M]
            ranks[start : start + step] = np.min(
                np.where(positive, positions, scores.shape[1]), axis=1
            )
        return ranks
    for start in range(0, num_images, _BLOCK_ROWS):
        block = scores[start : start + _BLOCK_ROWS]  # [b, M]
        images = np.arange(start, start + block.shape[0])
        positive = caption_image[None, :] == images[:, None]  # [b, M]
        best = np.max(np.where(positive, block, -np.inf), axis=1)  # [b]
        beaten = (block >= best[:, None]) & ~positive
        ranks[start : start + block.shape[0]] = np.sum(beaten, axis=1)
    return ranks


def _direction_summary(ranks, direction):
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks_{direction}: expected a non-empty [M] array, got {ranks.shape}")
    summary = {
        f"{direction}_r{level}": 100.0 * float(np.mean(ranks < level)) for level in RECALL_LEVELS
    }
    summary[f"{direction}_medr"] = float(np.floor(np.median(ranks)) + 1)
    summary[f"{direction}_meanr"] = float(np.mean(ranks) + 1)
    return summary


def recall_summary(ranks_t2i, ranks_i2t):
    """R@1/5/10 (percent), medr and meanr (1-based) per direction, and rsum.

    Args:
      ranks_t2i: [M] 0-based ranks from ranks_text_to_image.
      ranks_i2t: [N] 0-based ranks from ranks_image_to_text.
    Returns:
      dict with the SUMMARY_KEYS, all floats; rsum is the sum of the six recalls.
    """
    summary = {**_direction_summary(ranks_t2i, "t2i"), **_direction_summary(ranks_i2t, "i2t")}
    summary["rsum"] = sum(
        summary[f"{direction}_r{level}"] for direction in DIRECTIONS for level in RECALL_LEVELS
    )
    return {key: summary[key] for key in SUMMARY_KEYS}


def top_k_summary(ranks_t2i, ranks_i2t, t2i_known=None, i2t_known=None):
    """recall_summary for scorers that order only their top results (e.g. a reranker's top K).

    A rank >= `known` means "not among the top `known`" (its exact value is unknown), so R@K
    for K > known, medr and meanr are None; rsum is None when any recall is. known=None: every
    rank is exact (then the result equals recall_summary).

    Args:
      ranks_t2i: [M] 0-based ranks; ranks_i2t: [N] 0-based ranks.
      t2i_known, i2t_known: None or the number of top results each direction orders.
    Returns:
      dict with the SUMMARY_KEYS, floats or None.
    """
    summary = {}
    for direction, ranks, known in (("t2i", ranks_t2i, t2i_known), ("i2t", ranks_i2t, i2t_known)):
        part = _direction_summary(ranks, direction)
        if known is not None:
            if known < 1:
                raise ValueError(f"{direction}_known: expected None or >= 1, got {known}")
            part.update({f"{direction}_r{level}": None for level in RECALL_LEVELS if level > known})
            part.update({f"{direction}_medr": None, f"{direction}_meanr": None})
        summary.update(part)
    recalls = [
        summary[f"{direction}_r{level}"] for direction in DIRECTIONS for level in RECALL_LEVELS
    ]
    summary["rsum"] = None if None in recalls else sum(recalls)
    return {key: summary[key] for key in SUMMARY_KEYS}


def ranks_image_subset_to_text(scores, images, caption_image, ties="pessimistic"):
    """ranks_image_to_text for a subset of the images, each against every caption.

    Captions of images outside the subset are negatives (the same tie rule).

    Args:
      scores: [S, M] float, image `images[s]` × caption.
      images: [S] int, distinct image indices, each with at least one caption.
      caption_image: [M] int, the image of each caption (any number of images).
      ties: "pessimistic" or "scan".
    Returns:
      [S] int64 0-based ranks.
    """
    scores, images = np.asarray(scores), np.asarray(images)
    caption_image = _check_caption_image(caption_image, int(np.max(caption_image, initial=0)) + 1)
    if (
        images.ndim != 1
        or np.unique(images).size != images.size
        or scores.shape != (images.size, caption_image.size)
    ):
        raise ValueError(
            f"ranks_image_subset_to_text: expected distinct images [S] and scores "
            f"[S, M={caption_image.size}], got images {images.shape} (distinct: "
            f"{np.unique(images).size}) and scores {scores.shape}"
        )
    # Subset image s is row s; every other caption goes to one extra row S that is not ranked.
    row = np.full(max(caption_image.max(initial=0), images.max(initial=0)) + 1, images.size)
    row[images] = np.arange(images.size)
    local = row[caption_image].astype(np.int64)  # [M]
    if np.all(local < images.size):
        return ranks_image_to_text(scores, local, ties)
    padded = np.concatenate([scores, np.zeros((1, scores.shape[1]), scores.dtype)])
    return ranks_image_to_text(padded, local, ties)[: images.size]


def evaluate(scores, caption_image, image_to_text_scores=None, ties="pessimistic"):
    """Both directions over one score matrix.

    Args:
      scores: [M, N] float, caption × image.
      caption_image: [M] int.
      image_to_text_scores: optional [N, M] image × caption; defaults to scores.T (use it for
        asymmetric scorers such as image→text MaxSim).
      ties: "pessimistic" or "scan" (see the module docstring).
    Returns:
      recall_summary dict.
    """
    scores = np.asarray(scores)
    if image_to_text_scores is None:
        image_to_text_scores = scores.T
    return recall_summary(
        ranks_text_to_image(scores, caption_image, ties),
        ranks_image_to_text(image_to_text_scores, caption_image, ties),
    )


def _as_evalrank_sims(scores, ties):
    """SCAN's evalrank ranks float64 `sims` (np.zeros filled shard by shard): under "scan" the
    protocols sort float64 too, so NumPy breaks ties as in that run."""
    return np.asarray(scores, np.float64) if ties == "scan" else scores


def _fold_scores(source, name, caption_indices, image_indices, transpose):
    """Slices (or computes) one fold's scores: [m, n] (or [n, m] with transpose)."""
    if callable(source):
        rows, columns = (
            (image_indices, caption_indices) if transpose else (caption_indices, image_indices)
        )
        block = np.asarray(source(rows, columns))
        expected = (rows.size, columns.size)
        if block.shape != expected:
            raise ValueError(
                f"{name}: the score function returned shape {block.shape}, expected {expected}"
            )
        return block
    if transpose:
        return source[np.ix_(image_indices, caption_indices)]
    return source[np.ix_(caption_indices, image_indices)]


def coco_1k_5fold(
    scores: ScoreSource,
    caption_image,
    image_to_text_scores=None,
    num_images=None,
    fold_size=1000,
    ties="scan",
):
    """COCO 1K protocol: mean of the summaries over folds of `fold_size` images and their captions.

    Fold k holds images [fold_size·k, fold_size·(k+1)) and every caption of those images; scores
    are ranked within the fold only. The standard protocol is 5 folds of 1000 over the 5000-image
    test split; other sizes are allowed for small benchmarks as long as N is a multiple of
    fold_size (the result is then "1K-style", not the published protocol). With N = 1000 (the
    Flickr30k test split) it is the single-fold 1K evaluation.

    With caption i of image i // 5 (every lateint reader's layout) and ties="scan" this is SCAN's
    `evalrank(..., fold5=True)`, every value the mean over folds; rsum = the sum of the six mean
    recalls (SCAN's printed fold-5 "rsum:" is 2 x the i2t recall sum: docs/coco.md).

    Args:
      scores: [M, N] caption × image matrix, or a function (caption_indices [m], image_indices
        [n]) -> [m, n] scores, called once per fold (avoids scoring across folds).
      caption_image: [M] int.
      image_to_text_scores: optional [N, M] matrix or function (image_indices [n],
        caption_indices [m]) -> [n, m]; defaults to the transpose of `scores`.
      num_images: N; required when `scores` is a function, checked against the matrix otherwise.
      fold_size: images per fold.
      ties: "scan" (SCAN's argsort, on float64 as its evalrank; the default) or "pessimistic".
    Returns:
      recall_summary dict averaged over folds (medr and meanr too, as VSE++ reports them).
    """
    _check_ties(ties)
    caption_image = np.asarray(caption_image)
    if not callable(scores):
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[0] != caption_image.shape[0]:
            raise ValueError(
                f"scores: expected [M={caption_image.shape[0]}, N] captions × images, "
                f"got shape {scores.shape}"
            )
        if num_images is not None and num_images != scores.shape[1]:
            raise ValueError(f"num_images={num_images} but scores has N={scores.shape[1]}")
        num_images = scores.shape[1]
    if num_images is None:
        raise ValueError("num_images: required when scores is a function")
    if num_images == 0 or num_images % fold_size != 0:
        raise ValueError(
            f"coco_1k_5fold: N={num_images} images is not a positive multiple of "
            f"fold_size={fold_size} (the COCO 1K protocol expects N=5000 in 5 folds)"
        )
    caption_image = _check_caption_image(caption_image, num_images)
    if image_to_text_scores is None and not callable(scores):
        image_to_text_scores = scores.T
    summaries = []
    for fold in range(num_images // fold_size):
        first = fold * fold_size
        image_indices = np.arange(first, first + fold_size)
        caption_indices = np.flatnonzero(
            (caption_image >= first) & (caption_image < first + fold_size)
        )
        local_caption_image = caption_image[caption_indices] - first
        fold_t2i = _as_evalrank_sims(
            _fold_scores(scores, "scores", caption_indices, image_indices, False), ties
        )
        if image_to_text_scores is None:
            fold_i2t = fold_t2i.T
        else:
            fold_i2t = _as_evalrank_sims(
                _fold_scores(
                    image_to_text_scores,
                    "image_to_text_scores",
                    caption_indices,
                    image_indices,
                    True,
                ),
                ties,
            )
        summaries.append(evaluate(fold_t2i, local_caption_image, fold_i2t, ties))
    return {key: float(np.mean([summary[key] for summary in summaries])) for key in SUMMARY_KEYS}


def coco_5k(scores, caption_image, image_to_text_scores=None, ties="scan"):
    """COCO 5K protocol: both directions over the full 5000-image test split.

    With caption i of image i // 5 and ties="scan" this is SCAN's / TERAN's `evalrank(...,
    fold5=False)` on the 5,000-image test split (SCAN's 'testall').

    Args:
      scores: [M, 5000] float, caption × image.
      caption_image: [M] int.
      image_to_text_scores: optional [5000, M]; defaults to scores.T.
      ties: "scan" (SCAN's argsort, on float64 as its evalrank; the default) or "pessimistic".
    Returns:
      recall_summary dict. For corpora of other sizes call `evaluate`.
    """
    _check_ties(ties)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != 5000:
        raise ValueError(
            f"coco_5k: expected scores [M, 5000] captions × images, got shape {scores.shape}; "
            "use lateint.retrieval_metrics.evaluate for other corpus sizes"
        )
    if image_to_text_scores is not None:
        image_to_text_scores = _as_evalrank_sims(image_to_text_scores, ties)
    return evaluate(_as_evalrank_sims(scores, ties), caption_image, image_to_text_scores, ties)
