"""Rewrites of a caption: the same words, another meaning (NegCLIP / ARO style).

    negatives = relational_negatives("a 7 left of the zebra", truth_row)
    # ["a 7 right of the zebra", "the zebra is left of a 7", ...] — each one false of the scene
    attribute_negatives("two little dogs and a cat", truth_row)
    # ["three little dogs and a cat", "two big dogs and a cat", "two little dogs and a cow"]

A rewrite changes one relation clause: its relation flipped ("left of" -> a phrase of "right"),
turned ("left" -> "above"/"below"), or its two sides swapped ("X left of Y" -> "Y left of X",
with the verb agreeing again). Only rewrites that `lateint.data.semantics` finds false of the
caption's scene are kept, so they are true negatives: texts that share every object word with
the positive and differ only in what relates to what.

An attribute rewrite changes one word of a noun phrase instead (the article agreeing again): a
count ("two" -> "three"), a size ("little" -> "big") or a class ("dog" -> "cow", "7s" -> "3s").
Inventory captions have no relational rewrites; these are their hard negative texts, aimed at
the claims the joint score gets wrong most (a class the image lacks, a wrong count or size).

Training uses both as extra negative texts for the joint score; nothing else (evaluation,
serving) uses this module.
"""

from __future__ import annotations

import re

import numpy as np

from lateint.data import captions as words
from lateint.data import semantics
from lateint.data.sprites import ANIMAL_NAMES

_PHRASE_OF = {
    phrase: relation for relation, options in words.RELATION_PHRASES.items() for phrase in options
}
_RELATION = re.compile(
    r" (" + "|".join(sorted(map(re.escape, _PHRASE_OF), key=len, reverse=True)) + r") "
)
_CLAUSE_SPLIT = re.compile(r"(, and |, while )")
_LEAD = re.compile(r"^(there (?:is|are) )")
_PLURAL_DETERMINERS = set(words.COUNT_WORDS.values())
_TURNS = {
    "left": ("above", "below"),
    "right": ("above", "below"),
    "above": ("left", "right"),
    "below": ("left", "right"),
}


def _be(noun_phrase: str) -> str:
    return "are" if noun_phrase.split()[0] in _PLURAL_DETERMINERS else "is"


def _clause_rewrites(clause: str, rng: np.random.Generator) -> list[str]:
    """Rewrites of one lower-case relation clause (none for an inventory clause)."""
    found = _RELATION.search(" " + clause + " ")
    if not found:
        return []
    lead_match = _LEAD.match(clause)
    lead = lead_match.group(1) if lead_match else ""
    subject = clause[len(lead) : found.start()].rstrip()
    verb = ""
    verb_match = re.search(r" (is|are)$", subject)
    if verb_match:
        subject, verb = subject[: verb_match.start()], verb_match.group(1)
    target = clause[found.end() - 1 :].strip()
    relation = _PHRASE_OF[found.group(1)]

    def pick(name):
        options = words.RELATION_PHRASES[name]
        return options[int(rng.integers(len(options)))]

    def assemble(first: str, phrase: str, second: str) -> str:
        new_lead = f"there {_be(first)} " if lead else ""
        new_verb = f" {_be(first)}" if verb else ""
        return f"{new_lead}{first}{new_verb} {phrase} {second}"

    out = [
        assemble(subject, pick(semantics.OPPOSITE[relation]), target),
        assemble(target, found.group(1), subject),
    ]
    out.extend(assemble(subject, pick(turn), target) for turn in _TURNS[relation])
    return out


def relational_negatives(
    caption: str, scene: semantics.SceneTruth, limit: int = 4, seed: int = 0
) -> list[str]:
    """Up to `limit` distinct rewrites of `caption` that are false of `scene` (a one-scene
    SceneTruth), each changing one relation clause. [] for an inventory caption."""
    rng = np.random.default_rng(seed)
    text = " ".join(caption.strip().lower().split())
    end = "." if text.endswith(".") else ""
    text = text[:-1] if end else text
    parts = _CLAUSE_SPLIT.split(text)  # clause, separator, clause, ...
    found = []
    for index in range(0, len(parts), 2):
        for rewrite in _clause_rewrites(parts[index], rng):
            candidate = "".join(parts[:index] + [rewrite] + parts[index + 1 :]) + end
            if candidate in found or candidate == text + end:
                continue
            try:
                claims = semantics.parse(candidate)
            except semantics.CaptionError:
                continue
            if not scene.holds(claims)[0]:
                found.append(candidate)
    order = rng.permutation(len(found))
    return [found[k] for k in order[:limit]]


def _word_families() -> tuple[dict, ...]:
    """(count, size, class) families: word -> the words of its kind that replace it."""
    counts = {
        word: [w for w in words.COUNT_WORDS.values() if w != word]
        for word in words.COUNT_WORDS.values()
    }
    sizes = {
        word: list(words.SIZE_WORDS["large" if size == "small" else "small"])
        for size, options in words.SIZE_WORDS.items()
        for word in options
    }
    animal_plurals = tuple("sheep" if name == "sheep" else name + "s" for name in ANIMAL_NAMES)
    numerals = tuple(str(digit) for digit in range(10))
    forms = (
        ANIMAL_NAMES,
        animal_plurals,
        numerals,
        tuple(f"{digit}s" for digit in numerals),
        words.DIGIT_WORDS,
        words.DIGIT_PLURALS,
    )
    classes = {}
    for form in forms:
        for word in form:
            classes.setdefault(word, []).extend(w for w in form if w != word)
    return counts, sizes, classes


_FAMILIES = _word_families()
_TOKEN = re.compile(r"[a-z0-9]+")


def _with_articles(tokens: list[str]) -> str:
    fixed = [
        words.article(tokens[k + 1]) if token in ("a", "an") and k + 1 < len(tokens) else token
        for k, token in enumerate(tokens)
    ]
    return " ".join(fixed)


def attribute_negatives(
    caption: str, scene: semantics.SceneTruth, limit: int = 3, seed: int | list = 0
) -> list[str]:
    """Up to `limit` distinct rewrites of `caption` that are false of `scene` (a one-scene
    SceneTruth), each replacing one count, size or class word and each with its own claims; the
    kinds take turns, so a caption with all three gets one of each before a second of any."""
    rng = np.random.default_rng(seed)
    text = " ".join(caption.strip().lower().split())
    end = "." if text.endswith(".") else ""
    tokens = [t for t in re.split(r"( |,)", text[:-1] if end else text) if t not in ("", " ")]
    queues = []
    for family in _FAMILIES:
        options = [
            (position, other)
            for position, token in enumerate(tokens)
            if _TOKEN.fullmatch(token)
            for other in family.get(token, ())
        ]
        queues.append([options[k] for k in rng.permutation(len(options))])
    queues = [queue for queue in queues if queue]
    found, meanings = [], {repr(semantics.parse(text))}
    while queues and len(found) < limit:
        for queue in [queues[k] for k in rng.permutation(len(queues))]:
            while queue and len(found) < limit:
                position, other = queue.pop()
                replaced = tokens[:position] + [other] + tokens[position + 1 :]
                candidate = _with_articles(replaced).replace(" ,", ",") + end
                try:
                    claims = semantics.parse(candidate)
                except semantics.CaptionError:
                    continue
                meaning = repr(claims)  # "big" after "large" would say the same again
                if meaning not in meanings and not scene.holds(claims)[0]:
                    found.append(candidate)
                    meanings.add(meaning)
                    break
        queues = [queue for queue in queues if queue]
    return found
