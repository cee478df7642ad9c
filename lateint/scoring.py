"""Scores and losses on concept vectors: MaxSim, global similarity, InfoNCE, hinge, listwise CE.

Pure `jnp` functions outside any module, jit-able and differentiable. Shapes: Q queries
(captions), N images, T words, R regions, C concept dim, B batch (aligned caption/image pairs,
caption i belongs with image i), P aligned pairs.

Orientation: every score matrix here is [captions, images]; row i, column j scores caption i
against image j. Both loss directions are read from that one matrix.

Duplicate images in a batch (two captions of one image) are handled by an optional
`positives_mask [B, B]` bool: `positives_mask[i, j]` is True when caption i describes image j.
The diagonal is always a positive, whether or not the mask says so. Off-diagonal positives are
never used as negatives (left out of the softmax denominators, the hinge and the mining).
"""

import jax
import jax.numpy as jnp

# Score of a (caption, image) pair when the side whose tokens are maxed over has no real token
# (an image with no real region, for text→image MaxSim). Finite, so sums and softmaxes stay
# finite, and far below any real score of L2-normalised concepts (|score| ≤ number of tokens).
EMPTY_SCORE = -1.0e9


def _check_rank(name, array, rank):
    if array.ndim != rank:
        raise ValueError(f"{name}: expected a rank-{rank} array, got shape {tuple(array.shape)}")


def _check_tokens(side, concepts, mask):
    """Validates concepts [X, S, C] against mask [X, S]."""
    _check_rank(f"{side}_concepts", concepts, 3)
    _check_rank(f"{side}_mask", mask, 2)
    if tuple(mask.shape) != tuple(concepts.shape[:2]):
        raise ValueError(
            f"{side}_mask: expected shape {tuple(concepts.shape[:2])} to match "
            f"{side}_concepts {tuple(concepts.shape)}, got {tuple(mask.shape)}"
        )


def _sum_of_max(similarities, summed_mask, maxed_mask):
    """Sum over the summed side's real tokens of the max over the maxed side's real tokens.

    similarities: [..., S, U] dot products, S = summed tokens, U = maxed tokens.
    summed_mask: [..., S] bool, broadcastable against similarities[..., :, 0].
    maxed_mask: [..., U] bool, broadcastable against similarities[..., 0, :].
    Returns [...]: EMPTY_SCORE where the maxed side has no real token.
    """
    fill = jnp.finfo(similarities.dtype).min
    maxed_mask = maxed_mask[..., None, :]  # [..., 1, U]
    token_max = jnp.max(jnp.where(maxed_mask, similarities, fill), axis=-1)  # [..., S]
    has_maxed = jnp.any(maxed_mask, axis=(-2, -1))  # [...]
    # The fill never reaches the sum: padded summed tokens and empty maxed sides give 0 first.
    keep = jnp.logical_and(summed_mask, has_maxed[..., None])
    total = jnp.sum(jnp.where(keep, token_max, 0.0), axis=-1)  # [...]
    return jnp.where(has_maxed, total, jnp.asarray(EMPTY_SCORE, similarities.dtype))


def maxsim(query_concepts, query_mask, image_concepts, image_mask):
    """Text→image late interaction (TERAN MrSw, ColBERT MaxSim) for all query × image pairs.

    For each real word of the query: the max over the image's real regions of the dot product;
    summed over the query's real words. Padded words contribute 0; an image with no real region
    scores EMPTY_SCORE (a query with no real word scores 0 against every image).

    Args:
      query_concepts: [Q, T, C] float word concept vectors.
      query_mask: [Q, T] bool, True for real words.
      image_concepts: [N, R, C] float region concept vectors.
      image_mask: [N, R] bool, True for real regions.
    Returns:
      [Q, N] scores. Memory peaks at a [Q, N, T, R] similarity tensor: chunk Q or N outside.
    """
    _check_tokens("query", query_concepts, query_mask)
    _check_tokens("image", image_concepts, image_mask)
    similarities = jnp.einsum("qtc,nrc->qntr", query_concepts, image_concepts)  # [Q, N, T, R]
    return _sum_of_max(similarities, query_mask[:, None, :], image_mask[None, :, :])


def maxsim_image_to_text(query_concepts, query_mask, image_concepts, image_mask):
    """Image→text late interaction (TERAN MwSr) for all query × image pairs, [Q, N] oriented.

    For each real region of the image: the max over the query's real words of the dot product;
    summed over the image's real regions. Padded regions contribute 0; a query with no real word
    scores EMPTY_SCORE (an image with no real region scores 0 against every query).

    Args:
      query_concepts: [Q, T, C] float word concept vectors.
      query_mask: [Q, T] bool, True for real words.
      image_concepts: [N, R, C] float region concept vectors.
      image_mask: [N, R] bool, True for real regions.
    Returns:
      [Q, N] scores (transpose for an [N, Q] image-query matrix).
    """
    _check_tokens("query", query_concepts, query_mask)
    _check_tokens("image", image_concepts, image_mask)
    similarities = jnp.einsum("nrc,qtc->qnrt", image_concepts, query_concepts)  # [Q, N, R, T]
    return _sum_of_max(similarities, image_mask[None, :, :], query_mask[:, None, :])


def _check_pairs(query_concepts, query_mask, image_concepts, image_mask):
    _check_tokens("query", query_concepts, query_mask)
    _check_tokens("image", image_concepts, image_mask)
    if query_concepts.shape[0] != image_concepts.shape[0]:
        raise ValueError(
            f"maxsim pairs: query_concepts has {query_concepts.shape[0]} pairs but "
            f"image_concepts has {image_concepts.shape[0]}; expected the same P"
        )


def maxsim_pairs(query_concepts, query_mask, image_concepts, image_mask):
    """Text→image MaxSim (as `maxsim`) for aligned pairs: query p against image p.

    Args:
      query_concepts: [P, T, C]; query_mask: [P, T] bool.
      image_concepts: [P, R, C]; image_mask: [P, R] bool.
    Returns:
      [P] scores, equal to the diagonal of `maxsim` on the same inputs.
    """
    _check_pairs(query_concepts, query_mask, image_concepts, image_mask)
    similarities = jnp.einsum("ptc,prc->ptr", query_concepts, image_concepts)  # [P, T, R]
    return _sum_of_max(similarities, query_mask, image_mask)


def maxsim_image_to_text_pairs(query_concepts, query_mask, image_concepts, image_mask):
    """Image→text MaxSim (as `maxsim_image_to_text`) for aligned pairs: query p against image p.

    Args:
      query_concepts: [P, T, C]; query_mask: [P, T] bool.
      image_concepts: [P, R, C]; image_mask: [P, R] bool.
    Returns:
      [P] scores, equal to the diagonal of `maxsim_image_to_text` on the same inputs.
    """
    _check_pairs(query_concepts, query_mask, image_concepts, image_mask)
    similarities = jnp.einsum("prc,ptc->prt", image_concepts, query_concepts)  # [P, R, T]
    return _sum_of_max(similarities, image_mask, query_mask)


def global_scores(query_global, image_global):
    """Dual-encoder (TERN) scores: dot products of global vectors.

    Args:
      query_global: [Q, C] float.
      image_global: [N, C] float.
    Returns:
      [Q, N] scores.
    """
    _check_rank("query_global", query_global, 2)
    _check_rank("image_global", image_global, 2)
    if query_global.shape[1] != image_global.shape[1]:
        raise ValueError(
            f"global_scores: query_global has C={query_global.shape[1]} but image_global has "
            f"C={image_global.shape[1]}"
        )
    return query_global @ image_global.T


def _negatives(scores, positives_mask):
    """Returns [B, B] bool, True where (caption i, image j) is a negative.

    scores: [B, B]; positives_mask: [B, B] bool or None. The diagonal is never a negative.
    """
    _check_rank("scores", scores, 2)
    size = scores.shape[0]
    if scores.shape[1] != size:
        raise ValueError(f"scores: expected a square [B, B] matrix, got {tuple(scores.shape)}")
    diagonal = jnp.eye(size, dtype=bool)
    if positives_mask is None:
        return jnp.logical_not(diagonal)
    if tuple(positives_mask.shape) != (size, size):
        raise ValueError(
            f"positives_mask: expected shape {(size, size)} to match scores, "
            f"got {tuple(positives_mask.shape)}"
        )
    return jnp.logical_not(jnp.logical_or(positives_mask.astype(bool), diagonal))


def _check_temperature(temperature):
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")


def info_nce(scores, temperature, positives_mask=None):
    """Symmetric InfoNCE with the diagonal as positives (CLIP-style).

    text→image: row i is a softmax over the images, target column i; image→text: column j is a
    softmax over the captions, target row j. Off-diagonal positives (positives_mask) are left out
    of both denominators. The result is the mean of the two directions' batch means.

    Args:
      scores: [B, B] float, caption i × image j.
      temperature: scalar > 0; logits are scores / temperature.
      positives_mask: optional [B, B] bool, True where caption i describes image j.
    Returns:
      scalar float loss.
    """
    _check_temperature(temperature)
    negatives = _negatives(scores, positives_mask)
    keep = jnp.logical_or(negatives, jnp.eye(scores.shape[0], dtype=bool))  # [B, B]
    logits = scores / temperature
    masked = jnp.where(keep, logits, -jnp.inf)  # the diagonal stays finite in every row/column
    positive = jnp.diagonal(logits)  # [B]
    text_to_image = jax.nn.logsumexp(masked, axis=1) - positive  # [B]
    image_to_text = jax.nn.logsumexp(masked, axis=0) - positive  # [B]
    return 0.5 * (jnp.mean(text_to_image) + jnp.mean(image_to_text))


def max_violation_hinge(scores, margin, positives_mask=None):
    """VSE++ hinge on the hardest negative, both directions.

    Per caption i: max over negative images j of relu(margin + s[i, j] - s[i, i]); per image j:
    max over negative captions i of relu(margin + s[i, j] - s[j, j]). Rows/columns with no
    negative contribute 0. Returns the batch mean of the two summed (VSE++ sums over the batch;
    the mean keeps the scale independent of B).

    Args:
      scores: [B, B] float, caption i × image j.
      margin: scalar float.
      positives_mask: optional [B, B] bool, True where caption i describes image j.
    Returns:
      scalar float loss.
    """
    negatives = _negatives(scores, positives_mask)
    positive = jnp.diagonal(scores)  # [B]
    caption_cost = jax.nn.relu(margin + scores - positive[:, None])  # [B, B], per row i
    image_cost = jax.nn.relu(margin + scores - positive[None, :])  # [B, B], per column j
    hardest_for_caption = jnp.max(jnp.where(negatives, caption_cost, 0.0), axis=1)  # [B]
    hardest_for_image = jnp.max(jnp.where(negatives, image_cost, 0.0), axis=0)  # [B]
    return jnp.mean(hardest_for_caption + hardest_for_image)


def mine_hard_negatives(scores, num_negatives, positives_mask=None):
    """Indices of the highest-scoring negative images for each caption row.

    Row i never contains i. Row i contains another positive of caption i (per positives_mask)
    only when the row has no negative at all; when it has fewer than num_negatives negatives,
    the remaining slots repeat its hardest negative. Which slots are real negatives is
    `~jnp.take_along_axis(positives_mask, indices, axis=1)` (pass it to listwise_ce).

    Args:
      scores: [B, B] float, caption i × image j (treated as constant: no gradient flows).
      num_negatives: static int, 1 ≤ num_negatives ≤ B - 1.
      positives_mask: optional [B, B] bool, True where caption i describes image j.
    Returns:
      [B, num_negatives] int32 image indices, hardest first.
    """
    negatives = _negatives(scores, positives_mask)
    size = scores.shape[0]
    if not 1 <= num_negatives <= size - 1:
        raise ValueError(f"num_negatives: expected 1..{size - 1} for B={size}, got {num_negatives}")
    scores = jax.lax.stop_gradient(scores)
    keyed = jnp.where(negatives, scores, -jnp.inf)  # [B, B]
    _, indices = jax.lax.top_k(keyed, num_negatives)  # [B, n]
    indices = indices.astype(jnp.int32)
    negative_count = jnp.sum(negatives, axis=1)  # [B]
    slot = jnp.arange(num_negatives)[None, :]  # [1, n]
    rows = jnp.arange(size, dtype=jnp.int32)
    # Rows without any negative fall back to the next image, which is never the row itself.
    fallback = jnp.where(negative_count > 0, indices[:, 0], (rows + 1) % size)  # [B]
    return jnp.where(slot < negative_count[:, None], indices, fallback[:, None])


def listwise_ce(joint_scores, temperature, negatives_mask=None):
    """Listwise softmax cross-entropy with the positive in column 0.

    Args:
      joint_scores: [B, 1 + n] float; column 0 is the positive, columns 1.. the negatives.
      temperature: scalar > 0; logits are joint_scores / temperature.
      negatives_mask: optional [B, n] bool, False for negative slots to leave out (e.g. slots
        that mine_hard_negatives filled with a positive).
    Returns:
      scalar float, the batch mean of -log softmax(logits)[:, 0].
    """
    _check_rank("joint_scores", joint_scores, 2)
    _check_temperature(temperature)
    if joint_scores.shape[1] < 2:
        raise ValueError(
            f"joint_scores: expected [B, 1 + n] with n >= 1, got {tuple(joint_scores.shape)}"
        )
    logits = joint_scores / temperature
    if negatives_mask is not None:
        expected = (joint_scores.shape[0], joint_scores.shape[1] - 1)
        if tuple(negatives_mask.shape) != expected:
            raise ValueError(
                f"negatives_mask: expected shape {expected} for joint_scores "
                f"{tuple(joint_scores.shape)}, got {tuple(negatives_mask.shape)}"
            )
        keep = jnp.concatenate(
            [jnp.ones((expected[0], 1), bool), negatives_mask.astype(bool)], axis=1
        )
        logits = jnp.where(keep, logits, -jnp.inf)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
