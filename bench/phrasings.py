r"""Queries in phrasings the scenes generator never writes: does the text side generalise?

    python bench/phrasings.py --workdir=runs/scenes/model --index=runs/scenes/index \
        --data=runs/scenes/data --split=test [--per_template=200]

For scenes of the split, relation claims true of the scene and false of its group partner are
worded with held-out templates (inverse constructions "a zebra with a 7 on its left", other
relation words "on top of", "underneath", size words "tiny" / "huge", imperative queries "show
me ..."), none of which appear in lateint.data.captions. The truth of each query is known from
its claim (lateint.data.semantics), so the bench reports, per template family and for the
generator's own wording of the same claims: partner accuracy of the global, MaxSim and joint
scores, and oracle R@1 of the staged pipeline. Prints one JSON line per family.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from lateint import relational_metrics  # noqa: E402
from lateint.data import captions as words  # noqa: E402
from lateint.data import load_corpus, scenes, semantics  # noqa: E402
from lateint.evaluation.harness import Evaluation  # noqa: E402
from lateint.evaluation.protocols import Settings  # noqa: E402
from lateint.index.store import ActivationStore  # noqa: E402
from lateint.inference import Inference  # noqa: E402
from lateint.ranking import maxsim_matrix  # noqa: E402
from lateint.serve.searcher import Searcher  # noqa: E402

FLAGS = flags.FLAGS
OPPOSITE_SIDE = {"left": "right", "right": "left", "above": "below", "below": "above"}
HELD_OUT = {
    # "S r T" said from T's side: "T with S on its left" means S left of T.
    "inverse": {
        "left": "{t} with {s} on its left",
        "right": "{t} with {s} on its right",
        "above": "{t} with {s} above it",
        "below": "{t} with {s} underneath it",
    },
    "other_words": {
        "left": "{s} further left than {t}",
        "right": "{s} further right than {t}",
        "above": "{s} on top of {t}",
        "below": "{s} underneath {t}",
    },
    "imperative": {
        "left": "show me {s} to the left of {t}",
        "right": "find {s} right of {t}",
        "above": "show me a picture where {s} is above {t}",
        "below": "I am looking for {s} below {t}",
    },
}
SIZE_HELD_OUT = {"small": "tiny", "large": "huge"}


def _noun_phrase(phrase: semantics.Phrase, size_words: dict, rng) -> str:
    size = "" if phrase.size is None else size_words[phrase.size] + " "
    noun = phrase.class_name
    if noun.isdigit():
        noun = noun if rng.random() < 0.5 else words.DIGIT_WORDS[int(noun)]
    text = size + noun
    return ("an " if text[0] in "aeio" or text.startswith("8") else "a ") + text


def make_queries(records: list, truth: semantics.SceneTruth, per_template: int, seed: int):
    """[(family, text, claim, scene, partner)]: claims true of the scene, false of a partner."""
    rng = np.random.default_rng(seed)
    by_group = {}
    for index, record in enumerate(records):
        by_group.setdefault(record["group"], []).append(index)
    found = []
    for index in rng.permutation(len(records)):
        objects = records[index]["objects"]
        partners = [other for other in by_group[records[index]["group"]] if other != index]
        if not partners:
            continue
        first, second = rng.choice(len(objects), size=2, replace=False)
        a, b = objects[first], objects[second]
        if a["class"] == b["class"]:
            continue
        for relation in ("left", "right", "above", "below"):
            sized = rng.random() < 0.5
            claim = semantics.Claim(
                "relation",
                semantics.Phrase("a", a["size"] if sized else None, a["class"]),
                relation,
                semantics.Phrase("a", None, b["class"]),
            )
            here = truth.subset(np.array([index])).claim_holds(claim)[0]
            there = truth.subset(np.array(partners)).claim_holds(claim)
            if here and not there.any():
                found.append((claim, int(index), int(partners[0]), sized))
                break
        if len(found) >= per_template:
            break
    queries = []
    for claim, scene, partner, sized in found:
        for family, templates in HELD_OUT.items():
            size_words = SIZE_HELD_OUT if sized else {}
            text = templates[claim.relation].format(
                s=_noun_phrase(claim.subject, size_words, rng),
                t=_noun_phrase(claim.target, size_words, rng),
            )
            queries.append((family, text, claim, scene, partner))
        generator = {"small": "small", "large": "large"}
        phrase = words.RELATION_PHRASES[claim.relation][0]
        queries.append(
            (
                "generator",
                f"{_noun_phrase(claim.subject, generator, rng)} {phrase} "
                f"{_noun_phrase(claim.target, generator, rng)}",
                claim,
                scene,
                partner,
            )
        )
    return queries


def run(workdir: str, index: str, data: str, split: str, per_template: int) -> list[dict]:
    corpus = load_corpus(data, split)
    records = scenes.read_records(data, split, corpus.image_ids)
    truth = semantics.SceneTruth.from_records(records)
    queries = make_queries(records, truth, per_template, seed=0)
    evaluation = Evaluation(
        workdir, data, split, Settings(sample_queries=0, latency_queries=1, max_queries=1)
    )
    inference = Inference(evaluation.model)
    texts = [text for _, text, _, _, _ in queries]
    token_ids, token_mask = evaluation.tokenizer.encode(texts)
    text = inference.encode_text(token_ids, token_mask, 128)
    store = ActivationStore.open(index)
    concepts = store.read_concepts(0, store.num_images)
    region_mask = store.read_region_mask(0, store.num_images)
    image_global = store.read_global(0, store.num_images)
    scene = np.array([q[3] for q in queries])
    partner = np.array([q[4] for q in queries])
    stored_scene, mask_scene = store.gather(scene)
    stored_partner, mask_partner = store.gather(partner)
    scores = {
        "global": (
            np.sum(text.global_vector * image_global[scene], -1),
            np.sum(text.global_vector * image_global[partner], -1),
        ),
        "maxsim": tuple(
            np.array(
                [
                    maxsim_matrix(
                        text.concepts[i : i + 1],
                        text.mask[i : i + 1],
                        concepts[rows[i] : rows[i] + 1],
                        region_mask[rows[i] : rows[i] + 1],
                    )[0, 0]
                    for i in range(len(queries))
                ]
            )
            for rows in (scene, partner)
        ),
        "joint": (
            inference.joint_scores(text.activations, text.mask, stored_scene, mask_scene, 128),
            inference.joint_scores(text.activations, text.mask, stored_partner, mask_partner, 128),
        ),
    }
    searcher = Searcher(
        evaluation.model,
        evaluation.meta,
        store,
        evaluation.tokenizer,
        evaluation.buckets,
        first_stages=["exact", "exact_global"],
    )
    results = searcher.search(
        texts, k=1, n=evaluation.settings.n, K=evaluation.settings.K, first_stage="exact"
    )
    top1 = np.array([result.hits[0].index for result in results])
    families = np.array([q[0] for q in queries])
    lines = []
    for family in list(HELD_OUT) + ["generator"]:
        rows = np.flatnonzero(families == family)
        line = {
            "family": family,
            "queries": int(rows.size),
            "example": texts[rows[0]] if rows.size else None,
        }
        for name, (own, other) in scores.items():
            line[f"partner_accuracy/{name}"] = relational_metrics.partner_accuracy(
                own[rows], other[rows]
            )["partner_accuracy"]
        line["staged_oracle_r1"] = float(
            100.0
            * np.mean(
                [
                    truth.subset(np.array([top1[row]])).claim_holds(queries[row][2])[0]
                    for row in rows
                ]
            )
        )
        lines.append(line)
    return lines


def main(argv):
    del argv
    for line in run(FLAGS.workdir, FLAGS.index, FLAGS.data, FLAGS.split, FLAGS.per_template):
        print(json.dumps(line))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Training workdir.")
    flags.DEFINE_string("index", None, "INDEX of the split.")
    flags.DEFINE_string("data", None, "Scenes corpus directory.")
    flags.DEFINE_string("split", "test", "Split.")
    flags.DEFINE_integer("per_template", 200, "Claims worded by every template family.")
    flags.mark_flags_as_required(["workdir", "index", "data"])
    app.run(main)
