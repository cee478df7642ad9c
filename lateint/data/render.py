"""Pixels of a scene: sprite scaling, the canvas, region crops as features, the PNG.

Canvas: [S, S] float32 in [0, 1], a faint smooth texture (so background regions are not all
zeros) with each sprite drawn by taking the brighter pixel.
"""

import numpy as np
from PIL import Image


def scale_sprite(pixels: np.ndarray, longest: int) -> np.ndarray:
    """[h, w] -> [h', w'] with max(h', w') == longest, aspect kept, both >= 2 pixels."""
    height, width = pixels.shape
    factor = longest / max(height, width)
    new_height = max(2, int(round(height * factor)))
    new_width = max(2, int(round(width * factor)))
    image = Image.fromarray(np.ascontiguousarray(pixels, np.float32))
    scaled = np.asarray(image.resize((new_width, new_height), Image.Resampling.BILINEAR))
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size] float32: smooth low-contrast texture, peak brightness 0.05..0.25."""
    coarse = rng.random((6, 6)).astype(np.float32) * float(rng.uniform(0.05, 0.25))
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0).astype(np.float32)


def compose(canvas: np.ndarray, sprites: list, boxes: list, brightness: list) -> np.ndarray:
    """Draws sprites [h, w] at pixel boxes (x1, y1, x2, y2) onto a copy of canvas [S, S]."""
    canvas = canvas.copy()
    for pixels, box, level in zip(sprites, boxes, brightness):
        x1, y1, x2, y2 = box
        if pixels.shape != (y2 - y1, x2 - x1):
            raise ValueError(f"compose: sprite shape {pixels.shape} does not fit box {box}")
        region = canvas[y1:y2, x1:x2]
        np.maximum(region, pixels * level, out=region)
    return canvas


def crop_features(canvas: np.ndarray, boxes: list, side: int) -> np.ndarray:
    """Region features [n, side * side] float32: each box's crop resized to side x side."""
    image = Image.fromarray(np.ascontiguousarray(canvas, np.float32))
    features = np.empty((len(boxes), side * side), np.float32)
    for index, box in enumerate(boxes):
        crop = image.resize((side, side), Image.Resampling.BILINEAR, box=tuple(box))
        features[index] = np.asarray(crop).reshape(-1)
    return np.clip(features, 0.0, 1.0)


def save_png(canvas: np.ndarray, path: str) -> None:
    """Writes canvas [S, S] in [0, 1] as an 8-bit grayscale PNG."""
    pixels = np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)
