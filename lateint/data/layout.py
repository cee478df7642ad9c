"""Scene layout: which sprites, how large, where, and which extra (distractor) regions.

Coordinates are integer pixels on a square canvas, boxes (x1, y1, x2, y2) with exclusive ends,
y growing downwards. Spatial relations are strict: "a left of b" holds iff a's box ends at or
before the column where b's box starts (a.x2 <= b.x1); likewise right (a.x1 >= b.x2), above
(a.y2 <= b.y1) and below (a.y1 >= b.y2). Objects never overlap, so every pair of objects stands
in at least one relation; a diagonal pair stands in two.
"""

import dataclasses

import numpy as np

from lateint.data import sprites as sprites_lib

RELATIONS = ("left", "right", "above", "below")
SIZES = ("small", "large")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scenes benchmark (defaults give R = 8 regions of F = 256 features)."""

    canvas_size: int = 128
    feature_side: int = 16  # region crops are resized to side x side: F = side ** 2
    max_regions: int = 8  # R: objects + distractors never exceed it
    min_objects: int = 2
    max_objects: int = 5
    max_distractors: int = 3
    small_range: tuple = (12, 20)  # longer side in pixels of a "small" sprite
    large_range: tuple = (30, 40)  # ... of a "large" one; the gap keeps the two unambiguous
    max_large: int = 3  # at most this many large objects (2 when there are >= 4)
    repeat_probability: float = 0.4  # chance that a class appears 2-3 times (counting captions)
    animal_probability: float = 0.5  # chance that a class draw is an animal, not a digit
    group_size: int = 2  # scenes per group sharing the same objects
    min_gap: int = 2  # pixels kept free between objects

    @property
    def feature_dim(self) -> int:
        return self.feature_side**2

    def check(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects <= self.max_regions:
            raise ValueError(
                f"SceneConfig: expected 2 <= min_objects <= max_objects <= "
                f"max_regions, got {self.min_objects}, {self.max_objects}, "
                f"{self.max_regions}"
            )
        if self.max_objects > 9 or self.large_range[1] > self.canvas_size // 3:
            raise ValueError(
                f"SceneConfig: expected at most 9 objects and large sprites of at "
                f"most canvas_size // 3 = {self.canvas_size // 3} pixels (the grid "
                f"fallback needs them), got {self.max_objects} and "
                f"{self.large_range[1]}"
            )
        if self.small_range[1] >= self.large_range[0] or self.group_size < 1:
            raise ValueError(
                f"SceneConfig: expected small_range below large_range and "
                f"group_size >= 1, got {self.small_range}, {self.large_range}, "
                f"{self.group_size}"
            )


@dataclasses.dataclass
class ObjectSpec:
    """A sprite chosen for a group of scenes, at its scene size: pixels [h, w] in [0, 1]."""

    sprite: sprites_lib.Sprite
    size: str
    pixels: np.ndarray

    @property
    def class_name(self) -> str:
        return self.sprite.class_name


def relations(box_a, box_b) -> list:
    """The relations r with "a r b" for pixel boxes (x1, y1, x2, y2)."""
    found = []
    if box_a[2] <= box_b[0]:
        found.append("left")
    if box_a[0] >= box_b[2]:
        found.append("right")
    if box_a[3] <= box_b[1]:
        found.append("above")
    if box_a[1] >= box_b[3]:
        found.append("below")
    return found


def relation_signature(objects: list, boxes: list) -> frozenset:
    """What the captions can tell apart: {((class, size), relation, (class, size))}."""
    signature = set()
    for i, (object_a, box_a) in enumerate(zip(objects, boxes)):
        for j, (object_b, box_b) in enumerate(zip(objects, boxes)):
            if i != j:
                for relation in relations(box_a, box_b):
                    signature.add(
                        (
                            (object_a.class_name, object_a.size),
                            relation,
                            (object_b.class_name, object_b.size),
                        )
                    )
    return frozenset(signature)


def choose_classes(rng: np.random.Generator, config: SceneConfig) -> list:
    """2..max_objects class names with at least two distinct classes, some repeated."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    names = []
    while len(names) < count:
        pool = (
            sprites_lib.ANIMAL_NAMES
            if rng.random() < config.animal_probability
            else sprites_lib.DIGIT_NAMES
        )
        name = str(pool[rng.integers(len(pool))])
        if name in names:
            continue
        room = count - len(names)
        copies = 1
        if room >= 2 and rng.random() < config.repeat_probability and (names or room >= 3):
            copies = int(rng.integers(2, min(3, room - (0 if names else 1)) + 1))
        names.extend([name] * copies)
    return names


def choose_objects(
    bank: sprites_lib.SpriteBank, split: str, rng: np.random.Generator, config: SceneConfig, scale
) -> list:
    """Sprites (distinct instances), sizes and scaled pixels for one group of scenes.

    scale: callable (pixels [h, w], longest side) -> scaled pixels, from lateint.data.render.
    """
    names = choose_classes(rng, config)
    max_large = min(config.max_large, 2 if len(names) >= 4 else config.max_large)
    sizes = [SIZES[int(rng.integers(2))] for _ in names]
    for index in rng.permutation(len(names)):
        if sizes.count("large") <= max_large:
            break
        sizes[index] = "small"
    chosen = {}  # class name -> distinct instances, drawn once per class
    for name in dict.fromkeys(names):
        pool = bank.pool(split, name)
        picks = rng.choice(len(pool), size=names.count(name), replace=False)
        chosen[name] = [pool[int(pick)] for pick in picks]
    objects = []
    for name, size in zip(names, sizes):
        sprite = chosen[name].pop()
        low, high = config.small_range if size == "small" else config.large_range
        longest = int(rng.integers(low, high + 1))
        objects.append(ObjectSpec(sprite, size, scale(sprite.pixels, longest)))
    return objects


def _separated(box_a, box_b, gap: int) -> bool:
    return (
        box_a[2] + gap <= box_b[0]
        or box_b[2] + gap <= box_a[0]
        or box_a[3] + gap <= box_b[1]
        or box_b[3] + gap <= box_a[1]
    )


def place(
    shapes: list, rng: np.random.Generator, config: SceneConfig, tries: int = 60, restarts: int = 20
) -> list:
    """Non-overlapping pixel boxes for sprites of shapes [(h, w)], largest placed first.

    Rejection sampling; if that keeps failing, one sprite per cell of a 3 x 3 grid.
    """
    canvas = config.canvas_size
    order = sorted(range(len(shapes)), key=lambda index: -shapes[index][0] * shapes[index][1])
    for _ in range(restarts):
        boxes = [None] * len(shapes)
        for index in order:
            height, width = shapes[index]
            for _ in range(tries):
                x1 = int(rng.integers(0, canvas - width + 1))
                y1 = int(rng.integers(0, canvas - height + 1))
                box = (x1, y1, x1 + width, y1 + height)
                if all(other is None or _separated(box, other, config.min_gap) for other in boxes):
                    boxes[index] = box
                    break
            else:
                break
        else:
            return boxes
    cell = canvas // 3
    boxes = []
    for (height, width), cell_index in zip(shapes, rng.permutation(9)):
        row, column = divmod(int(cell_index), 3)
        x1 = column * cell + int(rng.integers(0, cell - width + 1))
        y1 = row * cell + int(rng.integers(0, cell - height + 1))
        boxes.append((x1, y1, x1 + width, y1 + height))
    return boxes


def _intersection(box_a, box_b) -> int:
    width = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    height = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    return max(width, 0) * max(height, 0)


def _area(box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def distractor_boxes(object_boxes: list, rng: np.random.Generator, config: SceneConfig) -> list:
    """Extra regions [(box, kind)], like a detector's extra proposals; kind is one of
    "background" (mostly empty canvas), "partial" (a shifted object box) or "union" (the box
    around two objects). 0..max_distractors of them, never more than R minus the objects."""
    canvas = config.canvas_size
    room = min(config.max_distractors, config.max_regions - len(object_boxes))
    wanted = int(rng.integers(0, room + 1))
    found = []
    for _ in range(wanted):
        kind = ("background", "partial", "union")[int(rng.integers(3))]
        if kind == "background":
            for _ in range(20):
                width, height = (int(value) for value in rng.integers(10, 37, size=2))
                x1 = int(rng.integers(0, canvas - width + 1))
                y1 = int(rng.integers(0, canvas - height + 1))
                box = (x1, y1, x1 + width, y1 + height)
                if all(_intersection(box, other) <= 0.1 * _area(box) for other in object_boxes):
                    found.append((box, kind))
                    break
        elif kind == "partial":
            target = object_boxes[int(rng.integers(len(object_boxes)))]
            width, height = target[2] - target[0], target[3] - target[1]
            shift_x = int(round(rng.choice([-1, 1]) * rng.uniform(0.3, 0.6) * width))
            shift_y = int(round(rng.choice([-1, 1]) * rng.uniform(0.0, 0.5) * height))
            box = (
                max(target[0] + shift_x, 0),
                max(target[1] + shift_y, 0),
                min(target[2] + shift_x, canvas),
                min(target[3] + shift_y, canvas),
            )
            if box[2] - box[0] >= 3 and box[3] - box[1] >= 3 and box != target:
                found.append((box, kind))
        else:
            first, second = rng.choice(len(object_boxes), size=2, replace=False)
            box_a, box_b = object_boxes[first], object_boxes[second]
            found.append(
                (
                    (
                        min(box_a[0], box_b[0]),
                        min(box_a[1], box_b[1]),
                        max(box_a[2], box_b[2]),
                        max(box_a[3], box_b[3]),
                    ),
                    kind,
                )
            )
    return found
