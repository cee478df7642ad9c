"""Sprite sources: the checked loaders, the restricted unpickler and the split partition."""

import gzip
import os
import pickle

import numpy as np
import pytest

from lateint.data import sprites
from lateint.data.restricted_pickle import load_restricted


def test_sources_load_with_the_documented_shapes():
    expected = {
        "mnist": (5000, 28, 28),
        "sklearn_digits": (1797, 8, 8),
        "animal_mnist": (10000, 28, 28),
    }
    for source, shape in expected.items():
        images, labels, names = sprites.load_source(source)
        assert images.shape == shape and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() == 1.0
        assert sorted(np.unique(labels)) == list(range(10)) and len(names) == 10


def test_animal_pickle_holds_plain_arrays():
    data_path, label_path = sprites.animal_data_paths()
    images, labels = load_restricted(data_path), load_restricted(label_path)
    assert images.dtype == np.uint8 and images.shape == (10000, 28, 28)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * 10


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_and_object_arrays(tmp_path):
    evil = str(tmp_path / "evil.gz")
    with gzip.open(evil, "wb") as file:
        pickle.dump([np.zeros(3), _Evil()], file)
    with pytest.raises(
        pickle.UnpicklingError,
        match=r"evil.gz: refusing to load global "
        r"(posix|os).system; allowed: numpy",
    ):
        load_restricted(evil)
    objects = str(tmp_path / "objects.pkl")
    with open(objects, "wb") as file:
        pickle.dump(np.array([1, "two"], dtype=object), file)
    with pytest.raises(pickle.UnpicklingError, match="object-dtype array"):
        load_restricted(objects)
    plain = str(tmp_path / "plain.pkl")
    with open(plain, "wb") as file:
        pickle.dump({"sizes": [(1, 2)], "array": np.arange(4, dtype=np.int16)}, file)
    loaded = load_restricted(plain)
    assert loaded["sizes"] == [(1, 2)] and loaded["array"].dtype == np.int16
    with pytest.raises(pickle.UnpicklingError, match="allowed: none"):
        load_restricted(plain, allow_arrays=False)


def test_crop_to_ink():
    image = np.zeros((10, 10), np.float32)
    image[2:5, 3:9] = 1.0
    image[0, 0] = 0.05  # faint noise below INK_THRESHOLD is background
    assert sprites.crop_to_ink(image).shape == (3, 6)
    assert sprites.crop_to_ink(np.zeros((4, 4), np.float32)) is None


def test_partition_is_disjoint_complete_and_fixed():
    bank = sprites.load_sprite_bank()
    seen = {}
    for split in sprites.SPLITS:
        for class_name in sprites.CLASS_NAMES:
            for sprite in bank.pool(split, class_name):
                key = (sprite.source, sprite.instance)
                assert key not in seen, (key, seen.get(key), split)
                seen[key] = split
    assert len(seen) == 5000 + 1797 + 10000  # every instance has ink and one split
    counts = {
        split: sum(1 for value in seen.values() if value == split) for split in sprites.SPLITS
    }
    assert counts["train"] > 6 * counts["dev"] and abs(counts["dev"] - counts["test"]) < 20
    # A bank rebuilt from the same sources assigns every instance to the same split.
    rebuilt = sprites.SpriteBank(
        {source: sprites.load_source(source) for source in sprites.SOURCES}
    )
    assert [s.instance for s in rebuilt.pool("test", "zebra")] == [
        s.instance for s in bank.pool("test", "zebra")
    ]
