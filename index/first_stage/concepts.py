"""The concept-level inverted list (the seed's Bag of Concepts, PLAID-style centroid scoring).

Build: spherical k-means over the real region concept vectors gives K centroids; each region goes
to its nearest centroid; an image posts once to each centroid its regions reach, with weight
w = max over those regions of region·centroid. Shapes: N images, R regions, C dim, K centroids,
Q queries, T words, p = nprobe.

Why that weight: for unit vectors word·region = (word·c)(region·c) + (the parts orthogonal to c),
and the orthogonal term averages to zero, so (word·c)·w estimates the best word·region of the
image inside centroid c; centroid-only scoring (w = 1) ranks a loose member like a tight one.
One float per posting (4 bytes) instead of a quantized residual (C bytes or more).

Search: each real word probes its p nearest centroids (s = word·c); every posting of a probed
list gives the (word, image) contribution s·w; per (word, image) the max is kept (approximate
MaxSim's max over regions), then summed over the words that reached the image (a word that
reaches none of its regions adds 0, as PLAID's centroid interaction). Only images reached by at
least one word are candidates. Imputing a missing word with its p-th centroid similarity (XTR)
was measured (10k synthetic images: equal or lower recall at every nprobe and n) and is not
offered. With nprobe = K and one centroid per region the scores equal exact MaxSim
(tests/test_first_stage_concepts.py).
"""

from __future__ import annotations

import logging

import numpy as np

from lateint.index import store
from lateint.index.first_stage import (
    interaction,
    kmeans,
    postings,
    query,
    records,
    sources,
    tombstones,
)

logger = logging.getLogger(__name__)

NAME = "concepts"
PREFIX = records.stage_prefix(NAME)
LISTS_PREFIX = f"{PREFIX}/lists"
DEFAULT_NPROBE = 8
# Rescoring of the list candidates (interaction.py): none (the list score), centroid (PLAID's
# centroid interaction over all of the image's centroids), weighted (the same, times the posting
# weight).
RESCORE_MODES = ("none", "centroid", "weighted")
POSTINGS_PER_CHUNK = 1 << 22  # postings gathered at once, to bound the per-chunk temporaries
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


class ConceptStage:
    """Loaded concept inverted list. search(query_side, n) -> (ids [Q, n], scores [Q, n])."""

    name = NAME

    def __init__(
        self,
        centroids,
        lists: postings.InvertedLists,
        deleted,
        record: dict,
        nprobe: int | None = None,
        rescore: str | None = None,
        depth: int | None = None,
    ):
        self.centroids = np.asarray(centroids, np.float32)  # [K, C]
        self.lists = lists
        self.deleted = deleted  # [N] bool
        self.record = record
        self.num_images = record["num_images"]
        self.nprobe = int(nprobe or record["parameters"]["nprobe"])
        self.rescore = rescore or "none"
        if self.rescore not in RESCORE_MODES:
            raise ValueError(f"{NAME}: rescore expected one of {RESCORE_MODES}, got {rescore!r}")
        if depth is not None and (isinstance(depth, bool) or int(depth) < 1):
            raise ValueError(f"{NAME}: depth expected a positive int or None, got {depth!r}")
        self.depth = None if depth is None else int(depth)
        self.forward = (
            interaction.ForwardIndex.from_lists(lists, self.num_images)
            if self.rescore != "none"
            else None
        )

    @classmethod
    def load(
        cls,
        index_dir: str,
        nprobe: int | None = None,
        manifest: dict | None = None,
        rescore: str | None = None,
        depth: int | None = None,
    ):
        """manifest: read the generation it publishes (default: the stage.json record)."""
        record = records.committed_record(index_dir, NAME, manifest)
        lists = postings.read_lists(index_dir, LISTS_PREFIX, record)
        return cls(
            read_centroids(index_dir, record),
            lists,
            tombstones.bitmap(index_dir, record["num_images"], manifest),
            record,
            nprobe,
            rescore,
            depth,
        )

    @property
    def nbytes(self) -> int:
        forward = self.forward.nbytes if self.forward is not None else 0
        return self.centroids.nbytes + self.lists.nbytes + forward

    def search(self, query_side: query.QuerySide, n: int, nprobe: int | None = None):
        """Top n images by approximate MaxSim.

        Args:
          query_side: QuerySide; uses concepts [Q, T, C] and mask [Q, T].
          n: results per query.
          nprobe: centroids probed per word (default: the stage's); clamped to K.
        Returns:
          (ids [Q, n] int64, scores [Q, n] float32), best first, padded with -1 / -inf.
        """
        query_side = query.check_query_side(query_side, self.centroids.shape[1], NAME)
        n = query.check_count(n, NAME)
        probes = min(int(nprobe or self.nprobe), self.centroids.shape[0])
        words, mask = query_side.concepts, query_side.mask
        num_queries, num_words = mask.shape
        similarities = (words.reshape(-1, words.shape[2]) @ self.centroids.T).reshape(
            num_queries, num_words, -1
        )  # [Q, T, K]; one 2-D GEMM, not Q small ones
        if probes < similarities.shape[2]:
            probed = np.argpartition(similarities, -probes, axis=2)[:, :, -probes:]
        else:
            probed = np.broadcast_to(np.arange(probes), similarities.shape)
        probed_similarities = np.take_along_axis(similarities, probed, axis=2)  # [Q, T, p]
        lengths = np.diff(self.lists.offsets)[probed].sum(axis=2) * mask  # [Q, T]
        ids = np.full((num_queries, n), query.PAD_ID, np.int64)
        scores = np.full((num_queries, n), query.PAD_SCORE, np.float32)
        per_query = np.cumsum(lengths.sum(axis=1))
        start = 0
        while start < num_queries:
            # The largest run of queries whose postings fit the chunk budget (at least one).
            base = per_query[start - 1] if start else 0
            stop = max(
                start + 1, int(np.searchsorted(per_query, base + POSTINGS_PER_CHUNK, side="right"))
            )
            chunk = slice(start, stop)
            pairs = self._score_chunk(probed[chunk], probed_similarities[chunk], mask[chunk])
            ids[chunk], scores[chunk] = self._select(pairs, similarities[chunk], mask[chunk], n)
            start = stop
        return ids, scores

    def _select(self, pairs, similarities, mask, n):
        """Top n per query of the chunk's candidate pairs, rescored if the stage says so.

        pairs: (query [M], image [M], list score [M]); similarities [q, T, K]; mask [q, T].
        """
        query_index, images, totals = pairs
        num_queries = mask.shape[0]
        if self.rescore == "none":
            return query.top_per_query(query_index, images, totals, num_queries, n)
        if self.depth is not None and self.depth < images.shape[0]:
            kept, _ = query.top_per_query(query_index, images, totals, num_queries, self.depth)
            query_index, images = np.nonzero(kept >= 0)[0], kept[kept >= 0]
        rescored = interaction.rescore(
            similarities, mask, query_index, images, self.forward, self.rescore == "weighted"
        )
        return query.top_per_query(query_index, images, rescored, num_queries, n)

    def _score_chunk(self, probed, probed_similarities, mask):
        """probed / probed_similarities [q, T, p], mask [q, T] -> the chunk's candidates:
        (query [M] int64, image [M] int64, list score [M] float32), in (query, image) order."""
        num_queries, num_words, _ = probed.shape
        word_of_probe = np.broadcast_to(
            np.arange(num_queries * num_words).reshape(num_queries, num_words, 1), probed.shape
        )
        real = np.broadcast_to(mask[:, :, None], probed.shape)
        probe, images, weights = self.lists.gather(probed[real])
        word = word_of_probe[real][probe]  # [S] query * T + word
        contribution = probed_similarities[real][probe] * weights
        alive = ~self.deleted[images]
        word, images, contribution = word[alive], images[alive], contribution[alive]
        # Max over the image's regions per (query, image, word); keys sort by (query, image).
        query_index, word_index = np.divmod(word, num_words)
        keys = (query_index * self.num_images + images) * num_words + word_index
        order = np.argsort(keys)
        keys, contribution = keys[order], contribution[order]
        first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        best = np.maximum.reduceat(contribution, first) if first.size else contribution[:0]
        # Sum over words per (query, image).
        pair_keys = keys[first] // num_words
        pair_first = np.flatnonzero(np.concatenate([[True], pair_keys[1:] != pair_keys[:-1]]))
        totals = np.add.reduceat(best, pair_first) if pair_first.size else best[:0]
        query_index, images = np.divmod(pair_keys[pair_first], self.num_images)
        return query_index, images, totals.astype(np.float32)
