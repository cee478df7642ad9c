"""Counting inside the joint stage: how many regions match each word, scored against what the
caption says of that word's number.

For one (text, image) pair with tower concepts c_i (T words) and c_a (R regions):

    s_ia    = <c_i, c_a>                                 stop-gradient: MaxSim's own alignment
    n_ik    = Σ_a σ((s_ia - max_b s_ib + m_k) / w)       [K] soft counts of the regions that
                                                         match word i nearly as well as its best
                                                         region, at K margins m_k
    f_ik    = exp(-(n_ik - c)² / 2σ²), c = 1..5          [K, 5] soft one-hot of each count
    score   = Σ_{real words i} <Out(h_i), f_i>           Out: [H] -> [K·5], starts at zero

A softmax alignment (MaxSim, the relation head) cannot count: "two little dogs" and "a little
dog" align "dogs" with the same best region. The soft counts are sums, not averages, so the
joint score can tell one match from two. Like the relation head it needs only the joint stage's
inputs (text tower outputs, stored image activations), so precompute = online still holds and
the INDEX format does not change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lateint.config import ModelConfig
from lateint.layers import take_rows

MARGINS = (0.05, 0.1, 0.2, 0.3)  # m_k: how much worse than the best match still counts
WIDTH = 0.02  # w: sharpness of the membership sigmoid
COUNTS = (1.0, 2.0, 3.0, 4.0, 5.0)  # c: the numbers the soft one-hot resolves
SPREAD = 0.35  # σ of the soft one-hot


class CountHead(nnx.Module):
    """The per-word counting term of the joint score (module docstring)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.claim = nnx.Linear(
            config.hidden_size,
            len(MARGINS) * len(COUNTS),
            kernel_init=nnx.initializers.zeros,
            rngs=rngs,
        )

    @staticmethod
    def soft_counts(
        text_concepts: jax.Array, image_concepts: jax.Array, image_mask: jax.Array
    ) -> jax.Array:
        """text_concepts [P, T, C], image_concepts [P, R, C], image_mask [P, R] bool ->
        features f [P, T, K·5] (module docstring)."""
        similarity = jax.lax.stop_gradient(
            jnp.einsum("ptc,prc->ptr", text_concepts, image_concepts)
        )  # [P, T, R]
        real = image_mask[:, None, :]
        best = jnp.max(jnp.where(real, similarity, -2.0), axis=-1, keepdims=True)  # [P, T, 1]
        margins = jnp.asarray(MARGINS, jnp.float32)
        member = jax.nn.sigmoid((similarity[..., None] - best[..., None] + margins) / WIDTH)
        counts = jnp.sum(jnp.where(real[..., None], member, 0.0), axis=2)  # [P, T, K]
        centres = jnp.asarray(COUNTS, jnp.float32)
        onehot = jnp.exp(-((counts[..., None] - centres) ** 2) / (2 * SPREAD**2))  # [P, T, K, 5]
        return onehot.reshape(*onehot.shape[:2], -1)

    def claims(self, text: jax.Array) -> jax.Array:
        """text: [U, T, H] text tower outputs -> what each word says of its count [U, T, K·5]."""
        return self.claim(text.astype(jnp.float32))

    def __call__(
        self,
        claims: jax.Array,
        text_mask: jax.Array,
        text_concepts: jax.Array,
        image_mask: jax.Array,
        image_concepts: jax.Array,
        text_index: jax.Array | None = None,
    ) -> jax.Array:
        """claims: [U, T, K·5] (`claims` of U texts); text_index: [P] int, pair p's text (None:
        U = P, aligned); text_mask: [P, T] bool, text_concepts: [P, T, C]; image_mask: [P, R]
        bool, image_concepts: [P, R, C]. Returns [P] float32."""
        features = self.soft_counts(text_concepts, image_concepts, image_mask)
        per_word = jnp.sum(take_rows(claims, text_index) * features, axis=-1)  # [P, T]
        words = text_mask.at[:, 0].set(False)  # no [CLS]
        return jnp.sum(jnp.where(words, per_word, 0.0), axis=1)
