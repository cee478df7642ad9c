"""The region encoder's extra crops: every sprite of one split, drawn alone like a scene object."""

import numpy as np
import pytest

from lateint.data import sprite_renders, sprites
from lateint.data.layout import SceneConfig


@pytest.fixture(scope="module")
def bank():
    """A bank of 20 instances per class and source (16 / 2 / 2 per split)."""
    sources = {}
    for source in ("sklearn_digits", "animal_mnist"):
        images, labels, names = sprites.load_source(source)
        keep = np.concatenate([np.flatnonzero(labels == label)[:20] for label in range(10)])
        sources[source] = (images[keep], labels[keep], names)
    return sprites.SpriteBank(sources)


def test_every_sprite_of_the_split_is_drawn_copies_times(bank):
    config = SceneConfig()
    pixels, boxes, classes, sizes = sprite_renders.isolated_crops(bank, "train", config, copies=2)
    per_class = {name: len(bank.pool("train", name)) for name in sprites.CLASS_NAMES}
    assert len(classes) == 2 * sum(per_class.values())
    assert pixels.shape == (len(classes), 256) and boxes.shape == (len(classes), 5)
    counts = np.bincount(classes, minlength=len(sprites.CLASS_NAMES))
    assert counts.tolist() == [2 * per_class[name] for name in sprites.CLASS_NAMES]
    # Boxes are canvas-normalised, inside the canvas, with the benchmark's size ranges.
    longest = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 128
    small, large = sizes == 0, sizes == 1
    assert small.any() and large.any()
    assert np.all((longest[small] >= 12 - 1e-4) & (longest[small] <= 20 + 1e-4))
    assert np.all((longest[large] >= 30 - 1e-4) & (longest[large] <= 40 + 1e-4))
    assert np.all(boxes[:, :4] >= 0) and np.all(boxes[:, :4] <= 1)
    np.testing.assert_allclose(
        boxes[:, 4], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), atol=1e-6
    )
    # The crop is the sprite's ink, brighter than the faint background.
    assert pixels.min() >= 0 and np.all(pixels.max(axis=1) > 0.5)


def test_deterministic_and_split_specific(bank):
    config = SceneConfig()
    first = sprite_renders.isolated_crops(bank, "train", config, copies=1)
    again = sprite_renders.isolated_crops(bank, "train", config, copies=1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    dev = sprite_renders.isolated_crops(bank, "dev", config, copies=1)
    assert len(dev[2]) == sum(len(bank.pool("dev", name)) for name in sprites.CLASS_NAMES)
    assert len(dev[2]) < len(first[2])
    assert len(sprite_renders.isolated_crops(bank, "train", config, copies=0)[2]) == 0


def test_only_the_split_s_own_sprites_are_drawn(bank, monkeypatch):
    drawn = []
    real_scale = sprite_renders.render.scale_sprite

    def spy(pixels, longest):
        drawn.append(pixels)
        return real_scale(pixels, longest)

    monkeypatch.setattr(sprite_renders.render, "scale_sprite", spy)
    sprite_renders.isolated_crops(bank, "train", SceneConfig(), copies=1)
    train = {
        id(sprite.pixels) for name in sprites.CLASS_NAMES for sprite in bank.pool("train", name)
    }
    assert drawn and all(id(pixels) in train for pixels in drawn)
    assert len({id(pixels) for pixels in drawn}) == len(train)


def test_bad_arguments_are_refused(bank):
    with pytest.raises(ValueError, match="copies: expected >= 0"):
        sprite_renders.isolated_crops(bank, "train", SceneConfig(), copies=-1)
    with pytest.raises(ValueError, match="split: expected one of"):
        sprite_renders.isolated_crops(bank, "val", SceneConfig(), copies=1)
