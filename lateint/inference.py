"""Jitted, fixed-shape batch inference over a SplitEncoder (shared by train, index and serve).

`jax.jit` over the `nnx.split` state with `nnx.merge` inside (NOTES.md: `nnx.jit` costs
17-56 ms a call here). Inputs are padded to fixed batch sizes so each function compiles once
per shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lateint.model import SplitEncoder, TowerOutput


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pads axis 0 of `array` with zeros up to `rows`."""
    missing = rows - array.shape[0]
    if missing < 0:
        raise ValueError(f"batch of {array.shape[0]} rows exceeds the fixed size {rows}")
    if missing == 0:
        return array
    return np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])


def batch_ranges(total: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, batch_size):
        yield start, min(start + batch_size, total)


class Inference:
    """Tower encoders and joint scoring of one model as compiled functions returning NumPy."""

    def __init__(self, model: SplitEncoder, batch_sharding: jax.sharding.Sharding | None = None):
        """batch_sharding: where each padded input batch is placed (e.g. split over a 'data'
        mesh axis); None keeps the default device."""
        self.model = model
        self.batch_sharding = batch_sharding
        self.config = model.config
        self.graph, self.state = nnx.split(model)
        graph = self.graph

        @jax.jit
        def encode_text(state, token_ids, token_mask):
            return nnx.merge(graph, state).encode_text(token_ids, token_mask)

        @jax.jit
        def encode_image(state, regions, boxes, region_mask):
            model = nnx.merge(graph, state)
            tower = model.encode_image(regions, boxes, region_mask)
            return tower, model.compress(tower.activations)

        @jax.jit
        def joint_pairs(state, text_activations, text_mask, stored, image_mask):
            return nnx.merge(graph, state).joint_score(
                text_activations, text_mask, stored, image_mask
            )

        @jax.jit
        def joint_one_text(state, text_activations, text_mask, stored, image_mask):
            return nnx.merge(graph, state).joint_score(
                text_activations,
                text_mask,
                stored,
                image_mask,
                text_index=jnp.zeros(stored.shape[0], jnp.int32),
            )

        self._encode_text = encode_text
        self._encode_image = encode_image
        self._joint = joint_pairs
        self._joint_one_text = joint_one_text

    def encode_text(
        self, token_ids: np.ndarray, token_mask: np.ndarray, batch_size: int | None = None
    ) -> TowerOutput:
        """token_ids/mask: [B, T]. Returns a TowerOutput of NumPy arrays [B, ...]."""
        return self._batched(self._encode_text, (token_ids, token_mask), batch_size)

    def encode_images(
        self,
        regions: np.ndarray,
        boxes: np.ndarray,
        region_mask: np.ndarray,
        batch_size: int | None = None,
    ) -> tuple[TowerOutput, np.ndarray]:
        """regions [B, R, F], boxes [B, R, 5], mask [B, R] -> (TowerOutput, stored [B, R, H'])."""
        return self._batched(self._encode_image, (regions, boxes, region_mask), batch_size)

    def joint_scores(
        self,
        text_activations: np.ndarray,
        text_mask: np.ndarray,
        stored: np.ndarray,
        image_mask: np.ndarray,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Aligned pairs: text [P, T, H], [P, T]; images stored [P, R, H'], [P, R] -> [P]."""
        return self._batched(
            self._joint, (text_activations, text_mask, stored, image_mask), batch_size
        )

    def joint_scores_of_text(
        self,
        text_activations: np.ndarray,
        text_mask: np.ndarray,
        stored: np.ndarray,
        image_mask: np.ndarray,
        batch_size: int = 256,
    ) -> np.ndarray:
        """One text against P images: text [1, T, H], [1, T]; images stored [P, R, H'], [P, R]
        -> [P]. Equal to `joint_scores` of the text repeated P times, but its text-only parts
        (SplitEncoder.joint_score's text_index) run once per batch instead of once per pair."""
        text = tuple(np.asarray(a) for a in (text_activations, text_mask))
        return self._batched(self._joint_one_text, (stored, image_mask), batch_size, text)

    def _batched(self, function, arrays, batch_size, fixed=()):
        """function(state, *fixed, *chunk) over row chunks of `arrays`, padded to batch_size;
        `fixed` arrays go whole to every call."""
        total = arrays[0].shape[0]
        batch_size = batch_size or total
        outputs = []
        for start, stop in batch_ranges(total, batch_size):
            chunk = [pad_rows(np.asarray(a[start:stop]), batch_size) for a in arrays]
            if self.batch_sharding is not None:
                chunk = jax.device_put(chunk, self.batch_sharding)
            rows = stop - start
            result = jax.tree.map(
                lambda x, rows=rows: np.asarray(x)[:rows], function(self.state, *fixed, *chunk)
            )
            outputs.append(result)
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
