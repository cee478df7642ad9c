r"""Recall drift of the concept inverted list after lateint.index.add with the old dictionary.

  python bench/live_index.py [--images=1000] [--growth=10] [--dir=/tmp/lateint_live_bench]

Synthetic clustered concepts (lateint.index.first_stage.synthetic): the dictionary is trained on the
first `images` images (A), then growth x images are added with that dictionary (what lateint.index.add
does), and the first stage's recall of exact MaxSim's top 10 is compared with a rebuild over
every image with a retrained dictionary of the same K (what lateint.index.compact --recluster gives;
'drift' = old - reclustered) and with K from lateint.index.build's rule for the grown corpus. Two kinds of
added images: 'same' (drawn from A's topics) and 'shifted' (half from topics A never saw).
Prints one JSON line per (kind, nprobe); ~1-2 min on 2 CPU cores at the defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lateint import retrieval_metrics  # noqa: E402
from lateint.index.first_stage import (  # noqa: E402
    ArraySource,
    add,
    build_stages,
    open_first_stage,
    synthetic,
)

_IMAGES = flags.DEFINE_integer("images", 1000, "Images the dictionary is trained on (A).")
_GROWTH = flags.DEFINE_integer("growth", 10, "Images added, as a multiple of A.")
_DIR = flags.DEFINE_string("dir", "/tmp/lateint_live_bench", "Scratch directory.")
REGIONS, DIM, TOPICS, QUERIES, TOP, CANDIDATES = 8, 32, 256, 200, 10, 100
NPROBES = (4, 8, 16)


def _added(kind: str, count: int, first_image: int) -> synthetic.SyntheticImages:
    topics = synthetic.topics(TOPICS, DIM, seed=0)
    if kind == "shifted":  # half the topics replaced by directions A never saw
        topics = np.concatenate([topics[: TOPICS // 2], synthetic.topics(TOPICS // 2, DIM, 7)])
    return synthetic.images(topics, count, REGIONS, seed=2, first_image=first_image)


def _recall(index_dir: str, queries, reference, nprobe: int) -> float:
    ids, _ = open_first_stage(index_dir, "concepts", nprobe=nprobe).search(queries, CANDIDATES)
    return retrieval_metrics.first_stage_recall(ids, reference)


def run(images: int, growth: int, scratch: str) -> list[dict]:
    topics = synthetic.topics(TOPICS, DIM, seed=0)
    first = synthetic.images(topics, images, REGIONS, seed=1)
    rows = []
    for kind in ("same", "shifted"):
        more = _added(kind, images * growth, images)
        union = synthetic.SyntheticImages(*(np.concatenate(pair) for pair in zip(first, more)))
        queries, _ = synthetic.queries(union, topics, QUERIES, 6, seed=3)
        folders = {
            name: os.path.join(scratch, kind, name) for name in ("live", "reclustered", "rebuilt")
        }
        shutil.rmtree(os.path.join(scratch, kind), ignore_errors=True)
        build_stages(folders["live"], ArraySource(*first), ["concepts"])
        add(folders["live"], ArraySource(*more), images)  # what lateint.index.add does
        live_stage = open_first_stage(folders["live"], "concepts")
        old_k, fit = live_stage.centroids.shape[0], live_stage.record["fit"]
        # lateint.index.compact --recluster: the same K retrained over every image; and a rebuild with
        # K from the rule for the grown corpus (lateint.index.build's default).
        build_stages(
            folders["reclustered"],
            ArraySource(*union),
            ["concepts"],
            {"concepts": {"num_centroids": old_k}},
        )
        build_stages(folders["rebuilt"], ArraySource(*union), ["concepts", "exact"])
        reference, _ = open_first_stage(folders["rebuilt"], "exact").search(queries, TOP)
        new_k = open_first_stage(folders["rebuilt"], "concepts").centroids.shape[0]
        for nprobe in NPROBES:
            recall = {
                name: _recall(folder, queries, reference, nprobe)
                for name, folder in folders.items()
            }
            rows.append(
                {
                    "bench": "live_index",
                    "added": kind,
                    "images_trained": images,
                    "images_total": union.concepts.shape[0],
                    "nprobe": nprobe,
                    "candidates": CANDIDATES,
                    "top": TOP,
                    "queries": QUERIES,
                    "centroids_old": old_k,
                    "centroids_rebuilt": new_k,
                    "recall_old_dictionary": round(recall["live"], 4),
                    "recall_reclustered": round(recall["reclustered"], 4),
                    "recall_rebuilt": round(recall["rebuilt"], 4),
                    "drift": round(recall["live"] - recall["reclustered"], 4),
                    "fit_trained": round(fit["trained"], 4),
                    "fit_added": round(fit["added"], 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run(_IMAGES.value, _GROWTH.value, _DIR.value)


if __name__ == "__main__":
    app.run(main)
