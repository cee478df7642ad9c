"""The concept-level inverted list (the seed's Bag of Concepts, PLAID-style centroid scoring).

Build (lateint.index.first_stage.concepts_lists, re-exported here): spherical k-means over the
real region concept vectors gives K centroids; an image posts once to each centroid its regions
reach, weighted by its best region there. Shapes: N images, R regions, C dim, K centroids, Q
queries, T words, p = nprobe.

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

import numpy as np

from lateint.index.first_stage import interaction, postings, query, records, tombstones
from lateint.index.first_stage.concepts_lists import (  # noqa: F401 (re-exported)
    DEFAULT_NPROBE,
    LISTS_PREFIX,
    NAME,
    PREFIX,
    RECLUSTER_FIT_DROP,
    add,
    build,
    image_postings,
    read_centroids,
    recluster,
    recluster_advice,
)

# Rescoring of the list candidates (interaction.py): none (the list score), centroid (PLAID's
# centroid interaction over all of the image's centroids), weighted (the same, times the posting
# weight).
RESCORE_MODES = ("none", "centroid", "weighted")
POSTINGS_PER_CHUNK = 1 << 22  # postings gathered at once, to bound the per-chunk temporaries


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
        rows=None,
    ):
        """manifest: read the generation it publishes (default: the stage.json record). rows:
        [(start, stop)] image ranges whose postings to hold (default every image; a process
        of a sharded server holds its own, serve.sharded_concepts)."""
        record = records.committed_record(index_dir, NAME, manifest)
        kept = None
        if rows is not None:
            kept = np.zeros(record["num_images"], bool)
            for start, stop in rows:
                kept[start:stop] = True
        lists = postings.read_lists(index_dir, LISTS_PREFIX, record, kept)
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
