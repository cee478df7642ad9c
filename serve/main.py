r"""The online server: HTTP JSON search, demo page, Prometheus metrics.

  python -m serve.main --workdir=runs/scenes/model --index=runs/scenes/index --port=8080 \
      [--host=127.0.0.1] [--images_dir=DIR] [--max_batch=16] [--max_wait_ms=5] [--max_queue=256]

Loads the model and the INDEX, compiles every shape bucket (logging the time), then serves
POST /search, GET /healthz, GET /metrics, GET /openapi.json and the demo page at /. SIGTERM or
Ctrl-C: stop accepting connections, answer the requests already received, exit 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import jax
import uvicorn
from absl import app, flags, logging

from serve import demo
from serve.app import ServerSettings, create_app
from serve.buckets import Buckets
from serve.searcher import Searcher

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoint (train.main).")
flags.DEFINE_string("index", None, "Finished INDEX directory (index.precompute).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8080, "Port to listen on.")
flags.DEFINE_string("images_dir", None, "Folder of {image_id}.png for the demo page (default: "
                    "images/ of the corpus named in the INDEX manifest's source.data).")
flags.DEFINE_string("tokenizer_dir", None, "HuggingFace BERT directory with the vocabulary "
                    "(default: all-MiniLM-L6-v2's, which every model here uses).")
flags.DEFINE_list("first_stages", None, "First stages to load (default: every one usable on the "
                  "INDEX; 'exact' and 'exact_global' always are).")
flags.DEFINE_string("default_first_stage", None, "Used when a request names none (default: "
                    "'concepts' if loaded, else 'exact').")
flags.DEFINE_list("query_length_buckets", ["16", "32", "64"], "Token buckets T.")
flags.DEFINE_list("query_batch_buckets", ["1", "4", "16"], "Query batch buckets B.")
flags.DEFINE_list("candidate_buckets", ["64", "256", "1024"],
                  "First-stage candidate buckets; the largest bounds a request's n.")
flags.DEFINE_list("rerank_buckets", ["16", "32", "64", "128"],
                  "Joint-layer candidate buckets; the largest bounds a request's K and k.")
flags.DEFINE_integer("default_n", 256, "n when a request gives none (raised to K).")
flags.DEFINE_integer("default_K", 32, "K when a request gives none (raised to k).")
flags.DEFINE_integer("max_batch", 16, "Queries per micro-batch (1 disables batching).")
flags.DEFINE_float("max_wait_ms", 5.0, "Longest wait of a request for its batch to fill.")
flags.DEFINE_integer("max_queue", 256, "Waiting requests beyond which /search answers 503.")
flags.DEFINE_integer("max_query_chars", 512, "Longest accepted query, in characters.")
flags.DEFINE_float("shutdown_timeout_s", 60.0, "Longest wait for in-flight requests at exit.")
flags.mark_flags_as_required(["workdir", "index"])


def _integers(values) -> tuple[int, ...]:
    return tuple(int(value) for value in values)


def _exit_cleanly(signal_number, frame):
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; ending
    # here with SystemExit(0) makes a SIGTERM'd server exit 0 (and a SIGTERM during start-up).
    raise SystemExit(0)


def serve(workdir: str, index_dir: str, host: str, port: int, buckets: Buckets,
          settings: ServerSettings, first_stages=None, default_first_stage=None,
          tokenizer_dir=None, shutdown_timeout_s: float = 60.0) -> None:
    """Loads, compiles and serves until SIGTERM/SIGINT."""
    searcher = Searcher.load(workdir, index_dir, buckets, first_stages, default_first_stage,
                             tokenizer_dir)
    if settings.images_dir is None:
        images_dir = demo.default_images_dir(index_dir, searcher.store.manifest)
        settings = dataclasses.replace(settings, images_dir=images_dir)
    logging.info("demo images from %s", settings.images_dir or "(none: no images/ found)")
    server = uvicorn.Server(uvicorn.Config(
        create_app(searcher, settings), host=host, port=port, log_level="info",
        timeout_graceful_shutdown=shutdown_timeout_s, lifespan="on"))
    logging.info("serving on http://%s:%d (batch %d, wait %.1f ms, queue %d)", host, port,
                 settings.max_batch, settings.max_wait_ms, settings.max_queue)
    server.run()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    logging.info("devices: %s", jax.devices())
    buckets = Buckets(query_lengths=_integers(FLAGS.query_length_buckets),
                      query_batches=_integers(FLAGS.query_batch_buckets),
                      candidates=_integers(FLAGS.candidate_buckets),
                      rerank=_integers(FLAGS.rerank_buckets),
                      default_n=FLAGS.default_n, default_K=FLAGS.default_K)
    images_dir = os.path.abspath(FLAGS.images_dir) if FLAGS.images_dir else None
    if images_dir is not None and not os.path.isdir(images_dir):
        raise app.UsageError(f"--images_dir={FLAGS.images_dir}: not a directory")
    settings = ServerSettings(max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
                              max_queue=FLAGS.max_queue, max_query_chars=FLAGS.max_query_chars,
                              images_dir=images_dir)
    serve(FLAGS.workdir, FLAGS.index, FLAGS.host, FLAGS.port, buckets, settings,
          FLAGS.first_stages, FLAGS.default_first_stage, FLAGS.tokenizer_dir,
          FLAGS.shutdown_timeout_s)


if __name__ == "__main__":
    app.run(main)
