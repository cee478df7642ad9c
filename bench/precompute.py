"""Benchmark: precompute images/s against the image tower's pure compute rate (what I/O costs).

Writes a random corpus in the precomp layout and a random MiniLM-sized model workdir, then in one
run times (a) `Inference.encode_images` alone over the corpus and (b) `index.precompute` (the
same compute + TensorStore writes + journal). Prints one JSON object.

  python bench/precompute.py --images=4096 --storage=bfloat16
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from index.precompute import precompute  # noqa: E402
from lateint.checkpoint import save_model  # noqa: E402
from lateint.config import ModelConfig  # noqa: E402
from lateint.data.corpus import RegionCorpus, load_corpus  # noqa: E402
from lateint.data.precomp import write_precomp  # noqa: E402
from lateint.inference import Inference  # noqa: E402
from lateint.model import SplitEncoder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 4096, "N images")
flags.DEFINE_integer("regions", 36, "R")
flags.DEFINE_integer("feature_dim", 2048, "F")
flags.DEFINE_integer("split_layer", 3, "l (image tower depth)")
flags.DEFINE_integer("batch_size", 256, "images per jitted batch")
flags.DEFINE_enum("storage", "bfloat16", ["float32", "bfloat16", "int8"], "storage mode")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    root = tempfile.mkdtemp(prefix="bench_precompute_")
    try:
        rng = np.random.default_rng(0)
        n, r, f = FLAGS.images, FLAGS.regions, FLAGS.feature_dim
        corpus = RegionCorpus(
            regions=rng.normal(size=(n, r, f)).astype(np.float32),
            boxes=np.tile(np.array([0.1, 0.1, 0.5, 0.5, 0.16], np.float32), (n, r, 1)),
            region_counts=rng.integers(r // 2, r + 1, n).astype(np.int32),
            captions=[f"caption {i}" for i in range(n)], caption_image=np.arange(n),
            image_ids=[f"img{i}" for i in range(n)])
        write_precomp(os.path.join(root, "data"), "test", corpus)
        corpus = load_corpus(os.path.join(root, "data"), "test")
        config = ModelConfig(num_layers=FLAGS.split_layer + 1, split_layer=FLAGS.split_layer,
                             region_feature_dim=f, max_regions=r)
        model = SplitEncoder(config)
        save_model(os.path.join(root, "model"), model)

        inference = Inference(model)
        batch = FLAGS.batch_size
        inference.encode_images(corpus.regions[:batch], corpus.boxes[:batch],
                                corpus.region_mask[:batch], batch)  # compile
        started = time.perf_counter()
        inference.encode_images(np.asarray(corpus.regions), corpus.boxes, corpus.region_mask,
                                batch)
        compute_seconds = time.perf_counter() - started

        started = time.perf_counter()
        precompute(os.path.join(root, "model"), os.path.join(root, "data"), "test",
                   os.path.join(root, "index"), FLAGS.storage, batch)
        precompute_seconds = time.perf_counter() - started  # includes one compile + model load
        print(json.dumps({
            "bench": "precompute", "images": n, "regions": r, "hidden": config.hidden_size,
            "image_tower_layers": FLAGS.split_layer, "storage": FLAGS.storage,
            "compute_images_per_s": round(n / compute_seconds, 1),
            "precompute_images_per_s": round(n / precompute_seconds, 1),
            "precompute_over_compute_time": round(precompute_seconds / compute_seconds, 3),
        }))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
