"""lateint.scoring against straightforward NumPy loop references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lateint import scoring

ATOL = 1e-5


def random_tokens(rng, count, length, dim, min_real=1):
    """Returns (concepts [count, length, dim] float32, mask [count, length] bool)."""
    concepts = rng.normal(size=(count, length, dim)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=-1, keepdims=True)
    real = rng.integers(min_real, length + 1, size=count)
    mask = np.arange(length)[None, :] < real[:, None]
    return concepts, mask


def reference_sum_of_max(summed, summed_mask, maxed, maxed_mask):
    """Loop reference for one pair: sum over real summed tokens of max over real maxed tokens."""
    if not maxed_mask.any():
        return scoring.EMPTY_SCORE
    total = 0.0
    for s in range(summed.shape[0]):
        if not summed_mask[s]:
            continue
        best = -np.inf
        for u in range(maxed.shape[0]):
            if maxed_mask[u]:
                best = max(best, float(np.dot(summed[s], maxed[u])))
        total += best
    return total


def reference_positive_sets(size, positives_mask):
    """Returns [B, B] bool with the diagonal added."""
    mask = np.eye(size, dtype=bool)
    if positives_mask is not None:
        mask |= positives_mask
    return mask


def reference_info_nce(scores, temperature, positives_mask=None):
    size = scores.shape[0]
    positives = reference_positive_sets(size, positives_mask)
    logits = scores.astype(np.float64) / temperature
    total_rows, total_columns = 0.0, 0.0
    for i in range(size):
        kept = [logits[i, j] for j in range(size) if j == i or not positives[i, j]]
        total_rows += np.log(np.sum(np.exp(kept))) - logits[i, i]
        kept = [logits[j, i] for j in range(size) if j == i or not positives[j, i]]
        total_columns += np.log(np.sum(np.exp(kept))) - logits[i, i]
    return 0.5 * (total_rows / size + total_columns / size)


def reference_hinge(scores, margin, positives_mask=None):
    size = scores.shape[0]
    positives = reference_positive_sets(size, positives_mask)
    total = 0.0
    for i in range(size):
        caption_worst, image_worst = 0.0, 0.0
        for j in range(size):
            if not positives[i, j]:
                caption_worst = max(caption_worst, margin + scores[i, j] - scores[i, i])
            if not positives[j, i]:
                image_worst = max(image_worst, margin + scores[j, i] - scores[i, i])
        total += caption_worst + image_worst
    return total / size


def same_image_mask(image_of_item):
    """[B] image ids → [B, B] bool positives mask."""
    image_of_item = np.asarray(image_of_item)
    return image_of_item[:, None] == image_of_item[None, :]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_maxsim_matches_loop_reference(rng):
    queries, query_mask = random_tokens(rng, 4, 6, 8)
    images, image_mask = random_tokens(rng, 5, 7, 8)
    query_mask[1, :] = False  # a query with no real word
    image_mask[2, :] = False  # an image with no real region
    got = np.asarray(jax.jit(scoring.maxsim)(queries, query_mask, images, image_mask))
    assert got.shape == (4, 5)
    for q in range(4):
        for n in range(5):
            expected = reference_sum_of_max(queries[q], query_mask[q], images[n], image_mask[n])
            np.testing.assert_allclose(got[q, n], expected, atol=ATOL, rtol=1e-6)
    assert np.all(got[:, 2] == scoring.EMPTY_SCORE)
    assert np.all(got[1, [0, 1, 3, 4]] == 0.0)


def test_maxsim_image_to_text_matches_loop_reference(rng):
    queries, query_mask = random_tokens(rng, 3, 5, 8)
    images, image_mask = random_tokens(rng, 4, 6, 8)
    query_mask[0, :] = False
    got = np.asarray(scoring.maxsim_image_to_text(queries, query_mask, images, image_mask))
    assert got.shape == (3, 4)
    for q in range(3):
        for n in range(4):
            expected = reference_sum_of_max(images[n], image_mask[n], queries[q], query_mask[q])
            np.testing.assert_allclose(got[q, n], expected, atol=ATOL, rtol=1e-6)
    assert np.all(got[0] == scoring.EMPTY_SCORE)
    # MrSw and MwSr differ in general: the test must be able to tell them apart.
    text_to_image = np.asarray(scoring.maxsim(queries, query_mask, images, image_mask))
    assert not np.allclose(got[1:], text_to_image[1:])


def test_pairs_equal_diagonal_of_full_matrix(rng):
    queries, query_mask = random_tokens(rng, 5, 6, 8)
    images, image_mask = random_tokens(rng, 5, 4, 8)
    image_mask[3, :] = False
    full = np.asarray(scoring.maxsim(queries, query_mask, images, image_mask))
    pairs = np.asarray(scoring.maxsim_pairs(queries, query_mask, images, image_mask))
    np.testing.assert_allclose(pairs, np.diagonal(full), atol=ATOL)
    full = np.asarray(scoring.maxsim_image_to_text(queries, query_mask, images, image_mask))
    pairs = np.asarray(scoring.maxsim_image_to_text_pairs(queries, query_mask, images, image_mask))
    np.testing.assert_allclose(pairs, np.diagonal(full), atol=ATOL)


def test_padded_tokens_do_not_change_scores(rng):
    queries, query_mask = random_tokens(rng, 3, 6, 8)
    images, image_mask = random_tokens(rng, 4, 5, 8)
    before = np.asarray(scoring.maxsim(queries, query_mask, images, image_mask))
    # Large values in padded slots would win a max or add to a sum if they leaked in.
    queries[~query_mask] = 100.0
    images[~image_mask] = 100.0
    after = np.asarray(scoring.maxsim(queries, query_mask, images, image_mask))
    np.testing.assert_array_equal(before, after)


def test_maxsim_gradient_finite_with_empty_image(rng):
    queries, query_mask = random_tokens(rng, 2, 4, 8)
    images, image_mask = random_tokens(rng, 2, 3, 8)
    image_mask[1, :] = False

    def loss(query_concepts):
        scores = scoring.maxsim(query_concepts, query_mask, images, image_mask)
        return scoring.info_nce(scores, 0.1)

    gradient = np.asarray(jax.grad(loss)(jnp.asarray(queries)))
    assert np.all(np.isfinite(gradient))
    assert np.any(gradient != 0.0)


def test_shape_errors_name_the_argument(rng):
    queries, query_mask = random_tokens(rng, 2, 4, 8)
    images, image_mask = random_tokens(rng, 3, 5, 8)
    with pytest.raises(ValueError, match="image_mask"):
        scoring.maxsim(queries, query_mask, images, image_mask[:, :4])
    with pytest.raises(ValueError, match="pairs"):
        scoring.maxsim_pairs(queries, query_mask, images, image_mask)
    with pytest.raises(ValueError, match="square"):
        scoring.info_nce(jnp.zeros((3, 4)), 0.1)
    with pytest.raises(ValueError, match="positives_mask"):
        scoring.info_nce(jnp.zeros((3, 3)), 0.1, positives_mask=jnp.zeros((2, 2), bool))


def test_global_scores(rng):
    queries = rng.normal(size=(3, 6)).astype(np.float32)
    images = rng.normal(size=(4, 6)).astype(np.float32)
    got = np.asarray(scoring.global_scores(queries, images))
    expected = np.array([[np.dot(q, i) for i in images] for q in queries])
    np.testing.assert_allclose(got, expected, atol=ATOL)
    with pytest.raises(ValueError, match="C=6"):
        scoring.global_scores(queries, images[:, :5])


@pytest.mark.parametrize("with_mask", [False, True])
def test_info_nce_matches_reference(rng, with_mask):
    scores = rng.normal(size=(6, 6)).astype(np.float32)
    mask = same_image_mask([0, 1, 1, 2, 3, 3]) if with_mask else None
    got = float(jax.jit(scoring.info_nce)(scores, 0.2, mask))
    np.testing.assert_allclose(got, reference_info_nce(scores, 0.2, mask), atol=ATOL)


def test_info_nce_positives_mask_removes_duplicate_from_denominator():
    # Captions 0 and 1 describe the same image: without the mask each one's image is a (strong)
    # negative for the other; with it the loss is lower.
    scores = np.array([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    unmasked = float(scoring.info_nce(scores, 1.0))
    masked = float(scoring.info_nce(scores, 1.0, same_image_mask([7, 7, 8])))
    assert masked < unmasked - 0.1


@pytest.mark.parametrize("with_mask", [False, True])
def test_hinge_matches_reference(rng, with_mask):
    scores = rng.normal(size=(6, 6)).astype(np.float32)
    mask = same_image_mask([0, 0, 1, 2, 2, 2]) if with_mask else None
    got = float(jax.jit(scoring.max_violation_hinge)(scores, 0.2, mask))
    np.testing.assert_allclose(got, reference_hinge(scores, 0.2, mask), atol=ATOL)


def test_hinge_is_zero_when_positives_win_by_margin():
    scores = np.eye(4, dtype=np.float32) * 2.0
    assert float(scoring.max_violation_hinge(scores, 0.5)) == 0.0
    # One batch where every item is the same image: no negatives anywhere, loss 0.
    everything_same = same_image_mask([3, 3, 3, 3])
    assert float(scoring.max_violation_hinge(np.zeros((4, 4)), 0.5, everything_same)) == 0.0


def test_mine_hard_negatives_matches_reference(rng):
    scores = rng.normal(size=(7, 7)).astype(np.float32)
    image_of_item = np.array([0, 0, 1, 2, 2, 3, 4])
    mask = same_image_mask(image_of_item)
    got = np.asarray(jax.jit(scoring.mine_hard_negatives, static_argnums=1)(scores, 3, mask))
    assert got.shape == (7, 3) and got.dtype == np.int32
    for i in range(7):
        negatives = [j for j in range(7) if not mask[i, j]]
        expected = sorted(negatives, key=lambda j: -scores[i, j])[:3]
        np.testing.assert_array_equal(got[i], expected)


def test_mine_hard_negatives_never_returns_the_positive(rng):
    for trial in range(20):
        size = int(rng.integers(2, 9))
        scores = rng.normal(size=(size, size)).astype(np.float32)
        # Make the positive the best score in its row: it must still be excluded.
        scores[np.arange(size), np.arange(size)] = 10.0
        got = np.asarray(scoring.mine_hard_negatives(scores, size - 1))
        assert not np.any(got == np.arange(size)[:, None]), (trial, got)
        # Without a mask all off-diagonal images are negatives: each appears exactly once.
        assert all(len(set(row)) == size - 1 for row in got)


def test_mine_hard_negatives_short_rows_and_validity():
    # Items 0..2 share one image: row 0 has one negative (item 3), rows of item 3 have three.
    image_of_item = np.array([5, 5, 5, 6])
    mask = same_image_mask(image_of_item)
    scores = np.arange(16, dtype=np.float32).reshape(4, 4)
    got = np.asarray(scoring.mine_hard_negatives(scores, 2, mask))
    np.testing.assert_array_equal(got[0], [3, 3])  # padded by repeating the hardest negative
    np.testing.assert_array_equal(got[3], [2, 1])
    valid = ~np.take_along_axis(mask, got, axis=1)
    assert valid.all()
    # All positives: no negative exists; the row index itself is still never returned.
    everything_same = same_image_mask([1, 1, 1])
    got = np.asarray(scoring.mine_hard_negatives(np.zeros((3, 3)), 2, everything_same))
    assert not np.any(got == np.arange(3)[:, None])
    assert not np.any(~np.take_along_axis(everything_same, got, axis=1))
    with pytest.raises(ValueError, match="num_negatives"):
        scoring.mine_hard_negatives(np.zeros((3, 3)), 3)


def test_listwise_ce_matches_reference(rng):
    joint = rng.normal(size=(5, 4)).astype(np.float32)
    temperature = 0.3
    expected = 0.0
    for row in joint.astype(np.float64) / temperature:
        expected += np.log(np.sum(np.exp(row))) - row[0]
    got = float(jax.jit(scoring.listwise_ce)(joint, temperature))
    np.testing.assert_allclose(got, expected / 5, atol=ATOL)
    # Masking a negative slot equals dropping that column.
    negatives_mask = np.ones((5, 3), bool)
    negatives_mask[:, 1] = False
    got = float(scoring.listwise_ce(joint, temperature, negatives_mask))
    dropped = float(scoring.listwise_ce(joint[:, [0, 1, 3]], temperature))
    np.testing.assert_allclose(got, dropped, atol=ATOL)
    with pytest.raises(ValueError, match="negatives_mask"):
        scoring.listwise_ce(joint, temperature, negatives_mask[:, :2])


def test_loss_gradients_are_finite(rng):
    scores = jnp.asarray(rng.normal(size=(6, 6)).astype(np.float32))
    mask = jnp.asarray(same_image_mask([0, 0, 1, 2, 3, 3]))
    gradient = np.asarray(jax.grad(scoring.info_nce)(scores, 0.05, mask))
    assert np.all(np.isfinite(gradient))
    # Masked-out duplicates receive no gradient; ordinary negatives do.
    assert gradient[0, 1] == 0.0 and gradient[1, 0] == 0.0
    assert gradient[0, 2] > 0.0

    joint = jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))
    negatives_mask = jnp.asarray(rng.random((6, 3)) > 0.5)
    gradient = np.asarray(jax.grad(scoring.listwise_ce)(joint, 0.05, negatives_mask))
    assert np.all(np.isfinite(gradient))
    assert np.all(gradient[:, 0] <= 0.0)
    assert np.all(gradient[:, 1:][~np.asarray(negatives_mask)] == 0.0)


def test_bad_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        scoring.info_nce(jnp.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        scoring.listwise_ce(jnp.zeros((2, 3)), -1.0)
