"""Relation-network scoring inside the joint stage: what a caption says about each pair of its
words, matched against the geometry of the region pairs those words name.

For one (text, image) pair with text tower outputs h_i (T words) and stored image activations
v_a (R regions):

    box_a   = BoxReadout(v_a)                          the region's box, read back from what the
                                                       INDEX stores (trained by a box loss)
    g_ab    = [pair_geometry(box_a, box_b); σ(gaps)]  [12] relative geometry of regions a, b
    α_ia    = softmax_a(<c_i, c_a> / τ)                word i's region, from the tower concepts
                                                       (stop-gradient: MaxSim's own alignment)
    q_ij    = Out(gelu(A h_i + B h_j + C h_0 + D mean(h_i<k<j) + order(i, j)))
                                                       [12] what the caption claims of words i, j
    E_ij    = Σ_ab α_ia α_jb g_ab                       [12] geometry of the regions i, j name
    score   = Σ_{i≠j, both real words} <q_ij, E_ij>

This is Relation Networks' pairwise g(o_a, o_b, question) with the question split per word pair,
so a relation word binds to the two objects it relates instead of being averaged into one
sentence vector. It needs only the joint stage's inputs (text activations + stored image
activations), so contract 2 (precompute = online) holds unchanged and the INDEX format does not
change. The output layer starts at zero: an untrained head adds nothing to the joint score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lateint.config import ModelConfig
from lateint.layers import box_features, pair_geometry, take_rows

GEOMETRY_DIM = 12


class BoxReadout(nnx.Module):
    """Stored region activation [.., H] -> its box [.., 5] (x1, y1, x2, y2, area)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(config.hidden_size, 64, rngs=rngs)
        self.output = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, activations: jax.Array) -> jax.Array:
        corners = self.output(
            jax.nn.gelu(self.hidden(activations.astype(jnp.float32)), approximate=False)
        )
        x1, y1, x2, y2 = (corners[..., k] for k in range(4))
        area = jnp.maximum(x2 - x1, 0.0) * jnp.maximum(y2 - y1, 0.0)
        return jnp.stack([x1, y1, x2, y2, area], axis=-1)


class RelationHead(nnx.Module):
    """The pairwise relational term of the joint score (module docstring)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        hidden, width = config.hidden_size, config.relation_width
        self.temperature = config.relation_temperature
        self.boxes = BoxReadout(config, rngs)
        self.subject = nnx.Linear(hidden, width, rngs=rngs)
        self.target = nnx.Linear(hidden, width, use_bias=False, rngs=rngs)
        self.sentence = nnx.Linear(hidden, width, use_bias=False, rngs=rngs)
        self.between = nnx.Linear(hidden, width, use_bias=False, rngs=rngs)
        self.order = nnx.Param(jax.random.normal(rngs.params(), (2, width)) * 0.02)
        self.claim = nnx.Linear(width, GEOMETRY_DIM, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def region_geometry(self, image: jax.Array) -> jax.Array:
        """image: [P, R, H] joint-stage region inputs -> g [P, R, R, 12]: `pair_geometry` of the
        read-back boxes (signed edge gaps, centre offsets, log size ratios) and a soft indicator
        of each of the four strict relations (sigmoid of the scaled gaps). Fixed features: the
        claim side learns against a geometry that means something from the first step."""
        boxes = box_features(jax.lax.stop_gradient(self.boxes(image)))  # [P, R, 9]
        pairs = pair_geometry(boxes[:, :, None, :], boxes[:, None, :, :])  # [P, R, R, 8]
        return jnp.concatenate([pairs, jax.nn.sigmoid(8.0 * pairs[..., :4])], axis=-1)

    def claims(self, text: jax.Array) -> jax.Array:
        """text: [U, T, H] text tower outputs -> q [U, T, T, 12] (subject axis, then target).

        q_ij sees word i, word j, the sentence ([CLS]), the mean of the words strictly between
        them (where a relation phrase sits: "left of", "on top of") and which of the two comes
        first, so "a sheep left of a zebra" and "a zebra left of a sheep" differ in every noun
        pair however little the tower has yet learned to contextualise."""
        text = text.astype(jnp.float32)
        length = text.shape[1]
        position = jnp.arange(length)
        before = (position[:, None] < position[None, :])[None, :, :, None]  # [1, T, T, 1]: i < j
        words = self.between(text)  # [U, T, W]
        inclusive = jnp.cumsum(words, axis=1)  # at k: the sum over words 0..k
        exclusive = jnp.pad(inclusive[:, :-1], ((0, 0), (1, 0), (0, 0)))  # over words 0..k-1
        # The words strictly between i and j: exclusive[max] - inclusive[min], by broadcasting
        # (a gather's gradient is a scatter-add, which on CPU cost more than the rest).
        between = jnp.where(
            before,
            exclusive[:, None, :, :] - inclusive[:, :, None, :],
            exclusive[:, :, None, :] - inclusive[:, None, :, :],
        )  # [U, T, T, W]
        count = jnp.abs(position[:, None] - position[None, :]) - 1
        span = between / jnp.maximum(count, 1).astype(jnp.float32)[None, :, :, None]
        order = jnp.where(before[0], self.order[...][0], self.order[...][1])  # [T, T, W]
        mixed = (
            self.subject(text)[:, :, None, :]
            + self.target(text)[:, None, :, :]
            + self.sentence(text[:, :1])[:, :, None, :]
            + span
            + order[None]
        )
        return self.claim(jax.nn.gelu(mixed, approximate=False))

    def __call__(
        self,
        claims: jax.Array,
        text_mask: jax.Array,
        text_concepts: jax.Array,
        image: jax.Array,
        image_mask: jax.Array,
        image_concepts: jax.Array,
        text_index: jax.Array | None = None,
    ) -> jax.Array:
        """claims: [U, T, T, 12] (`claims` of U texts); text_index: [P] int, pair p's text (None:
        U = P, aligned); text_mask: [P, T] bool, text_concepts: [P, T, C]; image: [P, R, H],
        image_mask: [P, R] bool, image_concepts: [P, R, C]. Returns [P] float32."""
        similarity = jnp.einsum("ptc,prc->ptr", text_concepts, image_concepts)
        logits = jnp.where(image_mask[:, None, :], similarity / self.temperature, -1e9)
        align = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))  # [P, T, R]
        geometry = self.region_geometry(image)  # [P, R, R, 12]
        towards = jnp.einsum("pia,pabd->pibd", align, geometry)  # [P, T, R, 12]
        expected = jnp.einsum("pjb,pibd->pijd", align, towards)  # [P, T, T, 12]
        words = text_mask.at[:, 0].set(False)  # no [CLS]
        length = text_mask.shape[1]
        pairs = (
            words[:, :, None] & words[:, None, :] & ~jnp.eye(length, dtype=bool)[None]
        )  # [P, T, T]
        per_pair = jnp.sum(take_rows(claims, text_index) * expected, axis=-1)  # [P, T, T]
        return jnp.sum(jnp.where(pairs, per_pair, 0.0), axis=(1, 2))

    def box_loss(self, image: jax.Array, image_mask: jax.Array, boxes: jax.Array) -> jax.Array:
        """Mean squared error of the read-back corners on real regions. image: [B, R, H],
        image_mask: [B, R], boxes: [B, R, 5] (the true boxes). Returns a scalar."""
        error = jnp.sum((self.boxes(image)[..., :4] - boxes[..., :4]) ** 2, axis=-1)
        mask = image_mask.astype(jnp.float32)
        return jnp.sum(error * mask) / jnp.maximum(jnp.sum(mask), 1.0)
