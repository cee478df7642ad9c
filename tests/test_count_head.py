"""The count head in the joint score: both contracts, zero at init, and soft counts that tell
one matching region from two and ignore padding."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_pairs, separate_and_fused_scores, tiny_config
from lateint.config import LATER_FIELDS, ModelConfig
from lateint.count_head import COUNTS, MARGINS, CountHead
from lateint.fingerprint import model_fingerprint
from lateint.model import SplitEncoder


def _count_model(split: int, trained_claims: bool = True) -> SplitEncoder:
    config = tiny_config(split_layer=split, joint_residual=2.0, count_head=True)
    model = SplitEncoder(config, nnx.Rngs(split))
    if trained_claims:  # the claim layer starts at zero; randomise it so the head matters
        kernel = model.count.claim.kernel
        kernel[...] = jax.random.normal(jax.random.key(3), kernel[...].shape)
    return model


@pytest.mark.parametrize("split", [1, 3])
def test_count_head_keeps_precompute_equal_to_fused(split, rng):
    model = _count_model(split)
    inputs = random_pairs(model.config, rng, pairs=4)
    separate, fused = separate_and_fused_scores(model, inputs)
    np.testing.assert_allclose(separate, fused, atol=1e-4, rtol=1e-5)


def test_untrained_count_head_adds_nothing(rng):
    with_head = _count_model(2, trained_claims=False)
    without = SplitEncoder(with_head.config.replace(count_head=False), nnx.Rngs(2))
    inputs = random_pairs(with_head.config, rng, pairs=3)
    np.testing.assert_allclose(
        separate_and_fused_scores(with_head, inputs)[0],
        separate_and_fused_scores(without, inputs)[0],
        atol=1e-6,
    )


def _counts(word, regions, mask):
    """The soft count at the smallest margin of one word against regions [R, C]."""
    features = CountHead.soft_counts(
        jnp.asarray(word, jnp.float32)[None, None],
        jnp.asarray(regions, jnp.float32)[None],
        jnp.asarray(mask)[None],
    ).reshape(len(MARGINS), len(COUNTS))
    return np.asarray(features[0])  # [5]: soft one-hot over COUNTS


def test_soft_counts_tell_one_match_from_two_and_skip_padding():
    dog, cat = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    two_dogs = _counts(dog, [dog, dog, cat], [True, True, True])
    one_dog = _counts(dog, [dog, cat, cat], [True, True, True])
    padded = _counts(dog, [dog, cat, dog], [True, True, False])  # the second dog is padding
    assert int(np.argmax(two_dogs)) == COUNTS.index(2.0) and two_dogs.max() > 0.9
    assert int(np.argmax(one_dog)) == COUNTS.index(1.0) and one_dog.max() > 0.9
    np.testing.assert_allclose(padded, one_dog, atol=1e-6)


def test_models_from_before_the_count_head_keep_their_fingerprint():
    """A checkpoint trained before ModelConfig had count_head (or relation_width) recorded a
    fingerprint over a config without that field: at its default the field must stay out of the
    hash, or every earlier model and INDEX would be refused."""
    defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    for name, default in LATER_FIELDS.items():
        assert defaults[name] == default, name
    model = SplitEncoder(tiny_config(split_layer=1), nnx.Rngs(0))
    before = {k: v for k, v in model.config.to_dict().items() if k not in LATER_FIELDS}
    assert model.config.fingerprint_json() == json.dumps(before, sort_keys=True)
    fingerprint = model_fingerprint(model)
    counting = SplitEncoder(tiny_config(split_layer=1, count_head=True), nnx.Rngs(0))
    assert '"count_head": true' in counting.config.fingerprint_json()
    assert model_fingerprint(counting) != fingerprint
    narrow = tiny_config(split_layer=1, relation_head=True, relation_width=32)
    assert '"relation_width": 32' in narrow.fingerprint_json()
