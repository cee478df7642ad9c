r"""The online server: HTTP JSON search, demo page, Prometheus metrics.

  python -m lateint.serve.main --workdir=runs/scenes/model --index=runs/scenes/index --port=8080 \
      [--host=127.0.0.1] [--images_dir=DIR] [--max_batch=16] [--max_wait_ms=5] [--max_queue=256]
      [--request_timeout_ms=2000] [--drain_s=2] [--compilation_cache_dir=DIR]
      [--[no]background_compile]

Loads the model and the INDEX, compiles the shapes that hold every request (at one query per
batch: the largest length and candidate buckets, and a default request's), then serves POST
/search, GET /healthz (readiness), GET /livez, GET /metrics, GET /openapi.json and the demo page
at /, while a background thread compiles the other buckets (--nobackground_compile: all of
them before serving). A request runs on the cheapest compiled bucket that holds it, never on a
compile; /healthz's `compile` field tells how far the background compile is. Compiled
executables are kept in --compilation_cache_dir, so the next start loads them. A refused INDEX
(unfinished, damaged, another model's) prints one line naming the file and the field and exits
2. SIGTERM or Ctrl-C: /healthz turns 503 and every response says
`Connection: close` for up to --drain_s (until no request is open), so connections already made
are answered and closed by the server, not reset; then the listener closes, the requests already
received are answered, and the process exits 0. A second signal stops at once.

Several hosts (docs/scaling.md): every process runs this binary with --distributed
--index_shards=all (and --coordinator_address=HOST:PORT --num_processes=P --process_id=i where
the cluster is not auto-detected); each holds the rows of its own devices' shards. Process 0
serves HTTP and leads; the others answer no HTTP, follow its batches (lateint.serve.multihost)
and exit when it stops.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import jax
import uvicorn
from absl import app, flags, logging

from lateint import distributed
from lateint.index import manifest as manifest_lib
from lateint.serve import compiled, demo, multihost
from lateint.serve.app import ServerSettings, create_app
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training workdir holding the checkpoint (lateint.train.main)."
)
flags.DEFINE_string("index", None, "Finished INDEX directory (lateint.index.precompute).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8080, "Port to listen on.")
flags.DEFINE_string(
    "images_dir",
    None,
    "Folder of {image_id}.png for the demo page (default: "
    "images/ of the corpus named in the INDEX manifest's source.data).",
)
flags.DEFINE_string(
    "tokenizer_dir",
    None,
    "HuggingFace BERT directory with the vocabulary "
    "(default: all-MiniLM-L6-v2's, which every model here uses).",
)
flags.DEFINE_list(
    "first_stages",
    None,
    "First stages to load (default: every one usable on the "
    "INDEX; 'exact', 'exact_global' and 'refined' always are).",
)
flags.DEFINE_string(
    "default_first_stage",
    None,
    "Used when a request names none (default: the first loaded of 'refined', 'concepts', 'exact').",
)
flags.DEFINE_list("query_length_buckets", ["16", "32", "64"], "Token buckets T.")
flags.DEFINE_list("query_batch_buckets", ["1", "4", "16"], "Query batch buckets B.")
flags.DEFINE_list(
    "candidate_buckets",
    ["64", "256", "1024"],
    "First-stage candidate buckets; the largest bounds a request's n.",
)
flags.DEFINE_list(
    "rerank_buckets",
    ["16", "32", "64", "128"],
    "Joint-layer candidate buckets; the largest bounds a request's K and k.",
)
flags.DEFINE_integer("default_n", 256, "n when a request gives none (raised to K).")
flags.DEFINE_integer("default_K", 32, "K when a request gives none (raised to k).")
flags.DEFINE_integer("max_batch", 16, "Queries per micro-batch (1 disables batching).")
flags.DEFINE_float("max_wait_ms", 5.0, "Longest wait of a request for its batch to fill.")
flags.DEFINE_integer("max_queue", 256, "Waiting requests beyond which /search answers 503.")
flags.DEFINE_integer("max_query_chars", 512, "Longest accepted query, in characters.")
flags.DEFINE_float(
    "request_timeout_ms",
    2000.0,
    "A search that cannot be answered within this "
    "gets a fast 503 (admission by expected queue time); 0: no deadline.",
)
flags.DEFINE_float(
    "drain_s",
    2.0,
    "After SIGTERM, keep answering (with Connection: close) for at "
    "most this long before the listener closes.",
)
flags.DEFINE_float("shutdown_timeout_s", 60.0, "Longest wait for in-flight requests at exit.")
flags.DEFINE_string(
    "test_hold_file",
    None,
    "Tests only: while this file exists the batch "
    "worker takes no batch, so requests stay queued until the test removes it.",
)
flags.DEFINE_boolean(
    "background_compile",
    True,
    "Serve once the shapes that hold every request "
    "are compiled; compile the other buckets in the background.",
)
flags.DEFINE_string(
    "compilation_cache_dir",
    compiled.default_cache_dir(),
    "Where compiled "
    "executables are kept between starts (JAX's persistent compilation cache); "
    "empty: none.",
)
flags.DEFINE_string(
    "index_shards",
    "1",
    "Devices the INDEX's image axis is split over: a number, or 'all' (every device of every "
    "process). Above 1 the brute-force first stages (refined, exact, exact_global) run per "
    "shard and the concept lists keep each process's rows; answers equal one device's.",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join jax.distributed first (cluster auto-detection, or --coordinator_address with "
    "--num_processes and --process_id): process 0 serves HTTP, the others follow its batches; "
    "needs --index_shards=all.",
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of jax.distributed's coordinator (process 0)."
)
flags.DEFINE_integer("num_processes", None, "--distributed: processes in all (default: detected).")
flags.DEFINE_integer("process_id", None, "--distributed: this process's index (default: detected).")
flags.mark_flags_as_required(["workdir", "index"])


KEEP_ALIVE_SECONDS = 75


def _integers(values) -> tuple[int, ...]:
    return tuple(int(value) for value in values)


def _exit_cleanly(signal_number, frame):
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; ending
    # here with SystemExit(0) makes a SIGTERM'd server exit 0 (and a SIGTERM during start-up).
    raise SystemExit(0)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains before the usual graceful shutdown.

    Draining: the app's readiness says "shutting down" and its responses carry Connection:
    close, while the listener stays open, until no HTTP request is open (checked every 0.1 s
    tick, after at least one tick) or `drain_s` have passed. uvicorn's own shutdown closes the
    listener and every idle keep-alive connection at once, so a client sending on one of them, or
    a connection still in the accept backlog, was reset.
    """

    def __init__(self, config: uvicorn.Config, readiness, drain_s: float):
        super().__init__(config)
        self.readiness = readiness
        self.drain_s = float(drain_s)
        self._drain_until: float | None = None

    def handle_exit(self, sig, frame) -> None:
        if self._drain_until is None and self.drain_s > 0:
            self._captured_signals.append(sig)  # re-raised after shutdown: main exits 0
            self._drain_until = time.monotonic() + self.drain_s
            self.readiness.draining = True
            logging.info("signal %d: draining for up to %.1f s", sig, self.drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            open_requests = len(self.server_state.tasks)
            if open_requests == 0 or time.monotonic() >= self._drain_until:
                logging.info("drained (%d requests still open); shutting down", open_requests)
                self.should_exit = True
        return await super().on_tick(counter)


def serve(
    workdir: str,
    index_dir: str,
    host: str,
    port: int,
    buckets: Buckets,
    settings: ServerSettings,
    first_stages=None,
    default_first_stage=None,
    tokenizer_dir=None,
    shutdown_timeout_s: float = 60.0,
    drain_s: float = 2.0,
    background_compile: bool = True,
    index_shards="1",
) -> None:
    """Loads, compiles and serves until SIGTERM/SIGINT (see the module docstring). Under
    jax.distributed, process 0 serves and leads, the others follow (serve.multihost)."""
    searcher = manifest_lib.exit_on_refusal(
        "lateint.serve.main",
        Searcher.load,
        workdir,
        index_dir,
        buckets,
        first_stages,
        default_first_stage,
        tokenizer_dir,
        background_compile,
        index_shards,
    )
    leader = None
    if jax.process_count() > 1:
        if jax.process_index() != 0:
            try:
                multihost.follow(searcher)
            except Exception as error:  # the leader (and the coordination service) is gone
                logging.error(
                    "process %d: the leader is gone (%s); exiting with status 1",
                    jax.process_index(),
                    error,
                )
                logging.flush()
                os._exit(1)
            finally:
                searcher.close()
            return
        leader = multihost.Leader(searcher)
    if settings.images_dir is None:
        images_dir = demo.default_images_dir(index_dir, searcher.store.manifest)
        settings = dataclasses.replace(settings, images_dir=images_dir)
    logging.info("demo images from %s", settings.images_dir or "(none: no images/ found)")
    application = create_app(searcher, settings)
    server = DrainingServer(
        uvicorn.Config(
            application,
            host=host,
            port=port,
            log_level="info",
            access_log=False,  # a log
            # line per request costs the event loop CPU under load; /metrics counts them all
            timeout_graceful_shutdown=shutdown_timeout_s,
            lifespan="on",
            # Longer than clients keep idle connections (httpx: 5 s, uvicorn's default too): a
            # server closing an idle keep-alive connection as the client reuses it resets that
            # request (bench/load.py saw one ReadError per phase at concurrency 128 and 400).
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        ),
        application.state.readiness,
        drain_s,
    )
    logging.info(
        "serving on http://%s:%d (batch %d, wait %.1f ms, queue %d, deadline %g ms)",
        host,
        port,
        settings.max_batch,
        settings.max_wait_ms,
        settings.max_queue,
        settings.request_timeout_ms,
    )
    try:
        server.run()
    finally:
        if leader is not None:
            leader.stop()
        searcher.close()
        if leader is not None and leader.broken:
            # jax.distributed's exit barrier would wait for the dead process: end, status 1.
            logging.error("exiting with status 1: %s", leader.broken)
            logging.flush()
            os._exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    if FLAGS.distributed:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
        raise app.UsageError(
            "--coordinator_address, --num_processes, --process_id need --distributed"
        )
    if FLAGS.compilation_cache_dir:
        logging.info(
            "compilation cache: %s", compiled.enable_persistent_cache(FLAGS.compilation_cache_dir)
        )
    logging.info("devices: %s", jax.devices())
    buckets = Buckets(
        query_lengths=_integers(FLAGS.query_length_buckets),
        query_batches=_integers(FLAGS.query_batch_buckets),
        candidates=_integers(FLAGS.candidate_buckets),
        rerank=_integers(FLAGS.rerank_buckets),
        default_n=FLAGS.default_n,
        default_K=FLAGS.default_K,
    )
    index_shards = FLAGS.index_shards
    if jax.process_count() > 1 and index_shards not in ("all", str(len(jax.devices()))):
        raise app.UsageError(
            f"--index_shards={index_shards}: with {jax.process_count()} processes the INDEX is "
            f"split over every device of every process: expected 'all' ({len(jax.devices())})"
        )
    if index_shards != "all":
        try:
            index_shards = int(index_shards)
        except ValueError:
            raise app.UsageError(
                f"--index_shards: expected a number or 'all', got {index_shards!r}"
            ) from None
        if not 1 <= index_shards <= len(jax.devices()):
            raise app.UsageError(
                f"--index_shards={index_shards}: JAX sees {len(jax.devices())} devices"
            )
    images_dir = os.path.abspath(FLAGS.images_dir) if FLAGS.images_dir else None
    if images_dir is not None and not os.path.isdir(images_dir):
        raise app.UsageError(f"--images_dir={FLAGS.images_dir}: not a directory")
    settings = ServerSettings(
        max_batch=FLAGS.max_batch,
        max_wait_ms=FLAGS.max_wait_ms,
        max_queue=FLAGS.max_queue,
        max_query_chars=FLAGS.max_query_chars,
        images_dir=images_dir,
        request_timeout_ms=FLAGS.request_timeout_ms,
        hold_file=FLAGS.test_hold_file,
    )
    serve(
        FLAGS.workdir,
        FLAGS.index,
        FLAGS.host,
        FLAGS.port,
        buckets,
        settings,
        FLAGS.first_stages,
        FLAGS.default_first_stage,
        FLAGS.tokenizer_dir,
        FLAGS.shutdown_timeout_s,
        FLAGS.drain_s,
        FLAGS.background_compile,
        index_shards,
    )


if __name__ == "__main__":
    app.run(main)
