r"""Evaluates one model: recall, per-stage latency and bytes per image of every scorer.

    python -m lateint.evaluation.main --workdir=DIR --index=INDEX --data=DATA --split=test \
        [--out=OUT] [--protocol=all|full|1k5fold|5k] [--sample_queries=3] [--n=256] [--K=32] \
        [--first_stages=concepts,sq,permutation,exact] [--max_queries=1000] \
        [--max_exhaustive_queries=200] [--max_exhaustive_pairs=100000] \
        [--num_images=1000,10000,100000 [--scale_dir=OUT/scaling] [--distractor_seed=...]]

Prints sample queries with their top-5 from the staged pipeline, then the recall table. With
--out: OUT/results.json (one object per scorer x N), OUT/results.md (tables and notes),
OUT/rsum_latency.png, and OUT/n{N}.json per N (reused by a rerun with the same settings unless
--rerun). --num_images: N values for distractor scaling (lateint.evaluation.distractors): the INDEX's own N
uses INDEX; other N get SCALE_DIR/n{N}/index = the split's images + generated distractors
(generation, precompute and first stages skip what an earlier run finished).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
from absl import app, flags, logging

from lateint import storage
from lateint.data import options as data_options
from lateint.evaluation import distractors, report
from lateint.evaluation.harness import Evaluation
from lateint.evaluation.protocols import PROTOCOLS, Settings
from lateint.index import manifest as manifest_lib
from lateint.index.first_stage import BUILD_NAMES
from lateint.index.store import ActivationStore

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a binary, so importing `run` claims no flag names."""
    flags.DEFINE_string("workdir", None, "Training workdir (model config + checkpoints).")
    flags.DEFINE_string("index", None, "Finished INDEX of the split (lateint.index.precompute).")
    data_options.define_flags()  # --data and the shared --data_* reader options
    flags.DEFINE_string("split", "test", "Split whose captions are the queries.")
    flags.DEFINE_enum(
        "protocol",
        "all",
        ("all",) + PROTOCOLS,
        "full: rank against every INDEX image; 1k5fold / 5k: COCO protocols over "
        "the split's images; all: every one that is defined.",
    )
    flags.DEFINE_string("out", None, "Output directory (JSON, Markdown, PNG).")
    flags.DEFINE_integer("sample_queries", 3, "Sample queries printed with their top 5.")
    flags.DEFINE_integer(
        "max_queries", 1000, "Text->image queries (evenly spaced); 0: every caption."
    )
    flags.DEFINE_integer(
        "max_exhaustive_queries", 200, "Most queries of the exhaustive joint model."
    )
    flags.DEFINE_integer(
        "max_exhaustive_pairs",
        100_000,
        "Most (query, image) pairs of the exhaustive joint model per direction.",
    )
    flags.DEFINE_integer("latency_queries", 20, "Single queries timed per scorer (median).")
    flags.DEFINE_list(
        "first_stages",
        list(BUILD_NAMES),
        "First stages of the staged pipeline (also 'refined', which needs no build).",
    )
    flags.DEFINE_integer("n", 256, "Staged pipeline: first-stage candidates.")
    flags.DEFINE_integer("K", 32, "Staged pipeline: images reranked by the joint layers.")
    flags.DEFINE_integer(
        "batch_size",
        256,
        "Captions per text-tower call; images per precompute batch of the distractor indexes.",
    )
    flags.DEFINE_list(
        "num_images", [], "Corpus sizes N for distractor scaling (default: INDEX's own N)."
    )
    flags.DEFINE_string("scale_dir", None, "Distractor corpora and indexes (default OUT/scaling).")
    flags.DEFINE_integer(
        "distractor_seed", -1, "Seed of the distractor scenes (-1: the corpus's seed + 1)."
    )
    flags.DEFINE_bool("rerun", False, "Re-evaluate N values whose OUT/n{N}.json exists.")
    flags.DEFINE_bool(
        "full_tables",
        False,
        "Print every table (protocols, speedups, notes); "
        "by default a short summary (the full tables go to OUT/results.md).",
    )
    flags.mark_flags_as_required(["workdir", "index", "data"])


def _cached(path: str, key: dict):
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        payload = json.load(handle)
    return payload if payload.get("key") == key else None


def _scaled_index(
    evaluation: Evaluation, index_dir: str, count: int, options: dict, timings: dict
) -> str:
    """INDEX itself when it holds `count` images, else the distractor index of that size."""
    store = ActivationStore.open(index_dir)
    if store.num_images == count:
        return index_dir
    if not options["scale_dir"]:
        raise ValueError(
            f"--num_images={count}: differs from INDEX's {store.num_images} images, "
            "so distractor indexes are built: pass --scale_dir or --out"
        )
    seed = options["distractor_seed"]
    if seed < 0:
        seed = (distractors.corpus_seed(options["data"]) or 0) + 1
    most = max(options["sizes"]) - evaluation.corpus.num_images
    began = time.perf_counter()
    pool = distractors.ensure_pool(options["scale_dir"], most, seed, options["data"])
    timings["pool"] = time.perf_counter() - began
    scaled, seconds = distractors.ensure_scaled_index(
        options["workdir"],
        options["data"],
        options["split"],
        count,
        options["scale_dir"],
        pool,
        store.storage_dtype,
        options["first_stages"],
        options["batch_size"],
    )
    timings.update(seconds)
    return scaled


def index_digest(index_dir: str) -> str:
    """A digest of every JSON record in INDEX (manifest, first-stage records): a rebuilt stage
    or another storage mode changes it, so cached results are never reused for them."""
    digest = hashlib.sha256()
    for name in storage.list_files(index_dir):  # local or object storage
        if name.endswith(".json"):
            digest.update(name.encode())
            digest.update(storage.read_bytes(storage.join(index_dir, *name.split("/"))))
    return digest.hexdigest()[:16]


def run(
    workdir: str,
    index_dir: str,
    data: str,
    split: str,
    settings: Settings,
    out: str | None = None,
    sizes=(),
    scale_dir: str | None = None,
    distractor_seed: int = -1,
    rerun: bool = False,
) -> tuple[list, list]:
    """Evaluates INDEX (and distractor indexes of the `sizes`); writes OUT. Returns
    (records, samples) where samples are the first evaluated index's."""
    evaluation = Evaluation(workdir, data, split, settings)
    own = ActivationStore.open(index_dir).num_images
    sizes = sorted({int(size) for size in sizes} or {own})
    options = dict(
        workdir=workdir,
        data=data,
        split=split,
        sizes=sizes,
        scale_dir=scale_dir or (os.path.join(out, "scaling") if out else None),
        distractor_seed=distractor_seed,
        first_stages=list(settings.first_stages),
        batch_size=settings.batch_size,
    )
    key = json.loads(
        json.dumps(
            dict(  # as a JSON round trip returns it (tuples -> lists)
                dataclasses.asdict(settings),
                fingerprint=evaluation.meta["fingerprint"],
                data=os.path.abspath(data),
                split=split,
                index=storage.absolute(index_dir),
                index_state=index_digest(index_dir),
                **data_options.cache_key(data),
            )
        )
    )
    records, samples = [], None
    for count in sizes:
        path = os.path.join(out, f"n{count}.json") if out else None
        payload = None if rerun else _cached(path, dict(key, num_images=count))
        if payload:
            logging.info("N=%d: reusing %s (--rerun re-evaluates)", count, path)
        else:
            timings = {}
            scaled = _scaled_index(evaluation, index_dir, count, options, timings)
            began = time.perf_counter()
            found, found_samples = evaluation.evaluate_index(scaled)
            timings["evaluate"] = time.perf_counter() - began
            logging.info(
                "N=%d: %s",
                count,
                ", ".join(f"{name} {value:.0f} s" for name, value in timings.items()),
            )
            payload = dict(
                key=dict(key, num_images=count),
                records=found,
                samples=found_samples,
                seconds=timings,
            )
            if path:
                report.write_json(path, payload)
        records += payload["records"]
        samples = samples if samples is not None else payload["samples"]
    if out:
        report.write_json(
            os.path.join(out, "results.json"),
            {"settings": key, "records": records, "samples": samples},
        )
        with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as handle:
            handle.write(report.markdown(records))
        report.plot(records, os.path.join(out, "rsum_latency.png"))
    return records, samples


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("devices: %s", jax.devices())
    settings = Settings(
        n=FLAGS.n,
        K=FLAGS.K,
        first_stages=tuple(FLAGS.first_stages),
        protocol=FLAGS.protocol,
        max_queries=FLAGS.max_queries,
        max_exhaustive_queries=FLAGS.max_exhaustive_queries,
        max_exhaustive_pairs=FLAGS.max_exhaustive_pairs,
        latency_queries=FLAGS.latency_queries,
        sample_queries=FLAGS.sample_queries,
        batch_size=FLAGS.batch_size,
    )
    allowed = list(BUILD_NAMES) + ["refined"]
    unknown = [name for name in settings.first_stages if name not in allowed]
    if unknown:
        raise app.UsageError(f"--first_stages: expected names among {allowed}, got {unknown}")
    records, samples = manifest_lib.exit_on_refusal(  # a refused INDEX: one line, exit 2
        "lateint.evaluation.main",
        run,
        FLAGS.workdir,
        FLAGS.index,
        data_options.from_flags(),
        FLAGS.split,
        settings,
        FLAGS.out,
        FLAGS.num_images,
        FLAGS.scale_dir,
        FLAGS.distractor_seed,
        FLAGS.rerun,
    )
    if jax.process_index() != 0:
        return
    if FLAGS.full_tables:
        print("Sample queries (staged pipeline, top 5):")
        print(report.samples_text(samples))
        print()
        print(report.markdown(records))
    else:
        print(report.summary(records, samples))
    if FLAGS.out:
        print(f"wrote {FLAGS.out}/results.json, results.md, rsum_latency.png")


if __name__ == "__main__":
    define_flags()
    app.run(main)
