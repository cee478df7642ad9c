"""The scorers of the evaluation harness, one record each (Evaluation.record): the dual
encoder ('global'), exact MaxSim over every image ('maxsim'), the joint layers over every stored
image ('joint_exhaustive', the cross-encoder baseline, on an evenly spaced query subset) and the
staged pipeline ('staged', lateint.serve.searcher.Searcher, one record per first stage).

    record = global_record(evaluation, context)   # context: Evaluation.evaluate_index's

Staged i2t reranks each image's MaxSim top-K captions with the joint layers (no first stage over
captions exists); staged t2i ranks are known within the top K only, so its medr/meanr are null.
Shapes: Q queries (evaluation.queries), M captions, N INDEX images, N0 split images.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lateint import retrieval_metrics
from lateint.evaluation.latency import LATENCY_KEYS
from lateint.evaluation.protocols import spaced
from lateint.index.first_stage import QuerySide
from lateint.index.store import ActivationStore
from lateint.ranking import maxsim_matrix, top_indices

logger = logging.getLogger(__name__)

QUERY_BLOCK = 64  # captions per MaxSim block
IMAGE_BLOCK = 4096  # images per MaxSim block ([64, 4096, T, R] float32 intermediates)


# ---- dual encoder and MaxSim ---------------------------------------------------------------------


def global_record(evaluation, context) -> dict:
    text, image_global = evaluation.text, context["image_global"]
    ranks, top = [], []
    for start in range(0, evaluation.queries.size, 256):
        scores = text.global_vector[evaluation.queries[start : start + 256]] @ image_global.T
        ranks.append(
            retrieval_metrics.ranks_text_to_image(
                scores, evaluation.query_images[start : start + 256]
            )
        )
        top.append(top_indices(scores, 10))  # [256, 10]
    ranks = np.concatenate(ranks)
    matrix = text.global_vector @ image_global[: evaluation.corpus.num_images].T  # [M, N0]
    i2t = retrieval_metrics.ranks_image_to_text(matrix.T, evaluation.corpus.caption_image)
    latency = evaluation.latency.scan(context["searcher"], "exact_global", "stage1")
    return evaluation.record(
        "global",
        ranks,
        i2t,
        latency,
        {"global": context["parts"]["global"]},
        [],
        matrix,
        settings={},
        top_images=np.concatenate(top),
    )


def split_maxsim(evaluation, context) -> np.ndarray:
    """[M, N0] MaxSim of every caption against the split's images (computed once)."""
    if "split_maxsim" not in context:
        count = evaluation.corpus.num_images
        context["split_maxsim"] = maxsim_matrix(
            evaluation.text.concepts,
            evaluation.text.mask,
            context["concepts"][:count],
            context["region_mask"][:count],
        )
    return context["split_maxsim"]


def maxsim_record(evaluation, context) -> dict:
    text, concepts, mask = evaluation.text, context["concepts"], context["region_mask"]
    ranks, top = [], []
    for start in range(0, evaluation.queries.size, QUERY_BLOCK):
        rows = evaluation.queries[start : start + QUERY_BLOCK]
        scores = np.concatenate(
            [
                maxsim_matrix(  # [q, N]
                    text.concepts[rows],
                    text.mask[rows],
                    concepts[low : low + IMAGE_BLOCK],
                    mask[low : low + IMAGE_BLOCK],
                    QUERY_BLOCK,
                )
                for low in range(0, concepts.shape[0], IMAGE_BLOCK)
            ],
            axis=1,
        )
        ranks.append(
            retrieval_metrics.ranks_text_to_image(scores, evaluation.corpus.caption_image[rows])
        )
        top.append(top_indices(scores, 10))
    matrix = split_maxsim(evaluation, context)
    i2t = retrieval_metrics.ranks_image_to_text(matrix.T, evaluation.corpus.caption_image)
    latency = evaluation.latency.scan(context["searcher"], "exact", "stage2")
    return evaluation.record(
        "maxsim",
        np.concatenate(ranks),
        i2t,
        latency,
        {"concepts": context["parts"]["concepts"]},
        ["i2t: the t2i MaxSim matrix transposed (as lateint.train.dev_recall)"],
        matrix,
        settings={},
        top_images=np.concatenate(top),
    )


# ---- joint layers --------------------------------------------------------------------------------


def exhaustive_record(evaluation, context) -> dict:
    store, settings = context["store"], evaluation.settings
    positions = spaced(
        evaluation.queries.size,
        min(
            settings.max_exhaustive_queries,
            max(1, settings.max_exhaustive_pairs // store.num_images),
        ),
    )  # into evaluation.queries
    queries = evaluation.queries[positions]
    began = time.perf_counter()
    scores, joint_ms, gather_ms = evaluation.joint.text_to_images(store, queries)  # [Qe, N]
    ranks = retrieval_metrics.ranks_text_to_image(scores, evaluation.query_images[positions])
    logger.info(
        f"joint_exhaustive t2i: {queries.size} queries x {store.num_images} images in "
        f"{time.perf_counter() - began:.0f} s"
    )
    encode_ms = evaluation.latency.encode(context["searcher"], 3)
    latency = dict(
        dict.fromkeys(LATENCY_KEYS),
        encode=encode_ms,
        gather=gather_ms,
        joint=float(np.median(joint_ms)),
    )
    latency["total"] = encode_ms + gather_ms + latency["joint"]
    images, i2t_ranks = exhaustive_i2t(evaluation, store)
    full = (
        queries.size == evaluation.corpus.num_captions
        and images.size == evaluation.corpus.num_images
    )
    notes = [
        f"t2i on {queries.size} of {evaluation.queries.size} queries (evenly spaced; "
        f"max_exhaustive_queries={settings.max_exhaustive_queries}, "
        f"max_exhaustive_pairs={settings.max_exhaustive_pairs})",
        f"i2t on {images.size} of {evaluation.corpus.num_images} images (evenly spaced) "
        f"against all {evaluation.corpus.num_captions} captions",
        "latency: encode + gather of all N stored activations + joint layers over the "
        "N pairs of one query (median over its t2i queries)",
    ]
    all_ranks = np.full(evaluation.queries.size, store.num_images, np.int64)
    all_ranks[positions] = ranks  # only `positions` (the exhaustive subset) are read
    record = evaluation.record(
        "joint_exhaustive",
        all_ranks,
        i2t_ranks,
        latency,
        {"activations": context["parts"]["activations"]},
        notes,
        scores[:, : evaluation.corpus.num_images] if full else None,
        settings={},
        query_positions=positions,
        top_images=top_indices(scores, 10),
    )
    if not full:  # the 'full' summary must come from the subset's own ranks
        record["recall"]["full"] = retrieval_metrics.top_k_summary(ranks, i2t_ranks)
    record["queries"].update(t2i=int(queries.size), i2t=int(images.size))
    return record


def exhaustive_i2t(evaluation, store: ActivationStore):
    """Joint i2t of an evenly spaced image subset against every caption (N-independent,
    cached per storage mode). Returns (images [S], ranks [S])."""
    key = ("exhaustive", store.storage_dtype)
    if key not in evaluation.i2t_cache:
        settings, captions = evaluation.settings, evaluation.corpus.num_captions
        images = spaced(
            evaluation.corpus.num_images,
            min(
                settings.max_exhaustive_queries,
                max(1, settings.max_exhaustive_pairs // captions),
            ),
        )
        scores = evaluation.joint.images_to_texts(store, images)  # [S, M]
        evaluation.i2t_cache[key] = (
            images,
            retrieval_metrics.ranks_image_subset_to_text(
                scores, images, evaluation.corpus.caption_image
            ),
        )
    return evaluation.i2t_cache[key]


def staged_i2t(evaluation, context) -> np.ndarray:
    """[N0] i2t ranks: each split image's MaxSim top-K captions reranked by the joint layers
    (JointScorer.rerank_images_to_texts); the others keep their MaxSim order below them."""
    store = context["store"]
    key = ("staged", store.storage_dtype, evaluation.settings.K)
    if key not in evaluation.i2t_cache:
        base = split_maxsim(evaluation, context).T  # [N0, M]
        reranked = evaluation.joint.rerank_images_to_texts(store, base, evaluation.settings.K)
        evaluation.i2t_cache[key] = retrieval_metrics.ranks_image_to_text(
            reranked, evaluation.corpus.caption_image
        )
    return evaluation.i2t_cache[key]


# ---- the staged pipeline -------------------------------------------------------------------------


def staged_record(evaluation, context, name: str) -> dict:
    searcher, settings, text = context["searcher"], evaluation.settings, evaluation.text
    options = dict(k=settings.K, n=settings.n, K=settings.K, first_stage=name)
    began = time.perf_counter()
    results = searcher.search(
        [evaluation.corpus.captions[row] for row in evaluation.queries], **options
    )
    ranks = np.full(evaluation.queries.size, context["store"].num_images, np.int64)  # >= K
    top = np.full((evaluation.queries.size, 10), context["store"].num_images, np.int64)
    for row, (result, image) in enumerate(zip(results, evaluation.query_images)):
        scores = np.array([hit.score for hit in result.hits])
        found_top = [hit.index for hit in result.hits][:10]
        top[row, : len(found_top)] = found_top
        found = [hit.score for hit in result.hits if hit.index == image]
        if found:  # the metrics' tie rule: every tie counts against the query
            ranks[row] = int(np.sum(scores >= found[0])) - 1
    logger.info(
        f"staged {name}: {evaluation.queries.size} queries in {time.perf_counter() - began:.0f} s"
    )
    latency = evaluation.latency.staged(searcher, options)
    stage = searcher.stages[name]
    reference_rows = evaluation.queries[spaced(evaluation.queries.size, settings.recall_queries)]
    side = QuerySide(
        text.concepts[reference_rows],
        text.mask[reference_rows],
        text.global_vector[reference_rows],
    )
    recall = retrieval_metrics.first_stage_recall(
        stage.search(side, settings.n)[0], searcher.stages["exact"].search(side, settings.K)[0]
    )
    parts = {
        "first_stage": stage.nbytes / max(1, stage.num_images),
        "concepts": context["parts"]["concepts"],
        "activations": context["parts"]["activations"],
    }
    notes = [
        f"t2i ranks known within the top K={settings.K}: medr/meanr null",
        f"i2t: each image's exact MaxSim top-{settings.K} captions reranked by the joint "
        "layers (no first stage over captions; the same for every staged row)",
    ]
    return evaluation.record(
        "staged",
        ranks,
        staged_i2t(evaluation, context),
        latency,
        parts,
        notes,
        t2i_known=settings.K,
        first_stage=name,
        settings=options,
        top_images=top,
        first_stage_recall={
            "value": recall,
            "queries": int(reference_rows.size),
            "of": f"exact MaxSim top {settings.K} within the first {settings.n} candidates",
        },
    )
