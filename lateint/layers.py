"""BERT building blocks in Flax NNX: post-LN transformer layer and the two embedding modules.

Parameter layout mirrors HuggingFace BERT so `lateint.pretrained` can copy tensors one to one
(torch Linear weights [out, in] become NNX kernels [in, out]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lateint.config import ModelConfig

_INIT = nnx.initializers.normal(stddev=0.02)


def dense(in_features: int, out_features: int, config: ModelConfig, rngs: nnx.Rngs):
    return nnx.Linear(
        in_features, out_features, kernel_init=_INIT, dtype=config.compute_dtype, rngs=rngs
    )


def layer_norm(config: ModelConfig, rngs: nnx.Rngs):
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)


def take_rows(array: jax.Array, index: jax.Array | None) -> jax.Array:
    """array [U, ...] -> its rows `index` [P, ...]; the array itself when index is None."""
    return array if index is None else jnp.take(array, index, axis=0)


def attention_bias(attention_mask: jax.Array, dtype) -> jax.Array:
    """Additive bias from a boolean mask.

    attention_mask: [B, S_k] (key padding) or [B, S_q, S_k] bool, True = may attend.
    Returns [B, 1, 1, S_k] or [B, 1, S_q, S_k] with 0 where allowed and the dtype's minimum
    elsewhere, so masked keys get exactly zero weight after the softmax.
    """
    if attention_mask.ndim == 2:
        attention_mask = attention_mask[:, None, None, :]
    elif attention_mask.ndim == 3:
        attention_mask = attention_mask[:, None, :, :]
    else:
        raise ValueError(f"attention_mask must be [B,S] or [B,S,S], got {attention_mask.shape}")
    return jnp.where(attention_mask, 0.0, jnp.finfo(dtype).min).astype(dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with BERT's query/key/value/output projections."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.num_heads = config.num_heads
        self.query = dense(hidden, hidden, config, rngs)
        self.key = dense(hidden, hidden, config, rngs)
        self.value = dense(hidden, hidden, config, rngs)
        self.output = dense(hidden, hidden, config, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x: [B, S, H]; bias: [B, 1, 1|S, S] additive. Returns [B, S, H]."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.num_heads

        def heads(y):  # [B, S, H] -> [B, heads, S, head_dim]
            return y.reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32) + bias.astype(jnp.float32), axis=-1)
        context = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
        context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        return self.output(context)


class TransformerLayer(nnx.Module):
    """One post-LN BERT layer: LN(x + Attn(x)), then LN(h + MLP(h)) with exact (erf) GELU."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs)
        self.attention_norm = layer_norm(config, rngs)
        self.intermediate = dense(config.hidden_size, config.mlp_dim, config, rngs)
        self.mlp_output = dense(config.mlp_dim, config.hidden_size, config, rngs)
        self.output_norm = layer_norm(config, rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x: [B, S, H] float32; bias from `attention_bias`. Returns [B, S, H] float32."""
        h = self.attention_norm(x + self.attention(x, bias).astype(x.dtype))
        mlp = self.mlp_output(jax.nn.gelu(self.intermediate(h), approximate=False))
        return self.output_norm(h + mlp.astype(h.dtype))


class TextEmbeddings(nnx.Module):
    """Word + learned position + token-type embeddings, then LayerNorm (BERT)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.word = nnx.Embed(config.vocab_size, hidden, embedding_init=_INIT, rngs=rngs)
        self.position = nnx.Embed(
            config.max_position_embeddings, hidden, embedding_init=_INIT, rngs=rngs
        )
        self.token_type = nnx.Embed(config.type_vocab_size, hidden, embedding_init=_INIT, rngs=rngs)
        self.norm = layer_norm(config, rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        """token_ids: [B, T] int32. Returns [B, T, H] float32 (token type 0 everywhere)."""
        positions = jnp.arange(token_ids.shape[1])[None, :]
        x = (
            self.word(token_ids)
            + self.position(positions)
            + self.token_type(jnp.zeros_like(token_ids))
        )
        return self.norm(x)


def box_features(boxes: jax.Array) -> jax.Array:
    """boxes [..., 5] (x1, y1, x2, y2, area) -> [..., 9]: the box, its centre and its size."""
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return jnp.concatenate(
        [boxes, jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)], axis=-1
    )


class BoxMLP(nnx.Module):
    """Box geometry -> [.., H]: 2-layer GELU MLP over `box_features` (LeCun init, so geometry
    enters at the scale of the feature projection instead of ~1/6 of it)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.hidden = nnx.Linear(config.box_dim + 4, hidden, dtype=config.compute_dtype, rngs=rngs)
        self.output = nnx.Linear(hidden, hidden, dtype=config.compute_dtype, rngs=rngs)

    def __call__(self, boxes: jax.Array) -> jax.Array:
        return self.output(jax.nn.gelu(self.hidden(box_features(boxes)), approximate=False))


class RegionEmbeddings(nnx.Module):
    """Region feature projection + box geometry embedding + a modality vector, then LayerNorm.

    There is no positional embedding: a region's place is its box, so the order of regions
    does not matter. `config.box_embedding`: "linear" (one projection) or "mlp" (BoxMLP).
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.feature = dense(config.region_feature_dim, hidden, config, rngs)
        self.box = (
            BoxMLP(config, rngs)
            if config.box_embedding == "mlp"
            else dense(config.box_dim, hidden, config, rngs)
        )
        self.modality = nnx.Param(_INIT(rngs.params(), (hidden,), jnp.float32))
        self.norm = layer_norm(config, rngs)

    def __call__(self, regions: jax.Array, boxes: jax.Array) -> jax.Array:
        """regions: [B, R, F]; boxes: [B, R, box_dim]. Returns [B, R, H] float32."""
        x = self.feature(regions).astype(jnp.float32) + self.box(boxes).astype(jnp.float32)
        return self.norm(x + self.modality[...])


class GeometryBias(nnx.Module):
    """Per-head attention bias from the relative geometry of every region pair.

    For query region q and key region k: the signed gaps between their edges (k.x1 - q.x2,
    q.x1 - k.x2, and likewise in y: positive exactly when k lies right of / left of / below /
    above q under the benchmark's strict relations), centre offsets and log size ratios, through
    a small MLP to one logit per head. Heads can so specialise on "what lies to my left" etc.
    The output layer starts at zero: an untrained bias changes nothing.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(8, 64, rngs=rngs)
        self.output = nnx.Linear(
            64, config.num_heads, kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(self, boxes: jax.Array) -> jax.Array:
        """boxes [B, R, 5] -> bias [B, heads, R, R] float32 (query axis, then key axis)."""
        b = box_features(boxes.astype(jnp.float32))
        scaled = pair_geometry(b[:, :, None, :], b[:, None, :, :])  # [B, R, R, 8]
        logits = self.output(jax.nn.gelu(self.hidden(scaled), approximate=False))
        return logits.transpose(0, 3, 1, 2)


def pair_geometry(query: jax.Array, key: jax.Array) -> jax.Array:
    """Relative geometry of box pairs from `box_features` [..., 9] (broadcasting) -> [..., 8]:
    signed edge gaps k.x1 - q.x2, q.x1 - k.x2, k.y1 - q.y2, q.y1 - k.y2 (positive exactly when
    k lies right of / left of / below / above q) and centre offsets, x4; log size ratios."""
    eps = 1e-3
    pair = jnp.stack(
        [
            key[..., 0] - query[..., 2],
            query[..., 0] - key[..., 2],
            key[..., 1] - query[..., 3],
            query[..., 1] - key[..., 3],
            key[..., 5] - query[..., 5],
            key[..., 6] - query[..., 6],
            jnp.log(jnp.maximum(key[..., 7], eps) / jnp.maximum(query[..., 7], eps)),
            jnp.log(jnp.maximum(key[..., 8], eps) / jnp.maximum(query[..., 8], eps)),
        ],
        axis=-1,
    )
    return pair * jnp.asarray([4.0] * 6 + [1.0] * 2, jnp.float32)
