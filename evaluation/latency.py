"""Single-query latency for lateint.evaluation.harness: one caption at a time (batch 1) through a Searcher's
compiled pieces, timed per stage and reported as the median milliseconds of each LATENCY_KEYS
stage over a fixed list of query captions."""

from __future__ import annotations

import time

import numpy as np

from lateint.index.first_stage import QuerySide
from lateint.serve.buckets import Buckets, bucket_for
from lateint.serve.searcher import Searcher
from lateint.tokenizer import WordPieceTokenizer

LATENCY_KEYS = ("encode", "stage1", "stage2", "gather", "joint", "total")


def median_timings(rows: list[dict]) -> dict:
    return {
        key: None if rows[0].get(key) is None else float(np.median([row[key] for row in rows]))
        for key in LATENCY_KEYS
    }


def milliseconds(began: float) -> float:
    return (time.perf_counter() - began) * 1e3


class Latency:
    """Times single queries through a Searcher. captions: the queries timed. text: the
    evaluation's text-tower outputs, from which a dummy query of every length bucket compiles a
    scan before it is timed. buckets, tokenizer: the evaluation's (a query is padded to its length
    bucket, as the searcher does). K: the searcher's k."""

    def __init__(
        self, captions: list[str], text, buckets: Buckets, tokenizer: WordPieceTokenizer, K: int
    ):
        self.captions, self.text, self.buckets, self.tokenizer, self.K = (
            captions,
            text,
            buckets,
            tokenizer,
            K,
        )

    def encode_one(self, searcher: Searcher, caption: str):
        """One query through the compiled tower (batch 1): (TowerOutput, tokenize+tower ms)."""
        began = time.perf_counter()
        ids = searcher.prepare(caption, k=self.K).token_ids
        length = bucket_for(ids.size, self.buckets.query_lengths, "query length")
        token_ids = np.full((1, length), self.tokenizer.pad_id, np.int32)
        token_ids[0, : ids.size] = ids
        tower = searcher.compiled.text_tower(token_ids, token_ids != self.tokenizer.pad_id)
        return tower, milliseconds(began)

    def encode(self, searcher: Searcher, count: int) -> float:
        """Median tokenize+tower ms of the first `count` captions."""
        return float(
            np.median([self.encode_one(searcher, caption)[1] for caption in self.captions[:count]])
        )

    def scan(self, searcher: Searcher, stage_name: str, stage_key: str) -> dict:
        """encode + one exact stage over every image (global or MaxSim), single queries."""
        stage, rows = searcher.stages[stage_name], []
        top = min(10, searcher.num_images)  # a corpus under 10 images warms only its own size
        for length in self.buckets.query_lengths:  # compile the top-10 search at every length
            side = QuerySide(
                self.text.concepts[:1, :1].repeat(length, 1),
                np.ones((1, length), bool),
                self.text.global_vector[:1],
            )
            stage.search(side, top)
        for caption in self.captions:
            tower, encode_ms = self.encode_one(searcher, caption)
            began = time.perf_counter()
            stage.search(QuerySide(tower.concepts, tower.mask, tower.global_vector), top)
            scan_ms = milliseconds(began)
            rows.append(
                dict(
                    dict.fromkeys(LATENCY_KEYS),
                    encode=encode_ms,
                    total=encode_ms + scan_ms,
                    **{stage_key: scan_ms},
                )
            )
        return median_timings(rows)

    def staged(self, searcher: Searcher, options: dict) -> dict:
        """The whole pipeline (Searcher.search with `options`), its timings as LATENCY_KEYS."""
        rows = []
        searcher.search(self.captions[:1], **options)  # warm-up
        for caption in self.captions:
            timings = searcher.search([caption], **options)[0].timings_ms
            rows.append(
                dict(
                    encode=timings["tokenize"] + timings["text_tower"],
                    stage1=timings["first_stage"],
                    stage2=timings["maxsim"],
                    gather=timings["gather"],
                    joint=timings["joint"],
                    total=timings["total"],
                )
            )
        return median_timings(rows)
