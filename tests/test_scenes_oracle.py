"""Every scene caption is true of its scene, checked by an oracle independent of the generator.

The oracle parses each caption's claims with its own small grammar (not the generator's word
lists or code) and evaluates them over the layout in {split}_scenes.jsonl, using the documented
meaning: "a D" = some object matching D, "the D" = exactly one, "two D" = exactly two and all of
them; "X left of Y" = X's box ends at or before Y's box starts (x2 <= x1'), likewise right, above
(y2 <= y1', y down) and below.
"""

import json
import os
import re

import numpy as np
import pytest

from lateint.data import scenes

ANIMALS = {"bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COUNTS = {"two": 2, "three": 3, "four": 4, "five": 5}
SIZE_OF = {"small": "small", "little": "small", "large": "large", "big": "large"}
RELATION_OF = {
    "to the left of": "left",
    "on the left of": "left",
    "left of": "left",
    "to the right of": "right",
    "on the right of": "right",
    "right of": "right",
    "above": "above",
    "over": "above",
    "higher than": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "lower than": "below",
}
RELATION_PATTERN = re.compile(r" (" + "|".join(sorted(RELATION_OF, key=len, reverse=True)) + r") ")
PREFIXES = ("there is ", "there are ", "a picture of ", "an image with ", "a scene with ")


class ParseError(ValueError):
    pass


def parse_noun(words: list, plural: bool) -> str:
    """Class name ("7", "zebra") of a noun given as words."""
    if len(words) == 2 and words[0] in ("digit", "number") and not plural:
        words = words[1:]
    if len(words) != 1:
        raise ParseError(f"noun {' '.join(words)!r}")
    word = words[0]
    if plural:
        if word == "sheep":
            return word
        if word.endswith("es") and word[:-2] in ("six",):
            return "6"
        stem = word[:-1] if word.endswith("s") else None
        if stem in ANIMALS:
            return stem
        if stem is not None and stem.isdigit() and len(stem) == 1:
            return stem
        if stem in DIGIT_NAMES:
            return str(DIGIT_NAMES.index(stem))
        raise ParseError(f"plural noun {word!r}")
    if word in ANIMALS:
        return word
    if word.isdigit() and len(word) == 1:
        return word
    if word in DIGIT_NAMES:
        return str(DIGIT_NAMES.index(word))
    raise ParseError(f"noun {word!r}")


def parse_noun_phrase(text: str) -> tuple:
    """'two small 7s' -> (2, 'small', '7'); 'the zebra' -> ('the', None, 'zebra')."""
    words = text.split()
    if len(words) < 2:
        raise ParseError(f"noun phrase {text!r}")
    determiner, rest = words[0], words[1:]
    if determiner in ("a", "an"):
        quantity = "a"
        vowel_sound = rest[0] == "8" or (rest[0][0] in "aeiou" and rest[0] != "one")
        if (determiner == "an") != vowel_sound:
            raise ParseError(f"article in {text!r}")
    elif determiner == "the":
        quantity = "the"
    elif determiner in COUNTS:
        quantity = COUNTS[determiner]
    else:
        raise ParseError(f"determiner in {text!r}")
    size = SIZE_OF.get(rest[0])
    if size is not None:
        rest = rest[1:]
    return quantity, size, parse_noun(rest, plural=isinstance(quantity, int))


def parse_caption(caption: str) -> list:
    """Claims: ('exists', np) and ('relation', np, relation, np)."""
    text = caption.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    claims = []
    for clause in re.split(r", and |, while ", text):
        for prefix in PREFIXES:
            if clause.startswith(prefix):
                clause = clause[len(prefix) :]
                break
        found = RELATION_PATTERN.search(clause)
        if found:
            left = clause[: found.start()]
            left = re.sub(r" (is|are)$", "", left)
            claims.append(
                (
                    "relation",
                    parse_noun_phrase(left),
                    RELATION_OF[found.group(1)],
                    parse_noun_phrase(clause[found.end() :]),
                )
            )
        else:
            for part in re.split(r", | and ", clause):
                claims.append(("exists", parse_noun_phrase(part)))
    return claims


def related(box_a, box_b, relation: str) -> bool:
    ax1, ay1, ax2, ay2 = box_a
    bx1, by1, bx2, by2 = box_b
    return {"left": ax2 <= bx1, "right": ax1 >= bx2, "above": ay2 <= by1, "below": ay1 >= by2}[
        relation
    ]


def referent_sets(objects: list, phrase: tuple) -> list:
    quantity, size, class_name = phrase
    matching = [
        obj
        for obj in objects
        if obj["class"] == class_name and (size is None or obj["size"] == size)
    ]
    if quantity == "a":
        return [[obj] for obj in matching]
    wanted = 1 if quantity == "the" else quantity
    return [matching] if len(matching) == wanted else []


def claim_true(objects: list, claim: tuple) -> bool:
    if claim[0] == "exists":
        return bool(referent_sets(objects, claim[1]))
    _, subject, relation, target = claim
    return any(
        all(related(a["box"], b["box"], relation) for a in subjects for b in targets)
        for subjects in referent_sets(objects, subject)
        for targets in referent_sets(objects, target)
    )


def caption_true(objects: list, caption: str) -> bool:
    return all(claim_true(objects, claim) for claim in parse_caption(caption))


def _object(class_name, size, box):
    return {"class": class_name, "size": size, "box": box}


HAND_SCENE = [  # a cat left of two dogs, a big 7 above everything
    _object("cat", "small", [0.0, 0.5, 0.1, 0.6]),
    _object("dog", "small", [0.3, 0.5, 0.4, 0.6]),
    _object("dog", "large", [0.6, 0.4, 0.9, 0.7]),
    _object("7", "large", [0.3, 0.0, 0.6, 0.3]),
]


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a cat left of two dogs", True),
        ("The small cat is to the left of a big dog.", True),
        ("there are two dogs right of the cat", True),
        ("a cat right of a dog", False),
        ("the dog right of the cat", False),  # "the dog" needs exactly one dog
        ("three dogs right of the cat", False),
        ("a large cat left of a dog", False),  # the cat is small
        ("the big number seven is above two dogs", True),
        ("a 7 below a cat", False),
        ("two sevens above a cat", False),
        ("an image with a cat, two dogs and a seven", True),
        ("a picture of a cat, two dogs and a bear", False),
        ("the small dog is over the cat", False),  # same height: neither above nor below
        ("a seven above the cat, and a dog below the 7", True),
        ("a seven above the cat, while a dog above the 7", False),
    ],
)
def test_oracle_on_a_hand_built_scene(caption, expected):
    assert caption_true(HAND_SCENE, caption) is expected


@pytest.mark.parametrize(
    "caption",
    ["a cats left of a dog", "an cat left of a dog", "two dog", "a lion above a cat", "seven cats"],
)
def test_oracle_rejects_ungrammatical_captions(caption):
    with pytest.raises(ParseError):
        parse_caption(caption)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scenes"))
    scenes.generate(
        out, num_train=120, num_dev=30, num_test=30, seed=3, images=False, region_features="pixels"
    )
    return out


def _records(out: str, split: str) -> list:
    with open(os.path.join(out, f"{split}_scenes.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_every_caption_is_true_of_its_scene(generated, split):
    records = _records(generated, split)
    with open(os.path.join(generated, f"{split}_caps.txt"), encoding="utf-8") as file:
        captions = file.read().splitlines()
    assert len(captions) == 5 * len(records)
    relation_claims = 0
    for index, caption in enumerate(captions):
        objects = records[index // 5]["objects"]
        assert caption_true(objects, caption), (records[index // 5]["id"], caption)
        relation_claims += sum(claim[0] == "relation" for claim in parse_caption(caption))
    assert relation_claims >= 3 * len(records)  # relations dominate the captions


def test_captions_tell_group_members_apart(generated):
    """Relation captions are mostly false for the other scene of the group (same objects)."""
    records = _records(generated, "train")
    by_group = {}
    for record in records:
        by_group.setdefault(record["group"], []).append(record)
    relational, discriminative = 0, 0
    for members in by_group.values():
        for record in members:
            for other in members:
                if other is record:
                    continue
                for caption in record["captions"]:
                    if any(claim[0] == "relation" for claim in parse_caption(caption)):
                        relational += 1
                        discriminative += not caption_true(other["objects"], caption)
    assert relational > 0
    assert discriminative / relational >= 0.6, (discriminative, relational)


def test_captions_vary(generated):
    captions = [
        caption for record in _records(generated, "train") for caption in record["captions"]
    ]
    assert len(set(captions)) >= 0.95 * len(captions)
    words = {word for caption in captions for word in re.findall(r"[a-z0-9]+", caption.lower())}
    assert {"left", "right", "above", "below", "small", "large", "two"} <= words


# ---- the library's caption semantics and rewrites, checked against this oracle ---------------


def test_library_semantics_agree_with_the_oracle_on_every_caption_and_scene(generated):
    from lateint.data import semantics

    for split in ("train", "test"):
        records = _records(generated, split)
        captions = [caption for record in records for caption in record["captions"]]
        truth = semantics.SceneTruth.from_records(records).truth_matrix(captions)  # [M, N]
        expected = np.array(
            [
                [caption_true(record["objects"], caption) for record in records]
                for caption in captions
            ]
        )
        np.testing.assert_array_equal(truth, expected)
        assert truth[np.arange(len(captions)), np.arange(len(captions)) // 5].all()
        assert 0 < truth.mean() < 0.5  # captions are true of some other scenes, not of most


def test_library_semantics_on_the_hand_built_scene():
    from lateint.data import semantics

    truth = semantics.SceneTruth.from_records([{"objects": HAND_SCENE}])
    for caption, expected in [
        ("a cat left of two dogs", True),
        ("a cat right of a dog", False),
        ("the dog right of the cat", False),
        ("the big number seven is above two dogs", True),
        ("a seven above the cat, while a dog above the 7", False),
    ]:
        assert bool(truth.holds(semantics.parse(caption))[0]) is expected, caption
    assert semantics.kind(semantics.parse("two dogs right of the cat")) == "count"
    assert semantics.kind(semantics.parse("a cat left of a dog")) == "relation"
    assert semantics.kind(semantics.parse("an image with a cat and two dogs")) == "inventory"
    for bad in ["a lion above a cat", "two dog", "the cat sits with a dog"]:
        with pytest.raises(semantics.CaptionError):
            semantics.parse(bad)


def test_relational_rewrites_are_false_of_their_scene_and_keep_the_words(generated):
    from lateint.data import rewrites, semantics

    records = _records(generated, "train")
    truth = semantics.SceneTruth.from_records(records)
    made = 0
    for index, record in enumerate(records):
        for caption in record["captions"]:
            negatives = rewrites.relational_negatives(
                caption, truth.subset(np.array([index])), seed=index
            )
            relational = any(claim[0] == "relation" for claim in parse_caption(caption))
            assert relational or not negatives
            for negative in negatives:
                assert not caption_true(record["objects"], negative), (caption, negative)

                def nouns(text):
                    return sorted(
                        phrase[2]
                        for claim in parse_caption(text)
                        for phrase in claim[1::2]
                        if isinstance(phrase, tuple)
                    )

                assert nouns(negative) == nouns(caption)  # same objects, other relations
            made += len(negatives)
    assert made >= 2 * len(records)


def test_attribute_rewrites_are_false_of_their_scene_and_change_one_word(generated):
    """Every attribute rewrite is false of its scene under the independent oracle, differs from
    its caption in one count, size or class word (and at most the article before it), and
    each kind occurs; inventory captions get them too."""
    from lateint.data import rewrites, semantics

    records = _records(generated, "train")
    truth = semantics.SceneTruth.from_records(records)
    counts = {"two", "three", "four", "five"}
    sizes = {"small", "little", "large", "big"}
    kinds, inventory = set(), 0
    for index, record in enumerate(records):
        for caption in record["captions"]:
            negatives = rewrites.attribute_negatives(
                caption, truth.subset(np.array([index])), limit=3, seed=index
            )
            assert len(negatives) == len(set(negatives)) <= 3
            assert len({tuple(parse_caption(n)) for n in negatives}) == len(negatives)
            before = caption.lower().rstrip(".").replace(",", " ,").split()
            for negative in negatives:
                assert not caption_true(record["objects"], negative), (caption, negative)
                after = negative.rstrip(".").replace(",", " ,").split()
                assert len(after) == len(before), (caption, negative)
                changed = [(a, b) for a, b in zip(before, after) if a != b]
                words = [pair for pair in changed if pair[0] not in ("a", "an")]
                assert len(words) == 1, (caption, negative)
                old, new = words[0]
                kinds.add(
                    "count"
                    if old in counts and new in counts
                    else "size"
                    if old in sizes
                    else "class"
                )
            if negatives and all(claim[0] != "relation" for claim in parse_caption(caption)):
                inventory += 1
    assert kinds == {"count", "size", "class"}
    assert inventory >= len(records)  # most inventory captions get some
