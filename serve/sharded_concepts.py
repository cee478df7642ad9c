"""The concept inverted list of an INDEX whose image axis is split over the processes of a Mesh.

    stage = ShardedConceptStage.load(index_dir, mesh, manifest=manifest)
    ids, scores = stage.search(query_side, n)   # equal to ConceptStage's, ids and scores

The lists are host structures (lateint.index.first_stage.concepts), so they are split by
process, not by device: process p reads (block by block) and keeps only the postings of the
images its devices hold in the mesh (shard s of S holds rows [s·L, (s+1)·L), L = ceil(N / S),
as serve.sharded_stages splits the brute-force stages), and every centroid. A search probes
the same centroids everywhere, scores the images it holds, keeps its top n, and the processes'
lists are all-gathered (jax.experimental.multihost_utils.process_allgather, over JAX's
distributed runtime) and merged with lateint.index.first_stage.query.top_per_query (ties:
smaller id first). A list score is a sum over one image's own postings, so each image scores
exactly as on one process and the merged top n equals ConceptStage's
(tests/test_serve_multihost.py). Rescoring with a `depth` cut is refused: a top-depth cut per
process is not the single process's global cut.

Every process runs every search in the same order (serve.multihost makes them), as the
all-gather is a collective. On one process this is ConceptStage itself.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lateint.index.first_stage import concepts, query, records
from lateint.serve import sharded_stages


def held_rows(mesh: Mesh, num_images: int) -> list[tuple[int, int]]:
    """[start, stop) rows of the shards this process's devices hold (cut to num_images)."""
    shards = mesh.size
    per_shard = -(-max(1, num_images) // shards)
    mine = [
        position
        for position, device in enumerate(mesh.devices.flat)
        if device.process_index == jax.process_index()
    ]
    return [
        (start, min(num_images, start + per_shard))
        for start in (position * per_shard for position in mine)
        if start < num_images
    ]


class ShardedConceptStage:
    """search(query_side, n) -> (ids [Q, n] int64, scores [Q, n] float32) over every process's
    postings; `local` is this process's ConceptStage (its held rows' postings only)."""

    name = concepts.NAME

    def __init__(self, local: concepts.ConceptStage, mesh: Mesh, rows):
        """local: the ConceptStage of this process's `rows` [(start, stop)] (ConceptStage.load
        with rows=)."""
        if local.rescore != "none" and local.depth is not None:
            raise ValueError(
                f"{concepts.NAME}: rescore with depth {local.depth} cannot be split over "
                "processes (a per-process top-depth is not the global one); use depth=None"
            )
        self.mesh = mesh
        self.local = local
        self.num_images = local.num_images
        self.record = local.record
        self.rows = list(rows)
        self.spans = sharded_stages.spans_processes(mesh)

    @classmethod
    def load(cls, index_dir: str, mesh: Mesh, manifest: dict | None = None):
        """Reads the postings of the rows this process's devices hold, block by block (one
        process of several never holds every posting), and every centroid."""
        record = records.committed_record(index_dir, concepts.NAME, manifest)
        rows = held_rows(mesh, record["num_images"])
        spans = sharded_stages.spans_processes(mesh)
        local = concepts.ConceptStage.load(
            index_dir, manifest=manifest, rows=rows if spans else None
        )
        logging.info(
            "%s: process %d holds %d postings (rows %s of %d)",
            concepts.NAME,
            jax.process_index(),
            local.lists.num_postings,
            rows,
            record["num_images"],
        )
        return cls(local, mesh, rows)

    @property
    def nbytes(self) -> int:
        """Bytes this process holds (its postings, the centroids and a rescoring index)."""
        return self.local.nbytes

    def held_rows(self) -> list[tuple[int, int]]:
        return list(self.rows)

    def search(self, query_side: query.QuerySide, n: int, nprobe: int | None = None):
        ids, scores = self.local.search(query_side, n, nprobe)  # [Q, n] of the held rows
        if not self.spans:
            return ids, scores
        every_ids = np.asarray(multihost_utils.process_allgather(ids))  # [P, Q, n]
        every_scores = np.asarray(multihost_utils.process_allgather(scores))
        num_queries = ids.shape[0]
        real = every_ids >= 0
        query_index = np.broadcast_to(np.arange(num_queries)[None, :, None], real.shape)[real]
        order = np.lexsort((every_ids[real], query_index))  # by (query, image), as required
        return query.top_per_query(
            query_index[order], every_ids[real][order], every_scores[real][order], num_queries, n
        )
