"""Building the concept-level inverted list (lateint.index.first_stage.concepts searches it).

Spherical k-means over the real region concept vectors (a bounded sample, lateint.index.
first_stage.kmeans) gives K centroids; each region goes to its nearest centroid; an image posts
once to each centroid its regions reach, with weight w = max over those regions of
region·centroid. Adds post new images to the trained dictionary; `recluster` retrains it when
added postings fit it worse (RECLUSTER_FIT_DROP). Shapes: N images, R regions, C dim, K
centroids.

Why that weight: for unit vectors word·region = (word·c)(region·c) + (the parts orthogonal to c),
and the orthogonal term averages to zero, so (word·c)·w estimates the best word·region of the
image inside centroid c; centroid-only scoring (w = 1) ranks a loose member like a tight one.
One float per posting (4 bytes) instead of a quantized residual (C bytes or more).
"""

from __future__ import annotations

import logging

import numpy as np

from lateint.index import store
from lateint.index.first_stage import kmeans, postings, records, sources

logger = logging.getLogger(__name__)

NAME = "concepts"
PREFIX = records.stage_prefix(NAME)
LISTS_PREFIX = f"{PREFIX}/lists"
DEFAULT_NPROBE = 8
# Recluster when added postings' mean weight falls this far below the trained ones'. In
# bench/live_index.py, 10x adds from the trained topics dropped it 0.031 (recall unchanged:
# -0.020..+0.022); 10x adds half from unseen topics dropped it 0.073 (recall -0.07..-0.11).
RECLUSTER_FIT_DROP = 0.05


def image_postings(concepts, region_mask, first_image: int, centroids):
    """Postings of a block of images.

    Args:
      concepts: [B, R, C] float32 region concept vectors; region_mask: [B, R] bool.
      first_image: id of row 0.
      centroids: [K, C] float32.
    Returns:
      (lists [P] int32, images [P] int32, weights [P] float32), one posting per distinct
      (image, centroid), ordered by image then centroid.
    """
    rows, _ = np.nonzero(region_mask)
    assigned, similarity = kmeans.assign(concepts[region_mask], centroids, kmeans.local_mesh())
    num_centroids = centroids.shape[0]
    keys = (first_image + rows.astype(np.int64)) * num_centroids + assigned
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = (
        np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        if keys.size
        else np.zeros(0, np.int64)
    )
    weights = (
        np.maximum.reduceat(similarity[order], starts) if keys.size else np.zeros(0, np.float32)
    )
    unique = keys[starts]
    return (
        (unique % num_centroids).astype(np.int32),
        (unique // num_centroids).astype(np.int32),
        weights.astype(np.float32),
    )


def _source_postings(source, centroids, first_image: int, block_rows: int):
    pieces = []
    for start, stop in sources.blocks(source, block_rows):
        pieces.append(
            image_postings(
                source.read_concepts(start, stop),
                source.read_region_mask(start, stop),
                first_image + start,
                centroids,
            )
        )
        logger.info(f"{NAME}: assigned images [{first_image + start}, {first_image + stop})")
    return [np.concatenate([piece[column] for piece in pieces]) for column in range(3)]


def _training_vectors(source, max_vectors: int, seed: int, block_rows: int):
    """(sample [M, C] float32, total): M = min(max_vectors, total) real region vectors, all of
    them or a uniform sample without replacement, in region order; total real regions.

    Two streamed passes (count, then fill a preallocated sample): the build holds the sample
    and one block of rows, never all of the regions.
    """
    total = sum(
        int(source.read_region_mask(start, stop).sum())
        for start, stop in sources.blocks(source, block_rows)
    )
    if total == 0:
        raise ValueError(f"{NAME}: the source has no real region (region_mask is all False)")
    count = min(max_vectors, total)
    chosen = None  # every region
    if count < total:
        chosen = np.sort(np.random.default_rng(seed).choice(total, count, replace=False))
    sample = np.empty((count, source.concept_dim), np.float32)
    seen = filled = 0  # real regions before this block; sample rows filled
    for start, stop in sources.blocks(source, block_rows):
        mask = source.read_region_mask(start, stop)
        real = int(mask.sum())
        picks = None
        if chosen is not None:
            low, high = np.searchsorted(chosen, [seen, seen + real])
            picks = chosen[low:high] - seen
        seen += real
        if picks is not None and not picks.size:
            continue
        vectors = source.read_concepts(start, stop)[mask]
        part = vectors if picks is None else vectors[picks]
        sample[filled : filled + part.shape[0]] = part
        filled += part.shape[0]
    return sample, total


def build(
    index_dir: str,
    source,
    *,
    num_centroids: int | None = None,
    centroids=None,
    seed: int = 0,
    iterations: int = 10,
    max_training_vectors: int = 1 << 21,
    nprobe: int = DEFAULT_NPROBE,
    block_rows: int = sources.DEFAULT_BLOCK_ROWS,
) -> dict:
    """Trains (or takes) centroids and writes the inverted list; returns the committed record.

    Args:
      source: image vectors (see sources.py); its ids are 0..N-1.
      num_centroids: K; default kmeans.number_of_centroids(real regions).
      centroids: optional [K, C] float32 unit rows to use instead of training (tests, rebuilds
        with a fixed dictionary).
      nprobe: the default for search.
    """
    sources.check_source(source, None, None, NAME)
    parameters = {
        "seed": seed,
        "iterations": iterations,
        "nprobe": nprobe,
        "max_training_vectors": max_training_vectors,
    }
    records.mark_building(index_dir, NAME, parameters)
    if centroids is None:
        vectors, total_regions = _training_vectors(source, max_training_vectors, seed, block_rows)
        parameters["centroid_rule"] = (
            "--num_centroids" if num_centroids else "2^round(log2(4*sqrt(regions)))"
        )
        num_centroids = num_centroids or kmeans.number_of_centroids(total_regions)
        num_centroids = min(num_centroids, vectors.shape[0])
        logger.info(
            f"{NAME}: k-means, {num_centroids} centroids over {vectors.shape[0]} of "
            f"{total_regions} regions"
        )
        centroids = kmeans.train_centroids(
            vectors, num_centroids, seed=seed, iterations=iterations, mesh=kmeans.local_mesh()
        )
        del vectors
    else:
        centroids = np.asarray(centroids, np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != source.concept_dim:
            raise ValueError(
                f"{NAME}: centroids expected [K, {source.concept_dim}], got {centroids.shape}"
            )
        parameters["centroid_rule"] = "given"
    record = _write_generation(
        index_dir,
        source,
        centroids,
        block_rows,
        {
            "state": "ready",
            "parameters": parameters,
            "regions": source.regions,
            "concept_dim": source.concept_dim,
        },
    )
    logger.info(
        f"{NAME}: {record['base_postings']} postings over {centroids.shape[0]} lists for "
        f"{source.num_images} images"
    )
    return record


def _write_generation(index_dir: str, source, centroids, block_rows: int, record: dict) -> dict:
    """Writes the dictionary and the lists of `source` as a new generation, commits `record`
    updated with them and returns it. The dictionary lives per generation (dictionary/g<n>),
    so a rebuild or a recluster never changes what a published generation reads."""
    lists, images, weights = _source_postings(source, centroids, 0, block_rows)
    inverted = postings.InvertedLists.from_postings(lists, images, weights, centroids.shape[0])
    generation = postings.next_generation(index_dir, LISTS_PREFIX)
    name = f"{PREFIX}/dictionary/g{generation}"
    store.write_array(index_dir, name, centroids)
    fit = {
        "trained": float(np.mean(inverted.weights, dtype=np.float64))
        if inverted.num_postings
        else None,
        "added": None,
        "added_postings": 0,
    }
    record = dict(
        record,
        **postings.write_base(index_dir, LISTS_PREFIX, generation, inverted),
        centroids=name,
        num_images=source.num_images,
        num_centroids=centroids.shape[0],
        fit=fit,
    )
    records.write_record(index_dir, NAME, record)
    postings.remove_stale_generations(index_dir, LISTS_PREFIX, generation)
    kept = {
        entry["centroids"].rsplit("/", 1)[1]
        for entry in records.published_records(index_dir, NAME) + [record]
        if "centroids" in entry
    }
    postings.remove_folders(index_dir, f"{PREFIX}/dictionary", keep=kept)
    return record


def add(index_dir: str, source, start: int, block_rows: int = sources.DEFAULT_BLOCK_ROWS) -> dict:
    """Appends the postings of images start..start+B-1 (assigned to the existing centroids)."""
    return postings.add_postings(
        index_dir,
        NAME,
        source,
        start,
        lambda record: _source_postings(
            source, read_centroids(index_dir, record), start, block_rows
        ),
        _fit_after_add,
    )


def recluster_advice(record: dict) -> str:
    """One line comparing the added images' fit to the dictionary with the trained ones'."""
    fit = record.get("fit") or {}
    if fit.get("trained") is None or fit.get("added") is None:
        return "no fit measured (a dictionary built before fits were recorded, or no adds)"
    drop = fit["trained"] - fit["added"]
    verdict = (
        "lateint.index.compact --recluster is advised"
        if drop > RECLUSTER_FIT_DROP
        else "the dictionary still fits"
    )
    return (
        f"mean posting weight {fit['added']:.3f} for the {fit['added_postings']} added "
        f"postings vs {fit['trained']:.3f} for the trained ones (drop {drop:.3f}; "
        f"threshold {RECLUSTER_FIT_DROP}): {verdict}"
    )


def _fit_after_add(record: dict, weights) -> dict:
    """The record's 'fit' with the added postings' weights folded in. A posting's weight is
    its best region's cosine to the centroid, so the mean weight says how well the dictionary
    describes the images: when added images' mean falls well below the images the dictionary
    was trained on, `lateint.index.compact --recluster` is advised (docs/live_index.md)."""
    fit = dict(record.get("fit") or {"trained": None, "added": None, "added_postings": 0})
    count = fit["added_postings"] + int(np.size(weights))
    if count:
        added = float(np.sum(weights, dtype=np.float64))
        total = (fit["added"] or 0.0) * fit["added_postings"] + added
        fit.update(added=total / count, added_postings=count)
    return {"fit": fit}


def read_centroids(index_dir: str, record: dict) -> np.ndarray:
    """The record's dictionary [K, C] float32 (lateint.index.compact --recluster writes a new one)."""
    return store.read_array(index_dir, record.get("centroids", f"{PREFIX}/centroids"))


def recluster(
    index_dir: str, source, record: dict, block_rows: int = sources.DEFAULT_BLOCK_ROWS
) -> dict:
    """Retrains the dictionary over `source` (k-means with the record's K, seed and iterations)
    and rewrites the lists as a new generation; returns the committed record."""
    parameters = record["parameters"]
    vectors, total = _training_vectors(
        source, parameters["max_training_vectors"], parameters["seed"], block_rows
    )
    logger.info(
        f"{NAME}: reclustering {record['num_centroids']} centroids over "
        f"{vectors.shape[0]} of {total} regions"
    )
    centroids = kmeans.train_centroids(
        vectors,
        min(record["num_centroids"], vectors.shape[0]),
        seed=parameters["seed"],
        iterations=parameters["iterations"],
        mesh=kmeans.local_mesh(),
    )
    return _write_generation(index_dir, source, centroids, block_rows, record)
