"""What a scenes caption claims, and on which scenes those claims are true.

    claims = parse("There are two 7s left of the big zebra.")
    kind(claims)                      # "count" ("inventory" | "relation" | "count")
    truth = SceneTruth.from_records(records)      # the layouts of N scenes
    truth.holds(claims)               # [N] bool: the scenes the caption is true of

The grammar is the generator's (lateint.data.captions documents it, the word tables live there);
the meaning is the documented one: "a D" = some object matching D (class, and size if given),
"the D" = exactly one object matches D, "two D" = exactly two match D and the claim holds for
all of them; "X rel Y" holds when rel holds between every chosen X and every chosen Y
(lateint.data.layout's strict box relations). tests/test_scenes_oracle.py checks this module
against an independent parser on every generated caption.

Shapes: N scenes, O object slots per scene (padded), 4 relations.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from lateint.data import captions as words
from lateint.data.layout import RELATIONS
from lateint.data.sprites import CLASS_NAMES

KINDS = ("inventory", "relation", "count")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


class CaptionError(ValueError):
    """A caption outside the benchmark's grammar (the message names the caption and the part)."""


@dataclasses.dataclass(frozen=True)
class Phrase:
    """A noun phrase: quantity "a" | "the" | n >= 2, size None | "small" | "large", class."""

    quantity: object
    size: str | None
    class_name: str


@dataclasses.dataclass(frozen=True)
class Claim:
    """("exists", subject) or ("relation", subject, relation, target)."""

    kind: str
    subject: Phrase
    relation: str | None = None
    target: Phrase | None = None


_SIZES = {word: size for size, options in words.SIZE_WORDS.items() for word in options}
_COUNTS = {word: count for count, word in words.COUNT_WORDS.items()}
_RELATION_OF = {
    phrase: relation for relation, options in words.RELATION_PHRASES.items() for phrase in options
}
_RELATION = re.compile(
    r" (" + "|".join(sorted(map(re.escape, _RELATION_OF), key=len, reverse=True)) + r") "
)
_PREFIXES = sorted(
    {
        prefix.replace("BE", be)
        for prefix in words.INVENTORY_PREFIXES
        if prefix
        for be in ("is", "are")
    }
    | {"there is ", "there are "},
    key=len,
    reverse=True,
)
_SINGULAR_NOUNS = (
    {name: name for name in CLASS_NAMES if not name.isdigit()}
    | {str(d): str(d) for d in range(10)}
    | {word: str(d) for d, word in enumerate(words.DIGIT_WORDS)}
)
_PLURAL_NOUNS = (
    {
        ("sheep" if name == "sheep" else name + "s"): name
        for name in CLASS_NAMES
        if not name.isdigit()
    }
    | {f"{d}s": str(d) for d in range(10)}
    | {word: str(d) for d, word in enumerate(words.DIGIT_PLURALS)}
)


def _phrase(text: str, caption: str) -> Phrase:
    tokens = text.split()
    if len(tokens) < 2:
        raise CaptionError(f"{caption!r}: noun phrase {text!r} needs a determiner and a noun")
    determiner, rest = tokens[0], tokens[1:]
    if determiner in ("a", "an"):
        quantity = "a"
    elif determiner == "the":
        quantity = "the"
    elif determiner in _COUNTS:
        quantity = _COUNTS[determiner]
    else:
        raise CaptionError(f"{caption!r}: unknown determiner {determiner!r} in {text!r}")
    size = _SIZES.get(rest[0])
    if size is not None:
        rest = rest[1:]
    plural = isinstance(quantity, int)
    if not plural and len(rest) == 2 and rest[0] in ("digit", "number"):
        rest = rest[1:]
    table = _PLURAL_NOUNS if plural else _SINGULAR_NOUNS
    if len(rest) != 1 or rest[0] not in table:
        raise CaptionError(
            f"{caption!r}: expected a {'plural' if plural else 'singular'} noun in {text!r}"
        )
    return Phrase(quantity, size, table[rest[0]])


def parse(caption: str) -> list[Claim]:
    """The claims of one caption, in order; raises CaptionError outside the grammar."""
    text = " ".join(caption.strip().lower().split())
    text = text[:-1] if text.endswith(".") else text
    claims = []
    for clause in re.split(r", and |, while ", text):
        clause = next((clause[len(p) :] for p in _PREFIXES if clause.startswith(p)), clause)
        found = _RELATION.search(" " + clause + " ")
        if found:
            subject = re.sub(r" (is|are)$", "", clause[: found.start()].rstrip())
            target = clause[found.end() - 1 :].strip()
            claims.append(
                Claim(
                    "relation",
                    _phrase(subject, caption),
                    _RELATION_OF[found.group(1)],
                    _phrase(target, caption),
                )
            )
        else:
            claims.extend(
                Claim("exists", _phrase(part, caption)) for part in re.split(r", | and ", clause)
            )
    if not claims:
        raise CaptionError(f"{caption!r}: no claim")
    return claims


def kind(claims: list[Claim]) -> str:
    """ "inventory" (only existence claims), "count" (a relation with a counted side), else
    "relation"."""
    relational = [claim for claim in claims if claim.kind == "relation"]
    if not relational:
        return "inventory"
    counted = any(
        isinstance(phrase.quantity, int)
        for claim in relational
        for phrase in (claim.subject, claim.target)
    )
    return "count" if counted else "relation"


def _relation_tensor(boxes: np.ndarray) -> np.ndarray:
    """boxes [N, O, 4] (x1, y1, x2, y2) -> [4, N, O, O] bool, rel[r, n, a, b] = "a r b"."""
    x1, y1, x2, y2 = (boxes[..., k] for k in range(4))
    return np.stack(
        [
            x2[:, :, None] <= x1[:, None, :],
            x1[:, :, None] >= x2[:, None, :],
            y2[:, :, None] <= y1[:, None, :],
            y1[:, :, None] >= y2[:, None, :],
        ]
    )


class SceneTruth:
    """The layouts of N scenes as padded arrays, for vectorised claim checks.

    classes [N, O] int (-1 = no object), sizes [N, O] int (0 small, 1 large), boxes [N, O, 4].
    """

    def __init__(self, classes: np.ndarray, sizes: np.ndarray, boxes: np.ndarray):
        self.classes, self.sizes, self.boxes = classes, sizes, boxes
        self.relations = _relation_tensor(boxes)  # [4, N, O, O]

    @classmethod
    def from_records(cls, records: list) -> SceneTruth:
        """records: scene layouts as in {split}_scenes.jsonl (objects with class, size, box)."""
        width = max([len(record["objects"]) for record in records] + [1])
        classes = np.full((len(records), width), -1, np.int32)
        sizes = np.zeros((len(records), width), np.int32)
        boxes = np.zeros((len(records), width, 4), np.float64)
        for row, record in enumerate(records):
            for slot, item in enumerate(record["objects"]):
                classes[row, slot] = CLASS_NAMES.index(item["class"])
                sizes[row, slot] = ("small", "large").index(item["size"])
                boxes[row, slot] = item["box"][:4]
        return cls(classes, sizes, boxes)

    @property
    def num_scenes(self) -> int:
        return int(self.classes.shape[0])

    def subset(self, rows: np.ndarray) -> SceneTruth:
        return SceneTruth(self.classes[rows], self.sizes[rows], self.boxes[rows])

    def _matches(self, phrase: Phrase) -> tuple[np.ndarray, np.ndarray]:
        """(mask [N, O] of the objects D names, ok [N]: the quantity's count condition)."""
        mask = self.classes == CLASS_NAMES.index(phrase.class_name)
        if phrase.size is not None:
            mask &= self.sizes == ("small", "large").index(phrase.size)
        count = mask.sum(axis=1)
        if phrase.quantity == "a":
            return mask, count >= 1
        return mask, count == (1 if phrase.quantity == "the" else phrase.quantity)

    def claim_holds(self, claim: Claim) -> np.ndarray:
        """[N] bool: the scenes where `claim` is true."""
        subject, subject_ok = self._matches(claim.subject)
        if claim.kind == "exists":
            return subject_ok
        target, target_ok = self._matches(claim.target)
        related = self.relations[RELATIONS.index(claim.relation)]  # [N, O, O]
        pair = subject[:, :, None] & target[:, None, :]  # [N, O, O]
        every_subject = isinstance(claim.subject.quantity, int)
        every_target = isinstance(claim.target.quantity, int)
        if every_subject and every_target:
            found = np.all(related | ~pair, axis=(1, 2))
        elif every_subject:  # some target t with every subject s r t
            found = np.any(target & np.all(related | ~subject[:, :, None], axis=1), axis=1)
        elif every_target:  # some subject s with s r every target t
            found = np.any(subject & np.all(related | ~target[:, None, :], axis=2), axis=1)
        else:
            found = np.any(pair & related, axis=(1, 2))
        return found & subject_ok & target_ok

    def holds(self, claims: list[Claim]) -> np.ndarray:
        """[N] bool: the scenes where every claim is true."""
        result = np.ones(self.num_scenes, bool)
        for claim in claims:
            result &= self.claim_holds(claim)
        return result

    def truth_matrix(self, captions: list[str]) -> np.ndarray:
        """[M, N] bool: caption m is true of scene n (parsing each caption once)."""
        return (
            np.stack([self.holds(parse(caption)) for caption in captions])
            if captions
            else np.zeros((0, self.num_scenes), bool)
        )
