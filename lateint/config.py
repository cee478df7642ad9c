"""Model configuration of the split (PreTTR-style) vision-language encoder."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

# Fields added after the first released checkpoints, with the default at which the model is the one
# trained before the field existed (ModelConfig.fingerprint_json leaves them out at that value).
LATER_FIELDS: dict[str, Any] = {"count_head": False, "relation_width": 64}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the split encoder.

    `num_layers` (L) transformer layers in all; layers `< split_layer` (l) run per modality
    (image tower / text tower, no cross links), layers `>= split_layer` run jointly over
    `[text; regions]`. `split_layer == num_layers` is a pure dual encoder, `split_layer == 0` a
    full cross-encoder.
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_heads: int = 12
    mlp_dim: int = 1536
    num_layers: int = 6
    split_layer: int = 4
    region_feature_dim: int = 2048
    box_dim: int = 5
    max_text_length: int = 64
    max_regions: int = 36
    concept_dim: int = 256
    type_vocab_size: int = 2
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    # True: the image tower reuses the text tower's layers (one BERT, PreTTR); False: own copies.
    share_tower_weights: bool = False
    # > 0: stored image activations are compressed H -> compression_dim (PreTTR's compressor).
    compression_dim: int = 0
    # > 0: the joint score adds joint_residual x text->image MaxSim of the tower concepts (a skip
    # connection around the joint layers) and the score head starts at zero, so an untrained
    # reranker orders as MaxSim does and training learns the cross-attention correction.
    joint_residual: float = 0.0
    # Box geometry into the region embedding: "linear" (one projection of x1, y1, x2, y2, area)
    # or "mlp" (a 2-layer MLP over those plus centre and size, at the feature projection's scale).
    box_embedding: str = "linear"
    # True: the image tower's attention gets a learned per-head bias from the relative geometry
    # of each region pair (Relation-Networks style), so region activations encode what lies left
    # of / above / ... them before anything is stored. Offline only: the stored format is unchanged.
    geometry_bias: bool = False
    # > 0: the joint layers' attention between each word and each region gets a bias of a
    # learned per-head scale (initialised to this value) x the cosine of their tower concepts,
    # so from the first joint layer on a word attends to the regions MaxSim aligns it with (and
    # fetches their geometry) instead of having to discover the alignment from scratch.
    joint_alignment_bias: float = 0.0
    # True: the joint score adds a relation-network term (lateint.relation_head): per word pair,
    # what the caption claims of it, matched against the geometry of the region pair the two
    # words align with (boxes read back from the stored activations). relation_temperature:
    # softmax temperature of the word->region alignment. relation_width: the hidden width of
    # its per-word-pair claim MLP ([T, T, width] per text: most of the head's cost).
    relation_head: bool = False
    relation_temperature: float = 0.05
    relation_width: int = 64
    # True: the joint score adds a counting term (lateint.count_head): per word, soft counts of
    # the regions that match it nearly as well as its best region, scored against the word's
    # context ("two little dogs" vs "a little dog").
    count_head: bool = False
    # Computation dtype of matmuls ("float32" | "bfloat16"); parameters stay float32.
    dtype: str = "float32"

    def __post_init__(self):
        if not 0 <= self.split_layer <= self.num_layers:
            raise ValueError(
                f"split_layer must be in [0, num_layers={self.num_layers}], got {self.split_layer}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.max_text_length > self.max_position_embeddings:
            raise ValueError(
                f"max_text_length {self.max_text_length} exceeds max_position_embeddings "
                f"{self.max_position_embeddings}"
            )
        if self.compression_dim < 0 or self.compression_dim > self.hidden_size:
            raise ValueError(
                f"compression_dim must be in [0, hidden_size={self.hidden_size}], "
                f"got {self.compression_dim}"
            )
        if self.joint_alignment_bias < 0:
            raise ValueError(f"joint_alignment_bias must be >= 0, got {self.joint_alignment_bias}")
        if self.relation_temperature <= 0:
            raise ValueError(f"relation_temperature must be > 0, got {self.relation_temperature}")
        if self.joint_residual < 0:
            raise ValueError(f"joint_residual must be >= 0, got {self.joint_residual}")
        if self.box_embedding not in ("linear", "mlp"):
            raise ValueError(f"box_embedding must be 'linear' or 'mlp', got {self.box_embedding!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def stored_dim(self) -> int:
        """H': the last dim of stored image activations."""
        return self.compression_dim or self.hidden_size

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint_json(self) -> str:
        """to_json without the fields in LATER_FIELDS that hold their no-op default.

        A field added after models were trained must not change those models' fingerprints (their
        checkpoints and INDEXes would stop loading): at its default the model is the one trained
        before the field existed, so the field is left out of the hash.
        """
        values = self.to_dict()
        for name, default in LATER_FIELDS.items():
            if values.get(name) == default:
                del values[name]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)
