"""One batch of the staged online pipeline (serve.searcher cuts requests into such batches).

    pipeline = BatchPipeline(compiled, buckets, tokenizer.pad_id)
    results = pipeline.run_batch(prepared_queries, view)   # the queries of one length bucket

tokens [B, T] -> text tower -> first stage (n candidates each) -> exact MaxSim on the stored
concepts of those n -> top K -> TensorStore gather of the K stored activations -> joint layers
over the K (padded to a K bucket with masked dummy rows, which are dropped) -> top k by joint
score. Every array is padded to a bucketed shape that a compiled executable holds
(lateint.serve.compiled); `view` is the INDEX generation the whole batch reads.
"""

from __future__ import annotations

import time

import numpy as np

from lateint.index.first_stage import QuerySide
from lateint.serve.buckets import Buckets, bucket_for
from lateint.serve.compiled import CompiledModel
from lateint.serve.search_records import Hit, IndexView, PreparedQuery, SearchResult


def _milliseconds(began: float) -> float:
    return (time.perf_counter() - began) * 1e3


class BatchPipeline:
    """Runs batches of prepared queries through the compiled model and a generation's stages."""

    def __init__(self, compiled: CompiledModel, buckets: Buckets, pad_id: int):
        self.compiled, self.buckets, self.pad_id = compiled, buckets, pad_id

    def first_stage_of(self, queries: list[PreparedQuery], view: IndexView) -> list[np.ndarray]:
        """A follower's part of a batch (serve.multihost): text tower, then the first stage."""
        return self._first_stage(queries, self.compiled.text_tower(*self.tokens(queries)), view)

    def tokens(self, queries: list[PreparedQuery]) -> tuple[np.ndarray, np.ndarray]:
        """token_ids, token_mask [B, T] of a batch padded to its batch and length buckets;
        padding rows repeat the first query (they are dropped)."""
        batch = bucket_for(len(queries), self.buckets.query_batches, "query batch")
        length = bucket_for(
            max(len(query.token_ids) for query in queries),
            self.buckets.query_lengths,
            "query length",
        )
        token_ids = np.full((batch, length), self.pad_id, np.int32)  # [B, T]
        token_mask = np.zeros((batch, length), bool)  # [B, T]
        for row in range(batch):
            ids = queries[row if row < len(queries) else 0].token_ids
            token_ids[row, : len(ids)] = ids
            token_mask[row, : len(ids)] = True
        return token_ids, token_mask

    def run_batch(self, queries: list[PreparedQuery], view: IndexView) -> list[SearchResult]:
        began = time.perf_counter()
        timings = {}
        count = len(queries)
        token_ids, token_mask = self.tokens(queries)  # [B, T]
        batch = token_ids.shape[0]

        started = time.perf_counter()
        tower = self.compiled.text_tower(token_ids, token_mask)
        timings["text_tower"] = _milliseconds(started)

        started = time.perf_counter()
        candidates = self._first_stage(queries, tower, view)  # Q x [<= n] int64
        timings["first_stage"] = _milliseconds(started)

        started = time.perf_counter()
        top = [query.settings.K for query in queries]
        shortlist, maxsim_scores = self._maxsim(tower, candidates, batch, top, view)  # Q x [<=K]
        timings["maxsim"] = _milliseconds(started)

        started = time.perf_counter()
        stored, image_mask = self._gather(shortlist, batch, view)  # [B, Kb, R, H'], [B, Kb, R]
        timings["gather"] = _milliseconds(started)

        started = time.perf_counter()
        joint = self.compiled.joint(tower.activations, tower.mask, stored, image_mask)  # [B, Kb]
        timings["joint"] = _milliseconds(started)
        batch_ms = _milliseconds(began)

        results = []
        for row, query in enumerate(queries):
            scores = joint[row, : len(shortlist[row])]
            order = np.argsort(-scores, kind="stable")[: query.settings.k]
            hits = [
                Hit(
                    id=view.image_ids[shortlist[row][position]],
                    index=int(shortlist[row][position]),
                    score=float(scores[position]),
                    maxsim=float(maxsim_scores[row][position]),
                    rank=rank + 1,
                )
                for rank, position in enumerate(order)
            ]
            query_timings = dict(
                timings, tokenize=query.tokenize_ms, total=query.tokenize_ms + batch_ms
            )
            results.append(
                SearchResult(
                    query.text,
                    hits,
                    query.settings,
                    query_timings,
                    count,
                    len(candidates[row]),
                    view.generation,
                )
            )
        return results

    def _first_stage(
        self, queries: list[PreparedQuery], tower, view: IndexView
    ) -> list[np.ndarray]:
        """Each query's first-stage candidates: [<= n] int64 INDEX rows, best first."""
        candidates: list[np.ndarray] = [np.zeros(0, np.int64)] * len(queries)
        for name in sorted({query.settings.first_stage for query in queries}):
            rows = [row for row, query in enumerate(queries) if query.settings.first_stage == name]
            count = bucket_for(
                max(queries[row].settings.n for row in rows), self.buckets.candidates, "n"
            )
            side = QuerySide(tower.concepts[rows], tower.mask[rows], tower.global_vector[rows])
            ids, _ = view.stages[name].search(side, count)  # [q, n bucket]
            for position, row in enumerate(rows):
                found = ids[position, : queries[row].settings.n]
                # Images added to a first stage after this store was written cannot be reranked.
                candidates[row] = found[(found >= 0) & (found < view.num_images)]
        return candidates

    def _maxsim(
        self, tower, candidates: list[np.ndarray], batch: int, top: list[int], view: IndexView
    ):
        """Exact MaxSim on the stored concepts of each query's candidates; keeps the top K.

        Returns (shortlist: Q x [<= K] int64 rows, scores: Q x [<= K] float32), best first.
        """
        count = bucket_for(
            max(1, max(len(ids) for ids in candidates)),
            self.buckets.candidates,
            "first-stage candidates",
        )
        image_concepts, image_mask = self._gather_rows(  # [B, n, R, C], [B, n, R]
            view, candidates, batch, count, view.store.concept_dim, view.store.gather_concepts
        )
        scores = self.compiled.maxsim(tower.concepts, tower.mask, image_concepts, image_mask)
        shortlist, kept_scores = [], []
        for row, ids in enumerate(candidates):
            row_scores = scores[row, : len(ids)]
            order = np.argsort(-row_scores, kind="stable")[: top[row]]
            shortlist.append(ids[order])
            kept_scores.append(row_scores[order])
        return shortlist, kept_scores

    def _gather(self, shortlist: list[np.ndarray], batch: int, view: IndexView):
        """Stored activations of each query's shortlist: ([B, Kb, R, H'], [B, Kb, R])."""
        count = bucket_for(max(1, max(len(ids) for ids in shortlist)), self.buckets.rerank, "K")
        return self._gather_rows(
            view, shortlist, batch, count, view.store.hidden, view.store.gather
        )

    def _gather_rows(
        self, view: IndexView, rows: list[np.ndarray], batch: int, count: int, width: int, gather
    ):
        """Reads each distinct image once with `gather(ids [U]) -> (values [U, R, width], mask
        [U, R])` and lays them out as ([batch, count, R, width], [batch, count, R]); slots past a
        query's list (and padding queries) hold zeros with an all-False mask."""
        regions = view.store.regions
        laid_out = np.zeros((batch, count, regions, width), np.float32)
        laid_mask = np.zeros((batch, count, regions), bool)
        unique = np.unique(np.concatenate(rows))
        if not unique.size:
            return laid_out, laid_mask
        values, mask = gather(unique)
        for row, ids in enumerate(rows):
            if len(ids):
                positions = np.searchsorted(unique, ids)
                laid_out[row, : len(ids)] = values[positions]
                laid_mask[row, : len(ids)] = mask[positions]
        return laid_out, laid_mask
