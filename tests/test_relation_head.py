"""The relation head in the joint score: both contracts, zero at init, it reads region geometry
back from the stored activations and binds a word pair to the region pair the words name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_pairs, separate_and_fused_scores, tiny_config
from lateint.evaluation.joint import JointScorer
from lateint.inference import Inference
from lateint.model import SplitEncoder
from lateint.relation_head import RelationHead


def _relation_model(split: int, trained_claims: bool = True) -> SplitEncoder:
    config = tiny_config(
        split_layer=split,
        geometry_bias=True,
        box_embedding="mlp",
        joint_residual=2.0,
        relation_head=True,
    )
    model = SplitEncoder(config, nnx.Rngs(split))
    if trained_claims:  # the claim layer starts at zero; randomise it so the head matters
        kernel = model.relation.claim.kernel
        kernel[...] = jax.random.normal(jax.random.key(7), kernel[...].shape)
    return model


@pytest.mark.parametrize("split", [1, 2, 3])
def test_relation_head_keeps_precompute_equal_to_fused(split, rng):
    model = _relation_model(split)
    inputs = random_pairs(model.config, rng, pairs=4)
    separate, fused = separate_and_fused_scores(model, inputs)
    np.testing.assert_allclose(separate, fused, atol=1e-4, rtol=1e-5)


def test_untrained_relation_head_adds_nothing(rng):
    with_head = _relation_model(2, trained_claims=False)
    config = with_head.config.replace(relation_head=False)
    without = SplitEncoder(config, nnx.Rngs(2))
    inputs = random_pairs(config, rng, pairs=3)
    np.testing.assert_allclose(
        separate_and_fused_scores(with_head, inputs)[0],
        separate_and_fused_scores(without, inputs)[0],
        atol=1e-6,
    )


def test_relation_term_depends_on_geometry_and_ignores_padding(rng):
    model = _relation_model(2)
    head = model.relation
    pairs, length, regions, dim = 2, 7, 5, model.config.hidden_size
    text = jnp.asarray(rng.normal(size=(pairs, length, dim)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(pairs, regions, dim)), jnp.float32)
    text_mask = jnp.asarray(np.arange(length)[None] < np.array([[5], [7]]))
    image_mask = jnp.asarray(np.arange(regions)[None] < np.array([[4], [5]]))
    concepts_t = jnp.asarray(rng.normal(size=(pairs, length, 6)), jnp.float32)
    concepts_r = jnp.asarray(rng.normal(size=(pairs, regions, 6)), jnp.float32)
    base = np.asarray(head(head.claims(text), text_mask, concepts_t, image, image_mask, concepts_r))
    assert np.abs(base).max() > 1e-4
    # padding: a padded word's or region's content never reaches the score
    noisy_text = text.at[0, 5:].set(100.0)
    noisy_image = image.at[0, 4:].set(-50.0)
    padded = np.asarray(
        head(head.claims(noisy_text), text_mask, concepts_t, noisy_image, image_mask, concepts_r)
    )
    np.testing.assert_allclose(padded[0], base[0], rtol=1e-5, atol=1e-5)
    # geometry: other regions with the same concepts (another arrangement) score otherwise
    moved = np.asarray(
        head(
            head.claims(text),
            text_mask,
            concepts_t,
            image[:, ::-1],
            image_mask[:, ::-1],
            concepts_r,
        )
    )
    assert np.abs(moved[1] - base[1]) > 1e-5


def test_claims_see_the_mean_of_the_words_between_and_their_order(rng):
    """Against the definition, word pair by word pair (i != j): q_ij = Out(gelu(A h_i + B h_j + C h_0
    + mean of D h_k over i < k < j (or j < k < i; zero for neighbours) + order(j before i)))."""
    head = _relation_model(2).relation
    head.order[...] = jax.random.normal(jax.random.key(3), head.order[...].shape)
    text = jnp.asarray(rng.normal(size=(2, 6, head.subject.in_features)), jnp.float32)
    got = np.asarray(head.claims(text))  # [2, 6, 6, 12]
    between = np.asarray(head.between(text))
    for u in range(2):
        for i in range(6):
            for j in (j for j in range(6) if j != i):  # i = j: never a pair
                inside = list(range(min(i, j) + 1, max(i, j)))
                span = between[u, inside].mean(axis=0) if inside else 0.0
                mixed = (
                    head.subject(text[u, i])
                    + head.target(text[u, j])
                    + head.sentence(text[u, 0])
                    + span
                    + head.order[...][int(j < i)]
                )
                want = head.claim(jax.nn.gelu(mixed, approximate=False))
                np.testing.assert_allclose(got[u, i, j], want, rtol=1e-4, atol=1e-5)


def test_pairs_that_share_a_text_score_as_if_it_were_repeated(rng):
    """joint_score(text_index=) runs the text-only parts (concept tokens, relation and count
    claims) once per text: the scores equal those of the text rows repeated per pair."""
    config = tiny_config(
        geometry_bias=True,
        box_embedding="mlp",
        joint_residual=2.0,
        joint_alignment_bias=2.0,
        relation_head=True,
        count_head=True,
    )
    model = SplitEncoder(config, nnx.Rngs(4))
    for kernel in (model.relation.claim.kernel, model.count.claim.kernel):
        kernel[...] = jax.random.normal(jax.random.key(5), kernel[...].shape)
    token_ids, token_mask, features, boxes, region_mask = random_pairs(config, rng, pairs=3)
    text = model.encode_text(jnp.asarray(token_ids), jnp.asarray(token_mask))
    image = model.encode_image(features, boxes, jnp.asarray(region_mask))
    index = jnp.asarray([2, 0, 0, 1, 2, 2])
    images = jnp.asarray([0, 1, 2, 2, 1, 0])
    stored = model.compress(image.activations)
    shared = model.joint_score(
        text.activations, text.mask, stored[images], image.mask[images], text_index=index
    )
    repeated = model.joint_score(
        text.activations[index], text.mask[index], stored[images], image.mask[images]
    )
    np.testing.assert_allclose(shared, repeated, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(shared)).max() > 1e-3

    # The evaluation's cross-encoder path: one caption against every image, in padded batches.
    inference = Inference(model)
    text_np = jax.tree.map(np.asarray, text)
    lengths = np.full(3, token_ids.shape[1])
    joint = JointScorer(inference, text_np, lengths)
    images = np.asarray([0, 1, 2, 2, 1])
    stored_np, mask_np = np.asarray(stored)[images], np.asarray(image.mask)[images]
    for caption in range(3):
        np.testing.assert_allclose(
            joint.one_text(caption, stored_np, mask_np),
            joint.pairs(np.full(images.size, caption), stored_np, mask_np),
            rtol=1e-5,
            atol=1e-5,
        )
    np.testing.assert_allclose(
        inference.joint_scores_of_text(
            text_np.activations[1:2], text_np.mask[1:2], stored_np, mask_np, batch_size=2
        ),
        joint.pairs(np.full(images.size, 1), stored_np, mask_np),
        rtol=1e-5,
        atol=1e-5,
    )


def test_box_loss_trains_the_readout_to_recover_boxes(rng):
    """A few Adam steps on the box loss alone: the read-back corners approach the true ones,
    and the loss ignores padded regions."""
    import optax

    config = tiny_config(relation_head=True)
    head = RelationHead(config, nnx.Rngs(0))
    activations = jnp.asarray(rng.normal(size=(64, 4, config.hidden_size)), jnp.float32)
    boxes = jnp.asarray(rng.uniform(size=(64, 4, 5)), jnp.float32)
    mask = jnp.ones((64, 4), bool)
    graph, params = nnx.split(head, nnx.Param)
    tx = optax.adam(1e-2)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        def loss(params):
            return nnx.merge(graph, params).box_loss(activations, mask, boxes)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    first = None
    for _ in range(200):
        params, state, value = step(params, state)
        first = float(value) if first is None else first
    assert float(value) < 0.2 * first
    trained = nnx.merge(graph, params)
    padded_mask = mask.at[:, -1].set(False)
    garbage = boxes.at[:, -1].set(50.0)
    np.testing.assert_allclose(
        float(trained.box_loss(activations, padded_mask, garbage)),
        float(trained.box_loss(activations[:, :3], mask[:, :3], boxes[:, :3])),
        rtol=1e-5,
    )
