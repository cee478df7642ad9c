"""Distractor corpora for scaling runs: a corpus split followed by generated distractor scenes.

    pool = ensure_pool(scale_dir, count=99_000, seed=1)         # scenes, images=False
    index_dir = ensure_scaled_index(workdir, data, "test", 10_000, scale_dir, pool)

Layout under SCALE_DIR (every step skips what a previous run finished, so a killed run resumes):

    pool/              `count` distractor scenes, precomp split 'test' of lateint.data.scenes
                       generated with another seed than the corpus (pool.json records both)
    n{N}/data/         precomp split SPLIT: the corpus split's N0 images, then the first N - N0
                       pool scenes (written .partial then renamed; done.json marks completion)
    n{N}/index/        INDEX over n{N}/data (lateint.index.precompute, itself resumable), with the
                       requested first stages built (lateint.index.build's functions)

Scenes are a function of (seed, split, group index), so the first D scenes of a larger pool are
the scenes a pool of D would hold: one pool serves every N. Distractors come from the 'test'
sprite pool (never the training sprites) with a different seed, so no distractor repeats a query's
scene. The index's image ids are the corpus split's ids followed by the distractors' ids, so the
first N0 rows of every scaled INDEX are the corpus split's images in order.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from lateint import atomic
from lateint.data import load_corpus, scene_features, scenes
from lateint.data.npy_writer import NpyStreamWriter
from lateint.data.precomp import precomp_paths
from lateint.index import precompute as precompute_lib
from lateint.index.first_stage import build as first_stage_build
from lateint.index.first_stage import records
from lateint.index.store import ActivationStore

logger = logging.getLogger(__name__)

POOL_SPLIT = "test"
POOL_FILE = "pool.json"
DONE_FILE = "done.json"
COPY_ROWS = 4096  # images copied per block when writing a scaled split


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def corpus_seed(data: str) -> int | None:
    """The seed of a scenes corpus (DATA/scenes_info.json), None for other corpora."""
    info = _read_json(os.path.join(data, "scenes_info.json"))
    return None if info is None else int(info["seed"])


def ensure_pool(scale_dir: str, count: int, seed: int, data: str | None = None) -> str:
    """Generates (or reuses) `count` distractor scenes in SCALE_DIR/pool; returns that directory.

    A pool of at least `count` scenes made with `seed` is reused. data: the corpus the
    distractors join; a scenes corpus made with the same seed is refused (its test scenes would
    come back as distractors).
    """
    if count < 1:
        raise ValueError(f"ensure_pool: count expected >= 1 distractors, got {count}")
    if data is not None and corpus_seed(data) == seed:
        raise ValueError(
            f"distractor seed {seed} equals the seed of {data}/scenes_info.json: "
            f"the distractors would repeat the corpus's own scenes; pick another "
            f"--distractor_seed"
        )
    pool_dir = os.path.join(scale_dir, "pool")
    record = _read_json(os.path.join(pool_dir, POOL_FILE))
    # Distractors get the corpus's own region features (its frozen encoder, or raw crops).
    encoder = scene_features.load_encoder(data) if data is not None else None
    features = "pixels" if encoder is None else encoder.fingerprint()
    if (
        record
        and record["seed"] == seed
        and record["count"] >= count
        and record.get("region_features", "pixels") == features
    ):
        logger.info(f"distractor pool {pool_dir}: reusing {record['count']} scenes (seed {seed})")
        return pool_dir
    os.makedirs(pool_dir, exist_ok=True)
    if os.path.exists(os.path.join(pool_dir, POOL_FILE)):
        os.remove(os.path.join(pool_dir, POOL_FILE))
    logger.info(f"distractor pool {pool_dir}: generating {count} scenes (seed {seed}, no images)")
    began = time.perf_counter()
    stats = scenes.generate_split(
        pool_dir, POOL_SPLIT, count, seed, images=False, progress_seconds=30.0
    )
    if encoder is not None:
        scene_features.encode_split(pool_dir, POOL_SPLIT, encoder)
    seconds = time.perf_counter() - began
    atomic.write_json(
        os.path.join(pool_dir, POOL_FILE),
        {
            "seed": seed,
            "count": count,
            "split": POOL_SPLIT,
            "seconds": seconds,
            "region_features": features,
            "mean_regions": stats["mean_regions"],
        },
        indent=1,
        sort_keys=True,
    )
    logger.info(f"distractor pool: {count} scenes in {seconds:.0f} s")
    return pool_dir


def _check_compatible(corpus, pool, data: str, split: str, pool_dir: str) -> int:
    """Returns captions per image; raises naming the field when the two cannot be joined."""
    for field, ours, theirs in (
        ("regions per image R", corpus.max_regions, pool.max_regions),
        ("feature dim F", corpus.feature_dim, pool.feature_dim),
    ):
        if ours != theirs:
            raise ValueError(
                f"{data} split {split!r}: {field} is {ours}, the distractor pool "
                f"{pool_dir} has {theirs}; distractors need the same layout "
                f"(scenes distractors fit scenes corpora only)"
            )
    per_image = corpus.num_captions // corpus.num_images
    pool_per_image = pool.num_captions // pool.num_images
    if per_image != pool_per_image or corpus.num_captions != per_image * corpus.num_images:
        raise ValueError(
            f"{data} split {split!r}: {corpus.num_captions} captions for "
            f"{corpus.num_images} images; the precomp layout of the scaled split "
            f"needs the same whole number per image as the pool ({pool_per_image})"
        )
    overlap = set(corpus.image_ids) & set(pool.image_ids[:1000])
    if overlap:
        raise ValueError(
            f"distractor ids {sorted(overlap)[:3]} also occur in {data} split "
            f"{split!r}; the pool must come from another seed"
        )
    return per_image


def ensure_scaled_split(data: str, split: str, pool_dir: str, num_images: int, out_dir: str) -> str:
    """Writes the precomp split SPLIT of N = num_images images into out_dir: the corpus
    split's N0 images then the first N - N0 pool scenes. Returns out_dir (skips when done)."""
    done_path = os.path.join(out_dir, DONE_FILE)
    done = _read_json(done_path)
    if done and done["num_images"] == num_images:
        return out_dir
    corpus = load_corpus(data, split)
    pool = load_corpus(pool_dir, POOL_SPLIT)
    extra = num_images - corpus.num_images
    if extra < 0:
        raise ValueError(
            f"scaled corpus of N={num_images}: smaller than the {corpus.num_images} "
            f"images of {data} split {split!r}"
        )
    if extra > pool.num_images:
        raise ValueError(
            f"scaled corpus of N={num_images}: needs {extra} distractors, the pool "
            f"{pool_dir} holds {pool.num_images}"
        )
    per_image = _check_compatible(corpus, pool, data, split, pool_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = precomp_paths(out_dir, split)
    began = time.perf_counter()
    shape = (num_images,) + corpus.regions.shape[1:]
    with (
        NpyStreamWriter(paths["ims"], shape, np.float32) as regions,
        NpyStreamWriter(
            paths["boxes"], (num_images,) + corpus.boxes.shape[1:], np.float32
        ) as boxes,
        NpyStreamWriter(paths["region_counts"], (num_images,), np.int32) as counts,
    ):
        for source, rows in ((corpus, corpus.num_images), (pool, extra)):
            for start in range(0, rows, COPY_ROWS):
                stop = min(rows, start + COPY_ROWS)
                regions.append(np.asarray(source.regions[start:stop], np.float32))
                boxes.append(np.asarray(source.boxes[start:stop], np.float32))
                counts.append(np.asarray(source.region_counts[start:stop], np.int32))
    captions = corpus.captions + pool.captions[: extra * per_image]
    image_ids = corpus.image_ids + pool.image_ids[:extra]
    for name, lines in (("caps", captions), ("ids", image_ids)):
        atomic.write_text(paths[name], "".join(line + "\n" for line in lines))
    atomic.write_json(
        done_path,
        {
            "num_images": num_images,
            "corpus_images": corpus.num_images,
            "distractors": extra,
            "data": os.path.abspath(data),
            "split": split,
            "pool": os.path.abspath(pool_dir),
        },
        indent=1,
        sort_keys=True,
    )
    logger.info(
        f"scaled split {out_dir}: {corpus.num_images} + {extra} distractors written in "
        f"{time.perf_counter() - began:.0f} s"
    )
    return out_dir


def check_index_ids(store: ActivationStore, corpus_ids: list, source: str) -> None:
    """The INDEX's first N0 ids must be the corpus split's ids, in order."""
    index_ids = store.image_ids
    if len(index_ids) < len(corpus_ids):
        raise ValueError(
            f"{store.index_dir}/ids.txt: {len(index_ids)} images, fewer than the "
            f"{len(corpus_ids)} of {source}; the INDEX must hold the split's images "
            f"first (then any distractors)"
        )
    for row, (expected, got) in enumerate(zip(corpus_ids, index_ids)):
        if expected != got:
            raise ValueError(
                f"{store.index_dir}/ids.txt: image {row} expected id {expected!r} "
                f"({source}), got {got!r}; the INDEX must hold the split's images "
                f"first, in order (is it an index of another split or corpus?)"
            )


def ready_stages(index_dir: str, names) -> list[str]:
    """The names among `names` whose first stage is built and ready in INDEX."""
    ready = []
    for name in names:
        try:
            records.read_record(index_dir, name)
        except (FileNotFoundError, RuntimeError, ValueError):
            continue
        ready.append(name)
    return ready


def ensure_scaled_index(
    workdir: str,
    data: str,
    split: str,
    num_images: int,
    scale_dir: str,
    pool_dir: str,
    storage: str = "bfloat16",
    first_stages=(),
    batch_size: int = 256,
) -> tuple[str, dict]:
    """Writes (or finishes) SCALE_DIR/n{N}/{data,index} and builds the missing first stages.

    Returns (index_dir, seconds) where seconds holds the time each step took in this call
    ('split', 'precompute', 'first_stages'; 0 for skipped steps).
    """
    base = os.path.join(scale_dir, f"n{num_images}")
    seconds = {}
    began = time.perf_counter()
    scaled_data = ensure_scaled_split(data, split, pool_dir, num_images, os.path.join(base, "data"))
    seconds["split"] = time.perf_counter() - began
    index_dir = os.path.join(base, "index")
    began = time.perf_counter()
    precompute_lib.precompute(workdir, scaled_data, split, index_dir, storage, batch_size)
    seconds["precompute"] = time.perf_counter() - began
    missing = [
        name
        for name in first_stages
        if name in first_stage_build.BUILD_NAMES and name not in ready_stages(index_dir, [name])
    ]
    began = time.perf_counter()
    if missing:
        logger.info(f"{index_dir}: building first stages {missing}")
        first_stage_build.build_from_index(index_dir, missing, None)
    seconds["first_stages"] = time.perf_counter() - began
    logger.info(f"{index_dir}: ready ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})")
    return index_dir, seconds
