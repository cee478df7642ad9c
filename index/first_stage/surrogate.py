"""Surrogate text on the global vectors, on the shared inverted list (postings.py).

Two encodings of a vector as "words" (terms = dimensions), after Amato et al.:
- 'sq', scalar quantization (Amato, Carrara, Falchi, Gennaro, Vadicamo, "Large-scale instance-level
  image retrieval", IPM 2020): the vector goes through CReLU ([max(v, 0), max(-v, 0)], 2C terms, so
  negative components count too), only its `size` largest components are kept (sparsification
  1 - size/2C), and each kept component x becomes a term of frequency floor(quantization · x).
- 'permutation', deep permutations (Amato, Falchi, Gennaro, Vadicamo, "Deep permutations", ICMR
  2016): the dimensions of the CReLU vector ranked by value; the top `size` (the permutation
  prefix) become terms of frequency size + 1 - position, so the top dimension weighs most.
The score of an image is the dot product of the query's and the image's term-frequency vectors,
computed on the inverted list (term -> images, weight = term frequency as uint16). Shapes: N
images, C dim, 2C terms, Q queries.
"""

from __future__ import annotations

import logging

import numpy as np

from lateint.index.first_stage import postings, query, records, sources, tombstones

logger = logging.getLogger(__name__)

KINDS = ("sq", "permutation")
DEFAULTS = {"sq": {"size": 48, "quantization": 64}, "permutation": {"size": 32}}
DENSE_SCORES_PER_CHUNK = 1 << 23  # queries × images accumulated at once


def surrogate_terms(vectors, kind: str, size: int, quantization: int = 0):
    """Sparse term frequencies of vectors [B, C].

    Returns:
      (rows [P] int64 in [0, B), terms [P] int32 in [0, 2C), frequencies [P] uint16 > 0), ordered
      by row then term.
    """
    vectors = np.asarray(vectors, np.float32)
    values = np.concatenate([np.maximum(vectors, 0), np.maximum(-vectors, 0)], axis=1)  # [B, 2C]
    size = min(int(size), values.shape[1])
    top = np.argpartition(-values, size - 1, axis=1)[:, :size]  # [B, size]
    top_values = np.take_along_axis(values, top, axis=1)
    if kind == "sq":
        frequencies = np.floor(quantization * top_values)
    elif kind == "permutation":
        position = np.argsort(np.argsort(-top_values, axis=1, kind="stable"), axis=1)
        frequencies = np.where(top_values > 0, size - position, 0)
    else:
        raise ValueError(f"surrogate: kind expected one of {KINDS}, got {kind!r}")
    frequencies = np.minimum(frequencies, np.iinfo(np.uint16).max).astype(np.uint16)
    rows = np.broadcast_to(np.arange(vectors.shape[0])[:, None], top.shape)
    keep = frequencies > 0
    rows, terms, frequencies = rows[keep], top[keep], frequencies[keep]
    order = np.lexsort((terms, rows))
    return rows[order].astype(np.int64), terms[order].astype(np.int32), frequencies[order]


def _check_parameters(kind: str, size: int, quantization: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"surrogate: kind expected one of {KINDS}, got {kind!r}")
    if size < 1:
        raise ValueError(f"surrogate {kind}: size expected >= 1, got {size}")
    if kind == "sq" and not 1 <= quantization <= 4096:
        raise ValueError(f"surrogate sq: quantization expected in [1, 4096], got {quantization}")


def _source_postings(source, parameters: dict, first_image: int, block_rows: int):
    pieces = []
    for start, stop in sources.blocks(source, block_rows):
        rows, terms, frequencies = surrogate_terms(
            source.read_global(start, stop),
            parameters["kind"],
            parameters["size"],
            parameters["quantization"],
        )
        pieces.append((terms, (first_image + start + rows).astype(np.int32), frequencies))
        logger.info(
            f"{parameters['kind']}: encoded images [{first_image + start}, {first_image + stop})"
        )
    return [np.concatenate([piece[column] for piece in pieces]) for column in range(3)]


def build(
    index_dir: str,
    source,
    kind: str,
    *,
    size: int | None = None,
    quantization: int | None = None,
    query_size: int | None = None,
    block_rows: int = sources.DEFAULT_BLOCK_ROWS,
) -> dict:
    """Writes the surrogate-text inverted list of `kind` ('sq' | 'permutation').

    Args:
      size: terms kept per image (sq: top-s components; permutation: the prefix length).
      quantization: sq only, the factor before flooring (ignored for permutations).
      query_size: terms kept per query at search time (default: size).
    Returns:
      the committed record.
    """
    defaults = DEFAULTS.get(kind, {})
    size = int(size or defaults.get("size", 0))
    quantization = int(quantization or defaults.get("quantization", 0)) if kind == "sq" else 0
    _check_parameters(kind, size, quantization)
    sources.check_source(source, None, None, kind)
    parameters = {
        "kind": kind,
        "size": size,
        "quantization": quantization,
        "query_size": int(query_size or size),
        "sparsification": 1.0 - min(size, 2 * source.concept_dim) / (2 * source.concept_dim),
    }
    records.mark_building(index_dir, kind, parameters)
    terms, images, frequencies = _source_postings(source, parameters, 0, block_rows)
    inverted = postings.InvertedLists.from_postings(
        terms, images, frequencies, 2 * source.concept_dim
    )
    prefix = f"{records.stage_prefix(kind)}/lists"
    generation = postings.next_generation(index_dir, prefix)
    record = postings.write_base(index_dir, prefix, generation, inverted)
    record.update(
        state="ready",
        parameters=parameters,
        num_images=source.num_images,
        regions=source.regions,
        concept_dim=source.concept_dim,
    )
    records.write_record(index_dir, kind, record)
    postings.remove_stale_generations(index_dir, prefix, generation)
    logger.info(
        f"{kind}: {inverted.num_postings} postings over {inverted.num_lists} terms for "
        f"{source.num_images} images"
    )
    return record


def add(
    index_dir: str, source, start: int, kind: str, block_rows: int = sources.DEFAULT_BLOCK_ROWS
) -> dict:
    """Appends the postings of images start..start+B-1."""
    return postings.add_postings(
        index_dir,
        kind,
        source,
        start,
        lambda record: _source_postings(source, record["parameters"], start, block_rows),
    )


class SurrogateStage:
    """Loaded surrogate-text stage. search(query_side, n) -> (ids [Q, n], scores [Q, n])."""

    def __init__(
        self, lists: postings.InvertedLists, deleted, record: dict, query_size: int | None = None
    ):
        self.lists = lists
        self.deleted = deleted  # [N] bool
        self.record = record
        self.parameters = record["parameters"]
        self.name = self.parameters["kind"]
        self.num_images = record["num_images"]
        self.concept_dim = record["concept_dim"]
        self.query_size = int(query_size or self.parameters["query_size"])

    @classmethod
    def load(
        cls, index_dir: str, kind: str, query_size: int | None = None, manifest: dict | None = None
    ):
        """manifest: read the generation it publishes (default: the stage.json record)."""
        record = records.committed_record(index_dir, kind, manifest)
        lists = postings.read_lists(index_dir, records.generations_prefix(kind), record)
        return cls(
            lists, tombstones.bitmap(index_dir, record["num_images"], manifest), record, query_size
        )

    @property
    def nbytes(self) -> int:
        return self.lists.nbytes

    def search(self, query_side: query.QuerySide, n: int, query_size: int | None = None):
        """Top n images by surrogate-text dot product.

        Args:
          query_side: QuerySide; uses global_vector [Q, C].
          query_size: terms kept per query (default: the stage's).
        Returns:
          (ids [Q, n] int64, scores [Q, n] float32), best first, padded with -1 / -inf; only
          images sharing a term with the query are candidates.
        """
        query_side = query.check_query_side(query_side, self.concept_dim, self.name)
        n = query.check_count(n, self.name)
        vectors = query_side.global_vector
        num_queries = vectors.shape[0]
        ids = np.full((num_queries, n), query.PAD_ID, np.int64)
        scores = np.full((num_queries, n), query.PAD_SCORE, np.float32)
        chunk = max(1, DENSE_SCORES_PER_CHUNK // max(1, self.num_images))
        for start in range(0, num_queries, chunk):
            stop = min(num_queries, start + chunk)
            ids[start:stop], scores[start:stop] = self._score_chunk(
                vectors[start:stop], n, int(query_size or self.query_size)
            )
        return ids, scores

    def _score_chunk(self, vectors, n: int, query_size: int):
        """vectors [q, C] -> top n of each row."""
        rows, terms, frequencies = surrogate_terms(
            vectors, self.name, query_size, self.parameters["quantization"]
        )
        probe, images, image_frequencies = self.lists.gather(terms)
        contribution = frequencies[probe].astype(np.float64) * image_frequencies
        dense = np.bincount(
            rows[probe] * self.num_images + images,
            weights=contribution,
            minlength=vectors.shape[0] * self.num_images,
        )
        dense = dense.reshape(vectors.shape[0], self.num_images).astype(np.float32)
        return query.top_dense(dense, (dense > 0) & ~self.deleted[None, :], n)
