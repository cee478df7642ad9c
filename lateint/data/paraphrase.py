"""Other wordings of a caption's claims, so the text side does not learn only the generator's.

    claims = semantics.parse("a 7 left of the zebra")
    paraphrase(claims, rng)   # e.g. "the zebra with a seven to its left", "search for a 7
                              # that is left of the zebra", "the zebra is right of a 7."

Users do not type the scenes generator's sentences. Training on them alone teaches the text
tower a word order ("S rel T"), not what a relation means: an inverse construction ("T with S
on its left") then reads as "T left of S". A paraphrase keeps every claim (same quantities,
sizes, classes and relations, so `lateint.data.semantics` truth and the relational rewrites
stay valid) and changes the surface: the relation said from the target's side with the
opposite word, inverse constructions, relation and inventory wordings the generator lacks,
and query wrappers ("give me ...", "a photo where ..."). Training (lateint.train.data) swaps a caption
and its rewrites for paraphrases with some probability.

bench/phrasings.py measures phrasings held out from both the generator and this module;
tests/test_paraphrase.py checks that none of its templates or words appears here.
"""

from __future__ import annotations

import numpy as np

from lateint.data import captions as words
from lateint.data import semantics

# "S <phrase> T": S relates to T.
RELATION_WORDS = {
    "left": words.RELATION_PHRASES["left"]
    + ("on the left side of", "leftward of", "at the left of"),
    "right": words.RELATION_PHRASES["right"]
    + ("on the right side of", "rightward of", "at the right of"),
    "above": words.RELATION_PHRASES["above"] + ("higher up than", "up above", "atop"),
    "below": words.RELATION_PHRASES["below"] + ("lower down than", "down below", "down from"),
}


def _sideways(side: str) -> dict:
    """Inverse templates of "left" or "right" (the two differ only in the word)."""
    return {
        "np": (
            f"{{t}} with {{s}} to {{its_t}} {side}",
            f"{{t}} that {{has_t}} {{s}} {side} of {{it_t}}",
        ),
        "clause": (
            f"to the {side} of {{t}} {{be_s}} {{s}}",
            f"{{t}} {{has_t}} {{s}} at {{its_t}} {side}",
        ),
    }


# The relation said from T's side: {t} is the target's phrase, {s} the subject's; {its_t}/
# {it_t}/{has_t}/{be_s} agree with the phrase they refer to (see _fill). "np" templates are
# noun phrases ("the zebra with a 7 to its left"), "clause" templates sentences.
INVERSE = {
    "left": _sideways("left"),
    "right": _sideways("right"),
    "above": {
        "np": ("{t} with {s} over {it_t}", "{t} that {has_t} {s} higher up"),
        "clause": ("above {t} {be_s} {s}", "{t} {has_t} {s} higher than {it_t}"),
    },
    "below": {
        "np": ("{t} with {s} under {it_t}", "{t} that {has_t} {s} beneath {it_t}"),
        "clause": ("below {t} {be_s} {s}", "{t} {has_t} {s} lower down"),
    },
}
# Wrappers: "{np}" takes a noun-phrase form, "{clause}" a sentence with a verb.
NP_WRAPPERS = (
    "give me {np}",
    "search for {np}",
    "look for {np}",
    "get me {np}",
    "i want {np}",
    "a photo of {np}",
    "an image showing {np}",
    "can you locate {np}",
    "any picture of {np}",
)
CLAUSE_WRAPPERS = (
    "a photo where {clause}",
    "an image in which {clause}",
    "i need a picture where {clause}",
    "scenes where {clause}",
)
INVENTORY_LEADS = (
    "",
    "",
    "a photo containing ",
    "a picture showing ",
    "an image that has ",
    "a scene including ",
    "",
)
INVENTORY_JOINS = (
    (", ", " and "),
    (", ", ", and "),
    (" with ", " and "),
    (", ", " plus "),
    (" along with ", " and "),
    (" together with ", " and "),
)
CLAUSE_JOINS = (", and ", " and ", "; ", ", also ", ", plus ")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _plural(phrase: semantics.Phrase) -> bool:
    return isinstance(phrase.quantity, int)


def noun_phrase(phrase: semantics.Phrase, rng: np.random.Generator) -> str:
    """The phrase in the generator's vocabulary of nouns and sizes, with a quantity wording
    that keeps its meaning ("the" = exactly one, n = exactly n)."""
    if phrase.quantity == 2 and rng.random() < 0.3:
        return "a pair of " + words.noun_phrase(2, phrase.size, phrase.class_name, rng)[4:]
    if phrase.quantity == "the" and rng.random() < 0.3:
        return "the only " + words.noun_phrase("the", phrase.size, phrase.class_name, rng)[4:]
    return words.noun_phrase(phrase.quantity, phrase.size, phrase.class_name, rng)


def _fill(template: str, subject: semantics.Phrase, target: semantics.Phrase, rng) -> str:
    return template.format(
        s=noun_phrase(subject, rng),
        t=noun_phrase(target, rng),
        its_t="their" if _plural(target) else "its",
        it_t="them" if _plural(target) else "it",
        has_t="have" if _plural(target) else "has",
        be_s="are" if _plural(subject) else "is",
    )


def relation_clause(claim: semantics.Claim, rng: np.random.Generator, form: str) -> str:
    """One relation claim, said as S rel T, as T opposite-rel S, or inverted (INVERSE).
    form: "np" (a noun phrase: "S left of T", "T with S to its left"), "clause" (a sentence:
    "S is left of T", "to the left of T is S") or "any"."""
    subject, target, relation = claim.subject, claim.target, claim.relation
    choice = rng.random()
    if choice < 0.35:
        templates = INVERSE[relation]
        if form == "any":
            form = _pick(rng, ("np", "clause"))
        template = _pick(rng, templates[form])
        if form == "clause" and rng.random() < 0.3:  # "there is T with S to its left"
            template = ("there are " if _plural(target) else "there is ") + templates["np"][0]
        return _fill(template, subject, target, rng)
    if choice < 0.6:
        subject, target = target, subject
        relation = semantics.OPPOSITE[relation]
    plural = _plural(subject)
    if form == "clause" or (form == "any" and rng.random() < 0.4):
        middle = " are " if plural else " is "
    else:
        middle = _pick(rng, (" ", " ", " that are " if plural else " that is "))
    words_of = _pick(rng, RELATION_WORDS[relation])
    return noun_phrase(subject, rng) + middle + words_of + " " + noun_phrase(target, rng)


def inventory_clause(claims: list[semantics.Claim], rng: np.random.Generator) -> str:
    """Existence claims as one list ("a zebra, a 7 plus a small bear")."""
    parts = [noun_phrase(claim.subject, rng) for claim in claims]
    if len(parts) == 1:
        return parts[0]
    comma, last = _pick(rng, INVENTORY_JOINS)
    return comma.join(parts[:-1]) + last + parts[-1]


def paraphrase(claims: list[semantics.Claim], rng: np.random.Generator) -> str:
    """A wording of `claims` (a parsed caption) outside the generator's grammar, same meaning."""
    wrapper = rng.random()
    form = "clause" if wrapper >= 0.75 else "np" if wrapper < 0.35 else "any"
    clauses, pending = [], []
    for claim in claims + [None]:
        if claim is not None and claim.kind == "exists":
            pending.append(claim)
            continue
        if pending:
            clause = inventory_clause(pending, rng)
            if form == "clause":
                plural = len(pending) > 1 or _plural(pending[0].subject)
                clause = ("there are " if plural else "there is ") + clause
            clauses.append(clause)
            pending = []
        if claim is not None:
            clauses.append(relation_clause(claim, rng, form))
    text = clauses[0]
    for clause in clauses[1:]:
        text += _pick(rng, CLAUSE_JOINS) + clause
    if form == "clause":
        text = _pick(rng, CLAUSE_WRAPPERS).format(clause=text)
    elif form == "np":
        text = _pick(rng, NP_WRAPPERS).format(np=text)
    elif all(claim.kind == "exists" for claim in claims):
        text = _pick(rng, INVENTORY_LEADS) + text
    return text + _pick(rng, ("", "", ".", "?" if form == "np" else ""))


def paraphrases(caption: str, count: int, seed: int) -> list[str]:
    """`count` paraphrases of one generator caption (deterministic in seed)."""
    claims = semantics.parse(caption)
    rng = np.random.default_rng(seed)
    return [paraphrase(claims, rng) for _ in range(count)]
