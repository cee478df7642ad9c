"""Captions of a scene: five plain-English sentences about objects, counts, sizes and relations.

The grammar (what `tests/test_scenes_oracle.py` parses independently):

    caption   := clause (", and " | ", while ") clause | clause       [+ optional final "."]
    clause    := [there is|are] NP [is|are] RELATION NP | [PREFIX] NP ("," NP)* " and " NP
    NP        := ("a" | "an" | "the" | two..five) [SIZE] NOUN
    SIZE      := small | little  (size "small")  |  large | big  (size "large")
    NOUN      := animal name (bear ... zebra, plural +s, sheep), or a digit: numeral "7" / word
                 "seven", optionally after "digit" / "number" in the singular; plural "7s" /
                 "sevens"
    RELATION  := left of | to the left of | on the left of | right of | ... | above | over |
                 higher than | below | under | beneath | lower than

Meaning (strict, so every caption is checkable against the layout): "a D" — some object
matching descriptor D (class, and size if given); "the D" — exactly one object matches D;
"two D" — exactly two objects match D, and a relation holds for all of them. "X rel Y" holds
when rel holds between every chosen X and every chosen Y (layout.relations).
"""

import dataclasses

import numpy as np

from lateint.data.layout import relations

COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_PLURALS = (
    "zeros",
    "ones",
    "twos",
    "threes",
    "fours",
    "fives",
    "sixes",
    "sevens",
    "eights",
    "nines",
)
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_PHRASES = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
}
INVENTORY_PREFIXES = ("", "a picture of ", "an image with ", "a scene with ", "there BE ")


@dataclasses.dataclass(frozen=True)
class Item:
    """What captions know of an object: class, size and pixel box (x1, y1, x2, y2)."""

    class_name: str
    size: str
    box: tuple


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def article(word: str) -> str:
    return "an" if word == "8" or (word[0] in "aeio" and word != "one") else "a"


def noun(class_name: str, plural: bool, rng: np.random.Generator) -> str:
    """ "zebra"/"zebras", or a digit as "7", "seven", "the digit 7", "7s", "sevens" ..."""
    if not class_name.isdigit():
        return class_name if not plural or class_name == "sheep" else class_name + "s"
    digit = int(class_name)
    if plural:
        return class_name + "s" if rng.random() < 0.5 else DIGIT_PLURALS[digit]
    word = class_name if rng.random() < 0.5 else DIGIT_WORDS[digit]
    prefix = rng.random()
    if prefix < 0.15:
        return "digit " + word
    if prefix < 0.3:
        return "number " + word
    return word


def noun_phrase(quantity, size: str | None, class_name: str, rng: np.random.Generator) -> str:
    """quantity: "a", "the" or a count >= 2; size: "small", "large" or None."""
    words = noun(class_name, isinstance(quantity, int), rng)
    if size is not None:
        words = _pick(rng, SIZE_WORDS[size]) + " " + words
    if isinstance(quantity, int):
        return COUNT_WORDS[quantity] + " " + words
    if quantity == "the":
        return "the " + words
    return article(words) + " " + words


def _finish(text: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.5 else text


@dataclasses.dataclass(frozen=True)
class Mention:
    """A noun phrase before wording: class, size (None: any) and quantity ("a", "the", n)."""

    class_name: str
    size: str | None
    quantity: object


@dataclasses.dataclass(frozen=True)
class Clause:
    subject: Mention
    relation: str
    target: Mention


def _matches(items: list, mention: Mention) -> list:
    return [
        index
        for index, item in enumerate(items)
        if item.class_name == mention.class_name
        and (mention.size is None or item.size == mention.size)
    ]


def _choices(items: list, mention: Mention) -> list:
    """The sets of items the mention may refer to (one per candidate referent)."""
    found = _matches(items, mention)
    if mention.quantity == "a":
        return [[index] for index in found]
    expected = 1 if mention.quantity == "the" else mention.quantity
    return [found] if len(found) == expected else []


def clause_holds(items: list, clause: Clause) -> bool:
    """True when the clause is true of `items` under the semantics in the module docstring."""
    return any(
        all(
            clause.relation in relations(items[s].box, items[o].box)
            for s in subjects
            for o in targets
        )
        for subjects in _choices(items, clause.subject)
        for targets in _choices(items, clause.target)
    )


class Describer:
    """Writes captions true of one scene; relation captions prefer claims that are false in
    the other scenes of its group (`others`: their item lists, same objects in the same order),
    so that a caption tells its scene apart from the ones with the same objects."""

    def __init__(self, items: list, rng: np.random.Generator, others: tuple = ()):
        self.items = items
        self.rng = rng
        self.others = others
        self.used_pairs = set()

    def _mention(self, index: int, count_probability: float) -> Mention:
        item = self.items[index]
        size = item.size if self.rng.random() < 0.5 else None
        count = len(_matches(self.items, Mention(item.class_name, size, "a")))
        if count >= 2 and self.rng.random() < count_probability:
            return Mention(item.class_name, size, count)
        quantity = "the" if count == 1 and self.rng.random() < 0.5 else "a"
        return Mention(item.class_name, size, quantity)

    def _candidates(self) -> list:
        found = []
        for i, item_a in enumerate(self.items):
            for j, item_b in enumerate(self.items):
                if item_a.class_name != item_b.class_name:
                    found.extend((i, j, relation) for relation in relations(item_a.box, item_b.box))
        fresh = [
            found_one for found_one in found if frozenset(found_one[:2]) not in self.used_pairs
        ]
        return fresh or found

    def _random_clause(self, counting: bool) -> Clause:
        candidates = self._candidates()
        i, j, relation = candidates[int(self.rng.integers(len(candidates)))]
        if counting:
            class_name = self.items[i].class_name
            count = len(_matches(self.items, Mention(class_name, None, "a")))
            if count >= 2:
                clause = Clause(Mention(class_name, None, count), relation, self._mention(j, 0))
                if clause_holds(self.items, clause):
                    return clause
        clause = Clause(self._mention(i, 0.5), relation, self._mention(j, 0.3))
        if not clause_holds(self.items, clause):
            item_a, item_b = self.items[i], self.items[j]
            clause = Clause(
                Mention(item_a.class_name, item_a.size, "a"),
                relation,
                Mention(item_b.class_name, item_b.size, "a"),
            )
        self.used_pairs.add(frozenset((i, j)))
        return clause

    def relation_clause(self, counting: bool = False, attempts: int = 12) -> str:
        """One "X rel Y" clause; `counting` prefers a plural subject ("two horses ...")."""
        chosen = None
        for attempt in range(attempts):
            clause = self._random_clause(counting and attempt < attempts // 2)
            chosen = chosen or clause
            if not any(clause_holds(other, clause) for other in self.others):
                chosen = clause
                break
        return self._words(chosen)

    def _words(self, clause: Clause) -> str:
        subject = noun_phrase(
            clause.subject.quantity, clause.subject.size, clause.subject.class_name, self.rng
        )
        target = noun_phrase(
            clause.target.quantity, clause.target.size, clause.target.class_name, self.rng
        )
        phrase = _pick(self.rng, RELATION_PHRASES[clause.relation])
        be = "are" if isinstance(clause.subject.quantity, int) else "is"
        template = int(self.rng.integers(3))
        if template == 0:
            return f"{subject} {phrase} {target}"
        if template == 1:
            return f"{subject} {be} {phrase} {target}"
        return f"there {be} {subject} {phrase} {target}"

    def inventory(self) -> str:
        """ "two horses, a zebra and a small 7": every class with its count (sizes sometimes)."""
        classes = list(dict.fromkeys(item.class_name for item in self.items))
        phrases, first_plural = [], False
        for position, k in enumerate(self.rng.permutation(len(classes))):
            members = [item for item in self.items if item.class_name == classes[k]]
            sizes = {item.size for item in members}
            size = sizes.pop() if len(sizes) == 1 and self.rng.random() < 0.5 else None
            quantity = len(members) if len(members) >= 2 else "a"
            phrases.append(noun_phrase(quantity, size, classes[k], self.rng))
            if position == 0:
                first_plural = len(members) >= 2
        listed = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        prefix = _pick(self.rng, INVENTORY_PREFIXES)
        return prefix.replace("BE", "are" if first_plural else "is") + listed

    def captions(self, count: int = 5) -> list:
        """`count` captions: an inventory, single, double and counting relations, shuffled."""
        made = [
            self.inventory(),
            self.relation_clause(),
            self.relation_clause(),
            self.relation_clause()
            + _pick(self.rng, (", and ", ", while "))
            + self.relation_clause(),
            self.relation_clause(counting=True),
        ]
        while len(made) < count:
            made.append(self.relation_clause())
        made = [_finish(text, self.rng) for text in made[:count]]
        return [made[int(k)] for k in self.rng.permutation(len(made))]


def describe(items: list, rng: np.random.Generator, others: tuple = (), count: int = 5) -> list:
    """`count` true captions of a scene whose objects are `items` (at least two classes).

    others: item lists of the other scenes of its group (same objects, other boxes).
    """
    return Describer(items, rng, others).captions(count)
