"""Benchmark: storage mode of the activations vs joint-score recall. Prints one JSON object.

For each mode (float32, bfloat16, int8) the split is precomputed into its own INDEX and the
staged pipeline (exact MaxSim first stage -> top K -> joint layers over the stored, decoded
activations) is evaluated on the same queries; the JSON reports bytes per stored region and the
change in text->image R@10 against float32, in one run.

  python bench/storage_modes.py --workdir=runs/scenes/model --data=runs/scenes/data --split=dev
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from lateint.checkpoint import read_model_config  # noqa: E402
from lateint.evaluation.harness import Evaluation  # noqa: E402
from lateint.evaluation.protocols import Settings  # noqa: E402
from lateint.index import codecs  # noqa: E402
from lateint.index.precompute import precompute  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir.")
flags.DEFINE_string("data", None, "Corpus directory.")
flags.DEFINE_string("split", "dev", "Split to index and query.")
flags.DEFINE_string(
    "out",
    "/tmp/bench_storage_modes",
    "Where the per-mode indexes go (kept, so a rerun only evaluates).",
)
flags.DEFINE_list("modes", ["float32", "bfloat16", "int8"], "Storage modes; float32 first.")
flags.DEFINE_integer("max_queries", 1000, "Captions used as queries (evenly spaced).")
flags.DEFINE_integer("K", 32, "Images reranked by the joint layers.")
flags.DEFINE_integer("n", 256, "First-stage candidates.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    flags.mark_flags_as_required(["workdir", "data"])
    logging.set_verbosity(logging.WARNING)
    stored_dim = read_model_config(FLAGS.workdir).stored_dim
    settings = Settings(
        n=FLAGS.n,
        K=FLAGS.K,
        first_stages=("exact",),
        protocol="full",
        max_queries=FLAGS.max_queries,
        max_exhaustive_queries=1,
        latency_queries=3,
        sample_queries=0,
        recall_queries=1,
    )
    evaluation = Evaluation(FLAGS.workdir, FLAGS.data, FLAGS.split, settings)
    modes = {}
    for mode in FLAGS.modes:
        index_dir = os.path.join(FLAGS.out, mode)
        precompute(FLAGS.workdir, FLAGS.data, FLAGS.split, index_dir, mode)
        records, _ = evaluation.evaluate_index(index_dir)
        staged = next(r for r in records if r["scorer"].startswith("staged"))
        recall = staged["recall"]["full"]
        modes[mode] = {
            "bytes_per_region": codecs.bytes_per_region(mode, stored_dim),
            "t2i_r1": recall["t2i_r1"],
            "t2i_r10": recall["t2i_r10"],
            "scorer": staged["scorer"],
        }
    reference = modes[FLAGS.modes[0]]["t2i_r10"]
    for values in modes.values():
        values["t2i_r10_change_vs_" + FLAGS.modes[0]] = round(values["t2i_r10"] - reference, 3)
    print(
        json.dumps(
            {
                "bench": "storage_modes",
                "split": FLAGS.split,
                "queries": int(evaluation.queries.size),
                "stored_dim": stored_dim,
                "K": FLAGS.K,
                "n": FLAGS.n,
                "modes": modes,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
