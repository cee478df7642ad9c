"""Paraphrases keep a caption's claims, and stay clear of the phrasings bench's held-out words."""

import itertools
import re

import numpy as np
import pytest

from bench import phrasings
from lateint.data import captions as words
from lateint.data import paraphrase, semantics
from lateint.data.sprites import CLASS_NAMES


def _random_claims(rng: np.random.Generator) -> list:
    """1-3 claims over random phrases: every quantity, size and relation the grammar has."""

    def phrase():
        quantity = ["a", "the", int(rng.integers(2, 6))][int(rng.integers(3))]
        size = [None, "small", "large"][int(rng.integers(3))]
        return semantics.Phrase(quantity, size, CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))])

    claims = []
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            claims.append(semantics.Claim("exists", phrase()))
        else:
            relation = ("left", "right", "above", "below")[int(rng.integers(4))]
            claims.append(semantics.Claim("relation", phrase(), relation, phrase()))
    return claims


def _held_out_fragments() -> set:
    """The fixed words of bench/phrasings.py's templates that the generator does not use
    ("on its left", "further left than", "show me", ...), and its size words."""
    generator = {p for options in words.RELATION_PHRASES.values() for p in options}
    fragments = set(phrasings.SIZE_HELD_OUT.values())
    for templates in phrasings.HELD_OUT.values():
        for template in templates.values():
            for part in re.split(r"\{[st]\}", template.lower()):
                part = part.strip()
                bare = re.sub(r"^(is|are) ", "", part)
                if part and part != "with" and bare not in generator:
                    fragments.add(part)
    return fragments


def test_fragments_are_what_the_bench_holds_out():
    fragments = _held_out_fragments()
    assert {"on its left", "further left than", "on top of", "show me", "tiny"} <= fragments
    assert "to the left of" not in fragments and "below" not in fragments


def test_no_paraphrase_uses_a_held_out_phrasing():
    rng = np.random.default_rng(0)
    fragments = _held_out_fragments()
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(fragments))) + r")\b")
    for _ in range(3000):
        text = paraphrase.paraphrase(_random_claims(rng), rng)
        found = pattern.search(text)
        assert found is None, f"{text!r} uses the held-out {found.group(1)!r}"


def _mentions(text: str, phrase: semantics.Phrase) -> bool:
    """The phrase's class and quantity words occur in the text."""
    name = phrase.class_name
    if name.isdigit():
        plural = isinstance(phrase.quantity, int)
        nouns = (
            {name + "s", words.DIGIT_PLURALS[int(name)]}
            if plural
            else {name, words.DIGIT_WORDS[int(name)]}
        )
    else:
        nouns = {name if phrase.quantity in ("a", "the") or name == "sheep" else name + "s"}
    tokens = re.findall(r"[a-z0-9]+", text)
    if not nouns & set(tokens):
        return False
    if isinstance(phrase.quantity, int):
        count = words.COUNT_WORDS[phrase.quantity]
        return count in tokens or (phrase.quantity == 2 and "pair" in tokens)
    if phrase.size is not None and not set(words.SIZE_WORDS[phrase.size]) & set(tokens):
        return False
    return True


def test_paraphrases_keep_every_phrase_and_agree_in_number():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        claims = _random_claims(rng)
        text = paraphrase.paraphrase(claims, rng)
        for claim in claims:
            assert _mentions(text, claim.subject), (text, claim)
            if claim.kind == "relation":
                assert _mentions(text, claim.target), (text, claim)


@pytest.mark.parametrize("plural", [False, True])
def test_words_agree_with_the_phrase_they_refer_to(plural):
    subject = semantics.Phrase(3 if plural else "a", None, "zebra")
    target = semantics.Phrase(2 if plural else "the", None, "bear")
    rng = np.random.default_rng(4)
    own = {"its_t": "their", "it_t": "them", "has_t": "have", "be_s": "are"}
    other = {"its_t": "its", "it_t": "it", "has_t": "has", "be_s": "is"}
    if not plural:
        own, other = other, own
    for templates in paraphrase.INVERSE.values():
        for template in itertools.chain(*templates.values()):
            tokens = paraphrase._fill(template, subject, target, rng).split()
            for key, word in own.items():
                if "{" + key + "}" in template:
                    assert word in tokens and other[key] not in tokens, (template, tokens)
    claim = semantics.Claim("relation", subject, "left", target)
    for _ in range(200):
        text = paraphrase.relation_clause(claim, rng, "clause")
        first = text.split()[0]
        if first in ("three", "two", "a", "the"):  # "S is/are ..." or "T is/are ..."
            verb = next(t for t in text.split() if t in ("is", "are", "has", "have"))
            assert verb in (("are", "have") if plural else ("is", "has")), text


@pytest.mark.parametrize("relation", ["left", "right", "above", "below"])
def test_inverse_templates_name_the_target_first(relation):
    """ "T with S to its left" and the like: the target is the phrase the words hang on."""
    subject = semantics.Phrase("a", None, "zebra")
    target = semantics.Phrase("a", None, "bear")
    rng = np.random.default_rng(2)
    for form, templates in paraphrase.INVERSE[relation].items():
        for template in templates:
            text = paraphrase._fill(template, subject, target, rng)
            assert "zebra" in text and "bear" in text
            if template.startswith("{t}"):
                assert text.index("bear") < text.index("zebra"), (form, text)


def test_paraphrases_are_deterministic_and_varied():
    caption = "two sevens are on the right of the bear"
    first = paraphrase.paraphrases(caption, 6, seed=3)
    assert first == paraphrase.paraphrases(caption, 6, seed=3)
    assert len(set(first)) >= 4
    assert caption not in first
