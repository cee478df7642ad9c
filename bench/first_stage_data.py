"""The vectors bench/first_stage.py searches: synthetic, a finished INDEX, or the trained towers.

load(options, images) -> (SyntheticImages, QuerySide, description)

- synthetic: clustered concept vectors (lateint.index.first_stage.synthetic), queries that
  describe a target image.
- index: the stored vectors of a finished INDEX, queried by noisy subsets of random stored
  images' regions (no text tower is involved).
- towers: the real pipeline. The corpus split's images followed by generated distractor scenes
  up to N (lateint.evaluation.distractors: the same pool and scaled INDEXes that
  `lateint.evaluation.main --num_images=...` builds and reuses under the same --scale_dir),
  precomputed through the trained image tower; queries are the split's captions (evenly
  spaced) through the trained text tower.
Shapes: N images, R regions, C concept dim, Q queries, T words.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lateint.index.first_stage import synthetic
from lateint.index.first_stage.query import QuerySide

logger = logging.getLogger(__name__)


def _stored_vectors(index_dir: str) -> synthetic.SyntheticImages:
    from lateint.index.store import ActivationStore

    store = ActivationStore.open(index_dir)
    count = store.num_images
    return synthetic.SyntheticImages(
        store.read_concepts(0, count), store.read_region_mask(0, count), store.read_global(0, count)
    )


def _tower_queries(workdir: str, data: str, split: str, count: int) -> tuple[QuerySide, list]:
    """The split's captions (count evenly spaced) through the trained text tower."""
    from lateint import pretrained
    from lateint.checkpoint import load_model
    from lateint.data import load_corpus
    from lateint.evaluation.protocols import spaced
    from lateint.inference import Inference
    from lateint.tokenizer import WordPieceTokenizer

    corpus = load_corpus(data, split)
    rows = spaced(corpus.num_captions, count)
    captions = [corpus.captions[row] for row in rows]
    tokenizer = WordPieceTokenizer.from_directory(pretrained.default_minilm_directory())
    token_ids, token_mask = tokenizer.encode(captions)  # [Q, T]
    model, _ = load_model(workdir)
    text = Inference(model).encode_text(token_ids, token_mask, 64)
    return QuerySide(text.concepts, text.mask, text.global_vector), captions


def _towers(options: dict, images: int):
    from lateint.data import load_corpus
    from lateint.evaluation import distractors

    data, split = options["data"], options["split"]
    seed = options["distractor_seed"]
    if seed < 0:
        seed = (distractors.corpus_seed(data) or 0) + 1
    corpus_images = load_corpus(data, split).num_images
    most = max(options["sizes"]) - corpus_images
    began = time.perf_counter()
    index_dir = options["index"]
    if images > corpus_images or not index_dir:
        pool = distractors.ensure_pool(options["scale_dir"], max(most, 1), seed, data)
        index_dir, _ = distractors.ensure_scaled_index(
            options["workdir"], data, split, images, options["scale_dir"], pool
        )
    elif images < corpus_images:
        raise ValueError(
            f"--images={images}: fewer than the {corpus_images} images of {data} split {split!r}"
        )
    logger.info(
        f"towers corpus N={images}: {index_dir} ready in {time.perf_counter() - began:.0f} s"
    )
    queries, captions = _tower_queries(options["workdir"], data, split, options["queries"])
    return (
        _stored_vectors(index_dir),
        queries,
        {"source": "towers", "index": index_dir, "split": split, "first_query": captions[0]},
    )


def load(options: dict, images: int):
    """(vectors, QuerySide, description) for one corpus size (see the module docstring)."""
    if options["source"] == "towers":
        return _towers(options, images)
    if options["source"] == "index":
        data = _stored_vectors(options["index"])
        regions = data.concepts[data.region_mask]
        picks = np.random.default_rng(0).choice(
            regions.shape[0], min(4096, regions.shape[0]), replace=False
        )
        queries, _ = synthetic.queries(data, regions[picks], options["queries"], options["words"])
        return data, queries, {"source": "index", "index": options["index"]}
    if options["source"] != "synthetic":
        raise ValueError(
            f"--source: expected synthetic, index or towers, got {options['source']!r}"
        )
    topics = synthetic.topics(options["topics"], options["concept_dim"], seed=0)
    data = synthetic.images(topics, images, options["regions"], min_regions=3, seed=1)
    queries, _ = synthetic.queries(data, topics, options["queries"], options["words"], seed=2)
    return data, queries, {"source": "synthetic", "topics": options["topics"]}
