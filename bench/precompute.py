"""Benchmark: precompute images/s against the image tower's pure compute rate (what I/O costs).

Writes a random corpus in the precomp layout and a random MiniLM-sized model workdir, then in one
run times (a) the compute alone: loading the model and the corpus as lateint.index.precompute does, then
`Inference.encode_images` over every image in the same batches and batch sharding, and (b)
`lateint.index.precompute` (the same loads and compute + the corpus fingerprint, TensorStore writes,
journal and finalize). Both sides include the model load and one compile of the image tower (the
compiles each side ran are counted and printed), so their ratio is what the INDEX costs on top of
the compute. Prints one JSON object.

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

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from lateint.checkpoint import save_model  # noqa: E402
from lateint.compiles import CompileCounter  # noqa: E402
from lateint.config import ModelConfig  # noqa: E402
from lateint.data.corpus import RegionCorpus  # noqa: E402
from lateint.data.precomp import write_precomp  # noqa: E402
from lateint.index.precompute import load_model_and_corpus, precompute  # noqa: E402
from lateint.inference import Inference, batch_ranges  # noqa: E402
from lateint.model import SplitEncoder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 4096, "N images")
flags.DEFINE_integer("regions", 36, "R")
flags.DEFINE_integer("feature_dim", 2048, "F")
flags.DEFINE_integer("split_layer", 3, "l (image tower depth)")
flags.DEFINE_integer("batch_size", 256, "images per jitted batch")
flags.DEFINE_enum("storage", "bfloat16", ["float32", "bfloat16", "int8"], "storage mode")


def _timed(function) -> tuple[float, int]:
    """(seconds, XLA backend compiles) of function()."""
    with CompileCounter() as compiles:
        started = time.perf_counter()
        function()
        seconds = time.perf_counter() - started
    return seconds, compiles.count


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
            captions=[f"caption {i}" for i in range(n)],
            caption_image=np.arange(n),
            image_ids=[f"img{i}" for i in range(n)],
        )
        write_precomp(os.path.join(root, "data"), "test", corpus)
        config = ModelConfig(
            num_layers=FLAGS.split_layer + 1,
            split_layer=FLAGS.split_layer,
            region_feature_dim=f,
            max_regions=r,
        )
        model = SplitEncoder(config)
        save_model(os.path.join(root, "model"), model)

        model_dir, data_dir = os.path.join(root, "model"), os.path.join(root, "data")
        batch = FLAGS.batch_size

        def compute():  # lateint.index.precompute's loads and encode loop, without the store
            loaded, _, loaded_corpus = load_model_and_corpus(model_dir, data_dir, "test")
            mesh = Mesh(np.array(jax.devices()), ("data",))
            sharding = NamedSharding(mesh, PartitionSpec("data"))
            inference = Inference(loaded, batch_sharding=sharding)
            for start, stop in batch_ranges(n, batch):
                inference.encode_images(
                    np.asarray(loaded_corpus.regions[start:stop], np.float32),
                    np.asarray(loaded_corpus.boxes[start:stop], np.float32),
                    loaded_corpus.region_mask[start:stop],
                    batch,
                )

        compute_seconds, compute_compiles = _timed(compute)
        precompute_seconds, precompute_compiles = _timed(
            lambda: precompute(
                model_dir, data_dir, "test", os.path.join(root, "index"), FLAGS.storage, batch
            )
        )
        print(
            json.dumps(
                {
                    "bench": "precompute",
                    "images": n,
                    "regions": r,
                    "hidden": config.hidden_size,
                    "image_tower_layers": FLAGS.split_layer,
                    "storage": FLAGS.storage,
                    "batch_size": batch,
                    "compute_images_per_s": round(n / compute_seconds, 1),
                    "precompute_images_per_s": round(n / precompute_seconds, 1),
                    "precompute_over_compute_time": round(precompute_seconds / compute_seconds, 3),
                    "compiles": {"compute": compute_compiles, "precompute": precompute_compiles},
                    "includes": {
                        "compute_images_per_s": "load_model + load_corpus (as lateint.index.precompute) + "
                        "one compile + encode_images of every batch",
                        "precompute_images_per_s": "lateint.index.precompute end to end: the same loads, "
                        "compile and encode + corpus fingerprint + "
                        "TensorStore writes (fsync) + journal + finalize",
                        "precompute_over_compute_time": "precompute seconds / compute seconds: both "
                        "include model load and one compile",
                    },
                }
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
