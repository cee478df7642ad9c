"""Periodic dev recall for the three scorers of one model: the global dual encoder, MaxSim, and
MaxSim top-K reranked by the joint layers (the staged pipeline without a first stage)."""

from __future__ import annotations

import numpy as np

from lateint import relational_metrics, retrieval_metrics
from lateint.data import semantics
from lateint.data.corpus import RegionCorpus
from lateint.inference import Inference
from lateint.ranking import maxsim_matrix, rerank, top_indices
from lateint.tokenizer import WordPieceTokenizer


def subset(corpus: RegionCorpus, num_images: int) -> RegionCorpus:
    """The first `num_images` images and their captions."""
    num_images = min(num_images, corpus.num_images)
    keep = np.flatnonzero(corpus.caption_image < num_images)
    return RegionCorpus(
        regions=corpus.regions[:num_images],
        boxes=corpus.boxes[:num_images],
        region_counts=corpus.region_counts[:num_images],
        captions=[corpus.captions[i] for i in keep],
        caption_image=corpus.caption_image[keep],
        image_ids=corpus.image_ids[:num_images],
    )


def dev_recall(
    inference: Inference,
    corpus: RegionCorpus,
    tokenizer: WordPieceTokenizer,
    text_length: int,
    rerank_k: int,
    batch_size: int = 128,
    records: list | None = None,
) -> dict:
    """Returns {scorer: recall summary} for 'global', 'maxsim' and 'rerank'. With the scenes
    layouts (`records`, aligned to the images) each summary also holds oracle R@K and partner
    accuracy, overall and per caption kind (lateint.relational_metrics)."""
    token_ids, token_mask = tokenizer.encode(corpus.captions, length=text_length)
    text = inference.encode_text(token_ids, token_mask, batch_size)
    image, stored = inference.encode_images(
        np.asarray(corpus.regions, np.float32),
        np.asarray(corpus.boxes, np.float32),
        corpus.region_mask,
        batch_size,
    )
    global_scores = text.global_vector @ image.global_vector.T  # [M, N]
    maxsim_scores = maxsim_matrix(text.concepts, text.mask, image.concepts, image.mask)
    k = min(rerank_k, corpus.num_images)
    # text -> image: each caption's MaxSim top-K images, scored by the joint layers
    t2i = top_indices(maxsim_scores, k)  # [M, K]
    captions = np.repeat(np.arange(len(corpus.captions)), k)
    joint_t2i = inference.joint_scores(
        text.activations[captions],
        text.mask[captions],
        stored[t2i.reshape(-1)],
        image.mask[t2i.reshape(-1)],
        batch_size,
    ).reshape(t2i.shape)
    # image -> text: each image's MaxSim top-K captions
    k_captions = min(rerank_k, len(corpus.captions))
    i2t = top_indices(maxsim_scores.T, k_captions)  # [N, K]
    images = np.repeat(np.arange(corpus.num_images), k_captions)
    joint_i2t = inference.joint_scores(
        text.activations[i2t.reshape(-1)],
        text.mask[i2t.reshape(-1)],
        stored[images],
        image.mask[images],
        batch_size,
    ).reshape(i2t.shape)
    caption_image = corpus.caption_image
    reranked = rerank(maxsim_scores, t2i, joint_t2i)
    results = {
        "global": retrieval_metrics.evaluate(global_scores, caption_image),
        "maxsim": retrieval_metrics.evaluate(maxsim_scores, caption_image),
        "rerank": retrieval_metrics.evaluate(
            reranked, caption_image, rerank(maxsim_scores.T, i2t, joint_i2t)
        ),
    }
    if records is not None:

        def joint_pairs(captions, images):
            return inference.joint_scores(
                text.activations[captions],
                text.mask[captions],
                stored[images],
                image.mask[images],
                batch_size,
            )

        add_relational(
            results,
            {"global": global_scores, "maxsim": maxsim_scores, "rerank": reranked},
            joint_pairs,
            corpus,
            records,
        )
    return results


def add_relational(
    results: dict, matrices: dict, joint_pairs, corpus: RegionCorpus, records: list
) -> None:
    """Adds oracle recall (from each scorer's [M, N] matrix) and partner accuracy to
    results[scorer]. The joint scorer ('rerank') scores its partner pairs with
    joint_pairs(captions [P], images [P]) -> [P], since a partner need not be in its top K."""
    truth = semantics.SceneTruth.from_records(records).truth_matrix(corpus.captions)  # [M, N]
    kinds = relational_metrics.caption_kinds(corpus.captions)
    labels = {}
    groups = np.array([labels.setdefault(record["group"], len(labels)) for record in records])
    captions, own, partner = relational_metrics.partner_pairs(groups, corpus.caption_image, truth)
    for scorer, scores in matrices.items():
        results[scorer].update(
            relational_metrics.oracle_recall(top_indices(scores, 10), truth, kinds)
        )
        if scorer == "rerank":
            pair_own, pair_partner = joint_pairs(captions, own), joint_pairs(captions, partner)
        else:
            pair_own, pair_partner = scores[captions, own], scores[captions, partner]
        results[scorer].update(
            relational_metrics.partner_accuracy(pair_own, pair_partner, kinds[captions])
        )


def format_table(results: dict) -> str:
    """A Markdown table of R@1/5/10 both directions and rsum per scorer (and oracle R@1 per
    caption kind and partner accuracy when the results hold them)."""
    keys = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum"]
    keys += [
        key
        for key in (
            "oracle_r1",
            "oracle_r1/inventory",
            "oracle_r1/relation",
            "oracle_r1/count",
            "partner_accuracy",
        )
        if all(key in summary for summary in results.values())
    ]
    lines = ["| scorer | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for scorer, summary in results.items():
        lines.append(f"| {scorer} | " + " | ".join(f"{summary[key]:.1f}" for key in keys) + " |")
    return "\n".join(lines)
