"""Builds first-stage structures inside a finished INDEX.

    python -m lateint.index.build --index=INDEX --first_stage=concepts,sq,permutation,exact \\
        [--num_centroids=0] [--nprobe=8] [--sq_size=48] [--sq_quantization=64] \\
        [--permutation_size=32]

Reads the stored concept and global vectors through lateint.index.store and writes each stage under
INDEX/first_stage/<name>/ (see index/first_stage/). A refused INDEX (unfinished, damaged
manifest) prints one line naming the file and the field and exits with status 2.
"""

import jax
from absl import app, flags, logging

from lateint.index import manifest as manifest_lib
from lateint.index.first_stage import build as first_stage_build

FLAGS = flags.FLAGS
flags.DEFINE_string("index", None, "Finished INDEX directory (lateint.index.precompute output).")
flags.DEFINE_list(
    "first_stage", ["concepts"], f"Stages to build, any of {list(first_stage_build.BUILD_NAMES)}."
)
flags.DEFINE_integer("num_centroids", 0, "Concept centroids K; 0: 2^round(log2(4*sqrt(regions))).")
flags.DEFINE_integer("kmeans_iterations", 10, "Lloyd iterations (full-batch k-means).")
flags.DEFINE_integer("seed", 0, "k-means seed.")
flags.DEFINE_integer("nprobe", 8, "Default centroids probed per query word at search time.")
flags.DEFINE_integer("sq_size", 48, "Scalar quantization: components kept per image (of 2C).")
flags.DEFINE_integer("sq_quantization", 64, "Scalar quantization: factor before flooring.")
flags.DEFINE_integer("permutation_size", 32, "Deep permutations: prefix length.")
flags.mark_flag_as_required("index")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("devices: %s", jax.devices())
    options = {
        "concepts": {
            "num_centroids": FLAGS.num_centroids or None,
            "iterations": FLAGS.kmeans_iterations,
            "seed": FLAGS.seed,
            "nprobe": FLAGS.nprobe,
        },
        "sq": {"size": FLAGS.sq_size, "quantization": FLAGS.sq_quantization},
        "permutation": {"size": FLAGS.permutation_size},
    }
    if jax.process_index() != 0:
        return
    manifest_lib.exit_on_refusal(
        "lateint.index.build",
        first_stage_build.build_from_index,
        FLAGS.index,
        FLAGS.first_stage,
        options,
    )


if __name__ == "__main__":
    app.run(main)
