"""The split encoder: per-modality towers (layers 0..l-1), joint layers (l..L-1), and heads.

Contract 1 (no cross links before l): `encode_image` never sees text and `encode_text` never
sees regions. Contract 2 (precompute = online): `joint_score` over separately computed tower
outputs equals `fused_score`, one forward over the concatenated sequence with block-diagonal
attention below l.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lateint import scoring
from lateint.config import ModelConfig
from lateint.count_head import CountHead
from lateint.layers import (
    GeometryBias,
    RegionEmbeddings,
    TextEmbeddings,
    TransformerLayer,
    attention_bias,
    dense,
    layer_norm,
    take_rows,
)
from lateint.relation_head import RelationHead


class TowerOutput(NamedTuple):
    """What one tower produces for a batch of B items of S tokens (words or regions)."""

    activations: jax.Array  # [B, S, H] float32, output of layer l-1 (input of the joint layers)
    mask: jax.Array  # [B, S] bool, True for real tokens/regions
    concepts: jax.Array  # [B, S, C] float32, L2-normalised, zero where mask is False
    global_vector: jax.Array  # [B, C] float32, L2-normalised


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: [B, S, H], mask: [B, S] -> [B, H] mean over the masked positions (0 if none)."""
    weights = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class ConceptHead(nnx.Module):
    """Per-token concept vectors (TERAN) and a pooled global vector (TERN), both L2-normalised."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.token_projection = dense(config.hidden_size, config.concept_dim, config, rngs)
        self.global_projection = dense(config.hidden_size, config.concept_dim, config, rngs)

    def tokens(self, activations: jax.Array, mask: jax.Array) -> jax.Array:
        """activations: [B, S, H], mask: [B, S]. Returns concepts [B, S, C], zero where masked."""
        concepts = _l2_normalize(self.token_projection(activations).astype(jnp.float32))
        return concepts * mask[..., None].astype(concepts.dtype)

    def __call__(self, activations: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """activations: [B, S, H], mask: [B, S]. Returns (concepts [B, S, C], global [B, C])."""
        concepts = self.tokens(activations, mask)
        pooled = self.global_projection(_masked_mean(activations, mask)).astype(jnp.float32)
        return concepts, _l2_normalize(pooled)


class Compressor(nnx.Module):
    """PreTTR's storage compressor: H -> e (stored) -> H with a LayerNorm."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.down = dense(config.hidden_size, config.compression_dim, config, rngs)
        self.up = dense(config.compression_dim, config.hidden_size, config, rngs)
        self.norm = layer_norm(config, rngs)

    def compress(self, x: jax.Array) -> jax.Array:
        """[B, R, H] -> [B, R, e] float32."""
        return self.down(x).astype(jnp.float32)

    def decompress(self, stored: jax.Array) -> jax.Array:
        """[B, R, e] -> [B, R, H] float32."""
        return self.norm(self.up(stored).astype(jnp.float32))


class ScoreHead(nnx.Module):
    """Relevance from the joint output: Linear([h_cls; h_cls * mean(h_regions)]) -> scalar.

    With no joint layers (l = L) this is a learned bilinear dual-encoder score; with joint
    layers both halves have attended to the other modality. With a MaxSim residual
    (config.joint_residual > 0) the kernel starts at zero: the head learns a correction.
    """

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        self.dense = dense(2 * config.hidden_size, 1, config, rngs)
        if config.joint_residual:
            self.dense.kernel[...] = jnp.zeros_like(self.dense.kernel[...])

    def __call__(
        self, text_out: jax.Array, image_out: jax.Array, image_mask: jax.Array
    ) -> jax.Array:
        """text_out: [P, T, H], image_out: [P, R, H], image_mask: [P, R]. Returns [P]."""
        cls = text_out[:, 0]
        image_pooled = _masked_mean(image_out, image_mask)
        features = jnp.concatenate([cls, cls * image_pooled], axis=-1)
        return self.dense(features)[:, 0].astype(jnp.float32)


class SplitEncoder(nnx.Module):
    """BERT split at `config.split_layer` into an image tower, a text tower and joint layers."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        split, total = config.split_layer, config.num_layers
        self.text_embeddings = TextEmbeddings(config, rngs)
        self.region_embeddings = RegionEmbeddings(config, rngs)
        self.text_layers = nnx.List([TransformerLayer(config, rngs) for _ in range(split)])
        self.image_layers = nnx.List(
            []
            if config.share_tower_weights
            else [TransformerLayer(config, rngs) for _ in range(split)]
        )
        self.joint_layers = nnx.List([TransformerLayer(config, rngs) for _ in range(total - split)])
        self.text_concepts = ConceptHead(config, rngs)
        self.image_concepts = ConceptHead(config, rngs)
        self.compressor = Compressor(config, rngs) if config.compression_dim else None
        self.score_head = ScoreHead(config, rngs)
        self.geometry = GeometryBias(config, rngs) if config.geometry_bias else None
        self.alignment_scale = (
            nnx.Param(jnp.full((config.num_heads,), config.joint_alignment_bias, jnp.float32))
            if config.joint_alignment_bias
            else None
        )
        self.relation = RelationHead(config, rngs) if config.relation_head else None
        self.count = CountHead(config, rngs) if config.count_head else None

    @property
    def image_tower_layers(self):
        return self.text_layers if self.config.share_tower_weights else self.image_layers

    # ---- towers (layers 0..l-1) -------------------------------------------------------------
    def encode_text(self, token_ids: jax.Array, token_mask: jax.Array) -> TowerOutput:
        """token_ids: [B, T] int32 (first token [CLS]), token_mask: [B, T] bool."""
        token_mask = token_mask.astype(bool)
        x = self.text_embeddings(token_ids)
        bias = attention_bias(token_mask, jnp.float32)
        for layer in self.text_layers:
            x = layer(x, bias)
        concepts, global_vector = self.text_concepts(x, token_mask)
        return TowerOutput(x, token_mask, concepts, global_vector)

    def encode_image(
        self, regions: jax.Array, boxes: jax.Array, region_mask: jax.Array
    ) -> TowerOutput:
        """regions: [B, R, F] float, boxes: [B, R, box_dim], region_mask: [B, R] bool."""
        region_mask = region_mask.astype(bool)
        x = self.region_embeddings(regions.astype(jnp.float32), boxes.astype(jnp.float32))
        bias = attention_bias(region_mask, jnp.float32)  # [B, 1, 1, R]
        if self.geometry is not None:
            bias = bias + self.geometry(boxes)  # [B, heads, R, R]
        for layer in self.image_tower_layers:
            x = layer(x, bias)
        concepts, global_vector = self.image_concepts(x, region_mask)
        return TowerOutput(x, region_mask, concepts, global_vector)

    # ---- storage --------------------------------------------------------------------------------
    def compress(self, image_activations: jax.Array) -> jax.Array:
        """[B, R, H] -> [B, R, H'] what the index stores (identity without a compressor)."""
        if self.compressor is None:
            return image_activations
        return self.compressor.compress(image_activations)

    def decompress(self, stored: jax.Array) -> jax.Array:
        """[B, R, H'] -> [B, R, H] the joint layers' image input."""
        if self.compressor is None:
            return stored.astype(jnp.float32)
        return self.compressor.decompress(stored.astype(jnp.float32))

    # ---- joint layers (l..L-1) ----------------------------------------------------------------
    def joint_score(
        self,
        text_activations: jax.Array,
        text_mask: jax.Array,
        stored_image: jax.Array,
        image_mask: jax.Array,
        text_index: jax.Array | None = None,
    ) -> jax.Array:
        """Scores P (text, image) pairs from tower outputs.

        text_activations: [U, T, H], text_mask: [U, T], stored_image: [P, R, H'] (as stored,
        i.e. after `compress`), image_mask: [P, R]; text_index: [P] int (pair p is text
        text_index[p] with image p), or None when U = P and the rows are aligned. What depends
        on the text alone (its concept tokens, the relation head's claims, the count head's
        claims) runs once per text, so scoring one query against K candidates does not repeat
        it K times. Returns [P] float32: the score head over the joint output, plus
        `joint_residual` x the pairs' text->image MaxSim of the tower concepts when the config
        asks for it (a skip connection around the joint layers), plus the relation head's
        pairwise term when `config.relation_head`, and the count head's per-word term when
        `config.count_head`.
        """
        num_text = text_activations.shape[1]
        text_mask, image_mask = text_mask.astype(bool), image_mask.astype(bool)
        pairs = functools.partial(take_rows, index=text_index)  # [U, ...] -> [P, ...]
        image = self.decompress(stored_image)
        pair_mask = pairs(text_mask)  # [P, T]
        x = jnp.concatenate([pairs(text_activations).astype(jnp.float32), image], axis=1)
        mask = jnp.concatenate([pair_mask, image_mask], axis=1)
        bias = attention_bias(mask, jnp.float32)  # [P, 1, 1, T+R]
        concepts = None
        if (
            self.config.joint_residual
            or self.alignment_scale is not None
            or self.relation is not None
            or self.count is not None
        ):
            concepts = (
                pairs(self.text_concepts.tokens(text_activations, text_mask)),  # [P, T, C]
                self.image_concepts.tokens(image, image_mask),
            )  # [P, R, C]
        if self.alignment_scale is not None:
            bias = bias + self._alignment_bias(*concepts)  # [P, h, T+R, T+R]
        for layer in self.joint_layers:
            x = layer(x, bias)
        score = self.score_head(x[:, :num_text], x[:, num_text:], image_mask)
        if self.config.joint_residual:
            score = score + self.config.joint_residual * scoring.maxsim_pairs(
                concepts[0], pair_mask, concepts[1], image_mask
            )
        if self.relation is not None:
            score = score + self.relation(
                self.relation.claims(text_activations),
                pair_mask,
                concepts[0],
                image,
                image_mask,
                concepts[1],
                text_index,
            )
        if self.count is not None:
            score = score + self.count(
                self.count.claims(text_activations),
                pair_mask,
                concepts[0],
                image_mask,
                concepts[1],
                text_index,
            )
        return score

    def _alignment_bias(self, text_concepts: jax.Array, image_concepts: jax.Array) -> jax.Array:
        """text_concepts [P, T, C], image_concepts [P, R, C] -> [P, heads, T+R, T+R]: per-head
        scale x concept cosine on the word->region and region->word blocks, 0 elsewhere."""
        num_text, num_regions = text_concepts.shape[1], image_concepts.shape[1]
        similarity = jnp.einsum("ptc,prc->ptr", text_concepts, image_concepts)  # [P, T, R]
        scaled = self.alignment_scale[...][None, :, None, None] * similarity[:, None]
        words_to_regions = jnp.pad(scaled, ((0, 0), (0, 0), (0, num_regions), (num_text, 0)))
        regions_to_words = jnp.pad(
            jnp.swapaxes(scaled, 2, 3), ((0, 0), (0, 0), (num_text, 0), (0, num_regions))
        )
        return words_to_regions + regions_to_words

    def fused_towers(
        self,
        token_ids: jax.Array,
        token_mask: jax.Array,
        regions: jax.Array,
        boxes: jax.Array,
        region_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """Layers 0..l-1 over the concatenated [text; regions] sequence of each pair.

        Attention is block-diagonal (each modality attends only to itself); with separate tower
        weights each position takes its own tower's output. token_ids: [P, T], token_mask:
        [P, T], regions: [P, R, F], boxes: [P, R, box_dim], region_mask: [P, R]. Returns
        (text activations [P, T, H], image activations [P, R, H]).
        """
        num_text = token_ids.shape[1]
        mask = jnp.concatenate([token_mask.astype(bool), region_mask.astype(bool)], axis=1)
        x = jnp.concatenate(
            [
                self.text_embeddings(token_ids),
                self.region_embeddings(regions.astype(jnp.float32), boxes.astype(jnp.float32)),
            ],
            axis=1,
        )  # [P, T+R, H]
        is_text = jnp.arange(x.shape[1]) < num_text  # [T+R]
        same_modality = is_text[:, None] == is_text[None, :]  # [T+R, T+R]
        block_bias = attention_bias(mask[:, None, :] & same_modality[None], jnp.float32)
        image_bias = block_bias  # [P, 1|h, S, S]
        if self.geometry is not None:  # the region block only, as in encode_image
            geometry = self.geometry(boxes)  # [P, h, R, R]
            image_bias = block_bias + jnp.pad(
                geometry, ((0, 0), (0, 0), (num_text, 0), (num_text, 0))
            )
        for index, text_layer in enumerate(self.text_layers):
            if self.config.share_tower_weights:
                x = text_layer(x, image_bias)
                continue
            text_out = text_layer(x, block_bias)
            image_out = self.image_layers[index](x, image_bias)
            x = jnp.where(is_text[None, :, None], text_out, image_out)
        return x[:, :num_text], x[:, num_text:]

    def fused_score(
        self,
        token_ids: jax.Array,
        token_mask: jax.Array,
        regions: jax.Array,
        boxes: jax.Array,
        region_mask: jax.Array,
    ) -> jax.Array:
        """One forward over [text; regions] per pair: the cross-encoder view of the same model.

        Shapes as `fused_towers`. Returns [P] float32, equal to `joint_score` over
        `encode_text`/`encode_image` outputs (contract 2).
        """
        text_part, image_part = self.fused_towers(
            token_ids, token_mask, regions, boxes, region_mask
        )
        return self.joint_score(text_part, token_mask, self.compress(image_part), region_mask)
