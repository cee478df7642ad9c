"""Extra training crops for the region encoder: every sprite of one split, drawn alone.

A scenes corpus shows the encoder only the sprites its scenes happened to draw: 5,000 train
scenes (groups of two share their sprites) use about 8,000 of the train split's ~13,400
instances, and the encoder's accuracy on unseen (dev/test) instances is what limits how well
the towers recognise objects. `isolated_crops` draws each sprite of `split` `copies` times, at a
random size of the benchmark's small or large range, position and brightness, on the
benchmark's background texture, and crops its box exactly as the generator crops a scene's
object regions. Only `split`'s own pool is read, so crops of the train split never hold a
dev/test sprite (lateint.data.sprites partitions instances by split).

    pixels, boxes, classes, sizes = isolated_crops(bank, "train", SceneConfig(), copies=1)
    # pixels [n, side * side] float32, boxes [n, 5] (x1, y1, x2, y2, area; canvas-normalised),
    # classes [n] int32 (index into CLASS_NAMES), sizes [n] int32 (0 small, 1 large)

Deterministic: the same bank, split, config, copies and seed give identical arrays.
"""

from __future__ import annotations

import numpy as np

from lateint.data import render
from lateint.data.layout import SIZES, SceneConfig
from lateint.data.sprites import CLASS_NAMES, SPLITS, SpriteBank


def isolated_crops(
    bank: SpriteBank, split: str, config: SceneConfig, copies: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`copies` crops of each sprite of `split` (n = copies x the split's instances)."""
    if copies < 0:
        raise ValueError(f"copies: expected >= 0, got {copies}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), copies])
    canvas_size, side = config.canvas_size, config.feature_side
    pixels, boxes, classes, sizes = [], [], [], []
    for class_index, name in enumerate(CLASS_NAMES):
        for sprite in bank.pool(split, name):
            for _ in range(copies):
                size = int(rng.integers(len(SIZES)))
                low, high = config.small_range if SIZES[size] == "small" else config.large_range
                scaled = render.scale_sprite(sprite.pixels, int(rng.integers(low, high + 1)))
                height, width = scaled.shape
                x1 = int(rng.integers(0, canvas_size - width + 1))
                y1 = int(rng.integers(0, canvas_size - height + 1))
                box = (x1, y1, x1 + width, y1 + height)
                canvas = render.compose(
                    render.background(rng, canvas_size), [scaled], [box], [rng.uniform(0.75, 1.0)]
                )
                pixels.append(render.crop_features(canvas, [box], side)[0])
                boxes.append(
                    [value / canvas_size for value in box] + [width * height / canvas_size**2]
                )
                classes.append(class_index)
                sizes.append(size)
    return (
        np.asarray(pixels, np.float32).reshape(-1, side * side),
        np.asarray(boxes, np.float32).reshape(-1, 5),
        np.asarray(classes, np.int32),
        np.asarray(sizes, np.int32),
    )
