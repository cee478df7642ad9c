"""Contracts 1 and 2 of the split encoder, padding/order invariance, jit == eager."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_pairs, tiny_config
from lateint import scoring
from lateint.model import SplitEncoder

SPLITS = [0, 1, 2, 3]  # l in {0, 1, L-1, L} for L = 3


def _separate_score(model, token_ids, token_mask, regions, boxes, region_mask):
    text = model.encode_text(jnp.asarray(token_ids), jnp.asarray(token_mask))
    image = model.encode_image(jnp.asarray(regions), jnp.asarray(boxes), jnp.asarray(region_mask))
    return model.joint_score(
        text.activations, text.mask, model.compress(image.activations), image.mask
    )


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    "shared,compression,residual",
    [(False, 0, 0.0), (True, 0, 0.0), (False, 8, 0.0), (False, 8, 2.0)],
)
def test_precompute_equals_fused_forward(split, shared, compression, residual, rng):
    config = tiny_config(
        split_layer=split,
        share_tower_weights=shared,
        compression_dim=compression,
        joint_residual=residual,
    )
    model = SplitEncoder(config, nnx.Rngs(split))
    inputs = random_pairs(config, rng, pairs=4)
    separate = np.asarray(_separate_score(model, *inputs))
    fused = np.asarray(model.fused_score(*map(jnp.asarray, inputs)))
    assert np.isfinite(separate).all()
    np.testing.assert_allclose(separate, fused, atol=1e-5, rtol=0)
    assert np.std(separate) > 1e-4  # different pairs really get different scores


@pytest.mark.parametrize("shared", [False, True])
def test_no_cross_links_before_split(shared, rng):
    config = tiny_config(split_layer=2, share_tower_weights=shared)
    model = SplitEncoder(config)
    token_ids, token_mask, regions, boxes, region_mask = random_pairs(config, rng)
    other_ids, other_mask, other_regions, other_boxes, other_region_mask = random_pairs(
        config, np.random.default_rng(7)
    )
    image = model.encode_image(regions, boxes, region_mask)
    text = model.encode_text(token_ids, token_mask)
    # The towers take no argument of the other modality; routed through the fused forward,
    # a perturbed other side must not move this side's activations by a single bit.
    fused_a = model.fused_score(token_ids, token_mask, regions, boxes, region_mask)
    fused_b = model.fused_score(other_ids, other_mask, regions, boxes, region_mask)
    assert not np.allclose(fused_a, fused_b)  # the joint layers do see the text
    captured = {
        "a": model.fused_towers(token_ids, token_mask, regions, boxes, region_mask),
        "b": model.fused_towers(other_ids, other_mask, regions, boxes, region_mask),
        "c": model.fused_towers(
            token_ids, token_mask, other_regions, other_boxes, other_region_mask
        ),
    }
    # text changed -> the image half is bit-identical (and equals encode_image)
    np.testing.assert_array_equal(np.asarray(captured["a"][1]), np.asarray(captured["b"][1]))
    np.testing.assert_allclose(
        np.asarray(captured["a"][1]), np.asarray(image.activations), atol=1e-5
    )
    # regions changed -> the text half is bit-identical (and equals encode_text)
    np.testing.assert_array_equal(np.asarray(captured["a"][0]), np.asarray(captured["c"][0]))
    np.testing.assert_allclose(
        np.asarray(captured["a"][0]), np.asarray(text.activations), atol=1e-5
    )


def test_padding_and_region_order_do_not_change_scores(rng):
    config = tiny_config(split_layer=1)
    model = SplitEncoder(config)
    token_ids, token_mask, regions, boxes, region_mask = random_pairs(config, rng, pairs=3)
    base = np.asarray(_separate_score(model, token_ids, token_mask, regions, boxes, region_mask))
    # more padding on both sides, padded slots holding garbage
    pad_ids = np.pad(token_ids, ((0, 0), (0, 5)), constant_values=77)
    pad_mask = np.pad(token_mask, ((0, 0), (0, 5)))
    pad_regions = np.concatenate([regions, rng.normal(size=(3, 3, regions.shape[2]))], 1)
    pad_boxes = np.concatenate([boxes, rng.uniform(size=(3, 3, 5))], 1).astype(np.float32)
    pad_region_mask = np.pad(region_mask, ((0, 0), (0, 3)))
    garbage = np.where(region_mask[..., None], regions, 55.0).astype(np.float32)
    padded = _separate_score(
        model,
        np.where(pad_mask, pad_ids, 9),
        pad_mask,
        np.concatenate([garbage, pad_regions[:, 5:]], 1).astype(np.float32),
        pad_boxes,
        pad_region_mask,
    )
    np.testing.assert_allclose(np.asarray(padded), base, atol=1e-5)
    # permuting the regions (real ones among themselves, with their boxes and mask)
    order = rng.permutation(regions.shape[1])
    permuted = _separate_score(
        model, token_ids, token_mask, regions[:, order], boxes[:, order], region_mask[:, order]
    )
    np.testing.assert_allclose(np.asarray(permuted), base, atol=1e-5)


def test_jit_matches_eager(rng):
    config = tiny_config(split_layer=2, compression_dim=8)
    model = SplitEncoder(config)
    inputs = random_pairs(config, rng)
    graph, state = nnx.split(model)

    @jax.jit
    def fused(state, *arrays):
        return nnx.merge(graph, state).fused_score(*arrays)

    eager = np.asarray(model.fused_score(*map(jnp.asarray, inputs)))
    np.testing.assert_allclose(np.asarray(fused(state, *inputs)), eager, atol=1e-5)


def test_tower_outputs_are_normalised_and_masked(rng):
    config = tiny_config()
    model = SplitEncoder(config)
    _, _, regions, boxes, region_mask = random_pairs(config, rng)
    image = model.encode_image(regions, boxes, region_mask)
    norms = np.linalg.norm(np.asarray(image.concepts), axis=-1)
    np.testing.assert_allclose(norms[region_mask], 1.0, atol=1e-5)
    np.testing.assert_array_equal(norms[~region_mask], 0.0)
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(image.global_vector), axis=-1), 1.0, atol=1e-5
    )


def test_maxsim_residual_starts_as_maxsim_and_learns_a_correction(rng):
    """joint_residual > 0: an untrained joint score is exactly residual x MaxSim of the tower
    concepts (the head starts at zero), and the head still gets a gradient."""
    config = tiny_config(split_layer=1, joint_residual=3.0)
    model = SplitEncoder(config, nnx.Rngs(0))
    token_ids, token_mask, regions, boxes, region_mask = map(
        jnp.asarray, random_pairs(config, rng, pairs=4)
    )
    text = model.encode_text(token_ids, token_mask)
    image = model.encode_image(regions, boxes, region_mask)
    expected = 3.0 * scoring.maxsim_pairs(text.concepts, text.mask, image.concepts, image.mask)
    got = model.joint_score(text.activations, text.mask, image.activations, image.mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5, rtol=0)

    def head_output(head_model):
        return jnp.sum(
            head_model.joint_score(text.activations, text.mask, image.activations, image.mask) ** 2
        )

    grads = nnx.grad(head_output)(model)
    assert float(jnp.abs(grads.score_head.dense.kernel[...]).max()) > 0


def _geometry_model(split: int, shared: bool = False) -> SplitEncoder:
    """A model with the relative-geometry bias and the box MLP; its bias output layer (zero at
    init, so that an untrained bias changes nothing) is randomised to make the bias matter."""
    config = tiny_config(
        split_layer=split,
        share_tower_weights=shared,
        geometry_bias=True,
        box_embedding="mlp",
        joint_residual=2.0,
        joint_alignment_bias=3.0,
    )
    model = SplitEncoder(config, nnx.Rngs(split))
    kernel = model.geometry.output.kernel
    kernel[...] = jax.random.normal(jax.random.key(3), kernel[...].shape)
    return model


@pytest.mark.parametrize("split,shared", [(1, False), (2, False), (2, True), (3, False)])
def test_geometry_bias_keeps_both_contracts(split, shared, rng):
    model = _geometry_model(split, shared)
    inputs = random_pairs(model.config, rng, pairs=4)
    separate = np.asarray(_separate_score(model, *inputs))
    fused = np.asarray(model.fused_score(*map(jnp.asarray, inputs)))
    np.testing.assert_allclose(separate, fused, atol=1e-5, rtol=0)
    token_ids, token_mask, regions, boxes, region_mask = inputs
    text_a, image_a = model.fused_towers(token_ids, token_mask, regions, boxes, region_mask)
    text_b, image_b = model.fused_towers(
        token_ids[::-1], token_mask[::-1], regions, boxes, region_mask
    )
    np.testing.assert_array_equal(np.asarray(image_a), np.asarray(image_b))


def test_geometry_bias_sees_relative_positions_and_ignores_padding(rng):
    model = _geometry_model(2)
    token_ids, token_mask, regions, boxes, region_mask = random_pairs(model.config, rng, pairs=2)
    region_mask[:] = True
    bias = np.asarray(model.geometry(jnp.asarray(boxes)))
    assert bias.shape == (2, model.config.num_heads, boxes.shape[1], boxes.shape[1])
    assert np.abs(bias).max() > 1e-2
    # mirror every box left-right: the relative geometry changes, so do the activations ...
    mirrored = boxes.copy()
    mirrored[..., 0], mirrored[..., 2] = 1.0 - boxes[..., 2], 1.0 - boxes[..., 0]
    a = model.encode_image(regions, boxes, region_mask).activations
    b = model.encode_image(regions, mirrored, region_mask).activations
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    # ... while a padded region's box never reaches a real region
    region_mask[:, -1] = False
    moved = boxes.copy()
    moved[:, -1] = [0.0, 0.0, 1.0, 1.0, 1.0]
    c = model.encode_image(regions, boxes, region_mask).activations[:, :-1]
    d = model.encode_image(regions, moved, region_mask).activations[:, :-1]
    np.testing.assert_allclose(np.asarray(c), np.asarray(d), atol=1e-6)
