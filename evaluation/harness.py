"""The evaluation harness: recall, per-stage latency and bytes per image of every scorer of one
model on one INDEX, in one run (lateint.evaluation.main runs it over several N).

    evaluation = Evaluation(workdir, data, "test", Settings(n=256, K=32))
    records, samples = evaluation.evaluate_index(index_dir)   # one record per scorer

Scorers: 'joint_exhaustive' (text tower + joint layers over every stored image: the
cross-encoder baseline, on an evenly spaced query subset when N is large), 'global' (the dual
encoder), 'maxsim' (exact MaxSim over every image) and 'staged' (lateint.serve.searcher.Searcher, one
record per first stage). t2i: the split's captions (or an evenly spaced subset) against all N
INDEX images. i2t: the split's N0 images against its M captions through the same towers; it does
not depend on N. Staged i2t reranks each image's MaxSim top-K captions with the joint layers (no
first stage over captions exists). Staged t2i ranks are known within the top K only, so its
medr/meanr are null. Latency: single queries, medians per stage (lateint.evaluation.latency, LATENCY_KEYS).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from lateint import pretrained, retrieval_metrics
from lateint.checkpoint import load_model
from lateint.data import load_corpus
from lateint.evaluation import distractors
from lateint.evaluation.latency import LATENCY_KEYS, Latency, milliseconds
from lateint.evaluation.relational_truth import RelationalTruth, annotate
from lateint.index import codecs
from lateint.index.first_stage import SEARCH_NAMES, QuerySide
from lateint.index.store import ActivationStore
from lateint.inference import Inference
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher
from lateint.tokenizer import WordPieceTokenizer
from lateint.train.dev_recall import maxsim_matrix, rerank

logger = logging.getLogger(__name__)

PROTOCOLS = ("full", "1k5fold", "5k")
RECALL_KEYS = tuple(f"t2i_r{level}" for level in retrieval_metrics.RECALL_LEVELS)
QUERY_BLOCK = 64  # captions per MaxSim block
IMAGE_BLOCK = 4096  # images per MaxSim block ([64, 4096, T, R] float32 intermediates)
JOINT_BATCH = 64  # pairs per joint call: 1.2-1.5x faster per pair than 256 on 2 CPU cores


@dataclasses.dataclass(frozen=True)
class Settings:
    """n, K: the staged pipeline's candidates and reranked images (K >= 10 for R@10).
    max_queries: t2i captions (0: all). The exhaustive joint model runs on at most
    max_exhaustive_queries queries and max_exhaustive_pairs (query, image) pairs per direction.
    protocol: 'all' or one of PROTOCOLS ('full', ranking against every INDEX image, always)."""

    n: int = 256
    K: int = 32
    first_stages: tuple = ("concepts", "sq", "permutation", "exact")
    protocol: str = "all"
    max_queries: int = 1000
    max_exhaustive_queries: int = 200
    max_exhaustive_pairs: int = 100_000
    latency_queries: int = 20
    sample_queries: int = 3
    recall_queries: int = 200  # queries of the first-stage recall (vs exact MaxSim top K)
    batch_size: int = 256  # captions per text-tower call

    def protocols(self) -> tuple:
        if self.protocol not in ("all",) + PROTOCOLS:
            raise ValueError(
                f"protocol: expected 'all' or one of {list(PROTOCOLS)}, got {self.protocol!r}"
            )
        return (
            PROTOCOLS if self.protocol == "all" else tuple(dict.fromkeys(("full", self.protocol)))
        )


def spaced(total: int, count: int) -> np.ndarray:
    """min(count, total) evenly spaced distinct indices of [0, total), ascending; count 0: all."""
    count = min(total, count) if count else total
    return np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))


def top_images(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """[Q, N] scores -> [Q, min(k, N)] best image indices (ties: the lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def bytes_per_image(store: ActivationStore) -> dict:
    """Stored bytes per image of each part: activations, concepts (each + its mask), global."""
    storage = store.manifest["storage"]
    regions, concept_dim = store.regions, store.concept_dim
    concept_bytes = codecs.numpy_dtype(storage["concepts_dtype"]).itemsize
    return {
        "activations": regions * codecs.bytes_per_region(storage["activations_dtype"], store.hidden)
        + regions,
        "concepts": regions * concept_dim * concept_bytes + regions,
        "global": concept_dim * 4,
    }


class Evaluation:
    """One model and one corpus split; evaluate_index runs every scorer on one INDEX."""

    def __init__(
        self,
        workdir: str,
        data: str,
        split: str,
        settings: Settings = Settings(),
        tokenizer_dir: str | None = None,
    ):
        self.settings = settings
        settings.protocols()
        self.model, self.meta = load_model(workdir)
        self.corpus = load_corpus(data, split)
        self.source = f"{data} split {split!r}"
        tokenizer_dir = tokenizer_dir or pretrained.default_minilm_directory()
        default = WordPieceTokenizer.from_directory(tokenizer_dir)
        token_ids, token_mask = default.encode(self.corpus.captions)  # [M, T]
        # Each caption's length bucket [M]; only the buckets in use are compiled (a server pads
        # a query to its bucket the same way).
        self.caption_lengths = np.array(
            [default.bucket_for(int(count)) for count in token_mask.sum(1)]
        )
        lengths = sorted(set(self.caption_lengths.tolist()))
        self.buckets = Buckets(
            query_lengths=lengths,
            query_batches=(1, 16),
            candidates=(settings.n,),
            rerank=(settings.K,),
            default_n=settings.n,
            default_K=settings.K,
        )
        self.tokenizer = WordPieceTokenizer.from_directory(tokenizer_dir, lengths)
        self.inference = Inference(self.model)
        began = time.perf_counter()
        self.text = self.inference.encode_text(token_ids, token_mask, settings.batch_size)
        logger.info(
            f"encoded {self.corpus.num_captions} captions of {self.source} in "
            f"{time.perf_counter() - began:.0f} s"
        )
        self.queries = spaced(self.corpus.num_captions, settings.max_queries)  # [Q] captions
        self.query_images = self.corpus.caption_image[self.queries]  # [Q]
        latency_rows = self.queries[spaced(self.queries.size, max(1, settings.latency_queries))]
        self.latency = Latency(
            [self.corpus.captions[row] for row in latency_rows],
            self.text,
            self.buckets,
            self.tokenizer,
            settings.K,
        )
        self._i2t_cache: dict = {}
        self.ranks: dict = {}  # label -> t2i ranks [Q] on the last INDEX (N where unknown)
        # Scenes corpora: oracle recall and partner accuracy (None for COCO-style data).
        self.relational = RelationalTruth.load(data, split, self.corpus)

    def evaluate_index(self, index_dir: str) -> tuple[list[dict], list[dict]]:
        """Every scorer on INDEX; returns (records, sample queries with their top 5)."""
        store = ActivationStore.open(index_dir)
        distractors.check_index_ids(store, self.corpus.image_ids, self.source)
        wanted = [name for name in self.settings.first_stages if name != "exact"]
        built = distractors.ready_stages(index_dir, wanted)
        staged = built + (["exact"] if "exact" in self.settings.first_stages else [])
        searcher = Searcher(
            self.model,
            self.meta,
            store,
            self.tokenizer,
            self.buckets,
            first_stages=sorted(set(staged) | {"exact", "exact_global"}, key=SEARCH_NAMES.index),
        )
        began = time.perf_counter()
        context = dict(
            store=store,
            searcher=searcher,
            parts=bytes_per_image(store),
            concepts=store.read_concepts(0, store.num_images),  # [N, R, C]
            region_mask=store.read_region_mask(0, store.num_images),  # [N, R]
            image_global=store.read_global(0, store.num_images),
        )  # [N, C]
        logger.info(
            f"{index_dir}: {store.num_images} images read in {time.perf_counter() - began:.0f} s"
        )
        records = [self._exhaustive(context), self._global(context), self._maxsim(context)]
        records += [self._staged(context, name) for name in staged]
        subset = records[0].pop("query_positions")
        self._add_relational(records, context, subset)
        common = {
            "num_images": store.num_images,
            "corpus_images": self.corpus.num_images,
            "distractors": store.num_images - self.corpus.num_images,
            "storage": store.storage_dtype,
            "index": index_dir,
            "skipped_first_stages": {
                name: "not built in this INDEX (python -m lateint.index.build)"
                for name in wanted
                if name not in built
            },
        }
        self.ranks = {}
        for record in records:
            name = record["scorer"] + (
                f":{record['first_stage']}" if "first_stage" in record else ""
            )
            self.ranks[name] = record.pop("t2i_ranks")
            ranks = self.ranks[name][subset]
            summary = retrieval_metrics.top_k_summary(ranks, ranks, record["settings"].get("K"))
            record["exhaustive_subset"] = dict(
                queries=int(subset.size), **{key: summary[key] for key in RECALL_KEYS}
            )
            record.update(common)
        return records, self._samples(searcher, "concepts" if "concepts" in staged else "exact")

    def _add_relational(self, records: list, context: dict, subset: np.ndarray) -> None:
        """Oracle R@K and partner accuracy per scorer (lateint.evaluation.relational_truth.annotate)."""

        def pair_scorers():
            matrix = self._split_maxsim(context)
            store, image_global, text = context["store"], context["image_global"], self.text
            return {
                "global": lambda captions, images: np.sum(
                    text.global_vector[captions] * image_global[images], axis=-1
                ),
                "maxsim": lambda captions, images: matrix[captions, images],
                "joint": lambda captions, images: self._joint(captions, *store.gather(images)),
            }

        annotate(records, self.relational, self.queries, subset, pair_scorers)

    def _record(
        self,
        scorer,
        t2i_ranks,
        i2t_ranks,
        latency,
        parts,
        notes,
        matrix=None,
        t2i_known=None,
        **fields,
    ) -> dict:
        """matrix: [M, N0] pair scores of every caption x split image, for the COCO protocols
        (None: the scorer has none); i2t uses its transpose."""
        recall, count = {}, self.corpus.num_images
        for protocol in self.settings.protocols():
            reason = None
            if protocol == "full":
                recall[protocol] = retrieval_metrics.top_k_summary(t2i_ranks, i2t_ranks, t2i_known)
                continue
            if matrix is None:
                reason = "no score matrix of every caption x split image (top K or a subset)"
            elif protocol == "5k" and count != 5000:
                reason = f"needs a 5000-image split, this one has {count}"
            elif protocol == "1k5fold" and count % 1000:
                reason = f"needs a split of a multiple of 1000 images, this one has {count}"
            if reason:
                notes.append(f"protocol {protocol}: null: {reason}")
                recall[protocol] = None
            elif protocol == "5k":
                recall[protocol] = retrieval_metrics.coco_5k(matrix, self.corpus.caption_image)
            else:
                recall[protocol] = retrieval_metrics.coco_1k_5fold(
                    matrix, self.corpus.caption_image
                )
        return dict(
            scorer=scorer,
            recall=recall,
            latency_ms=latency,
            bytes_per_image=dict(parts, total=sum(parts.values())),
            queries={
                "t2i": int(self.queries.size),
                "i2t": count,
                "t2i_of": self.corpus.num_captions,
            },
            notes=notes,
            t2i_ranks=t2i_ranks,
            **fields,
        )

    # ---- dual encoder and MaxSim --------------------------------------------------------------

    def _global(self, context) -> dict:
        text, image_global = self.text, context["image_global"]
        ranks, top = [], []
        for start in range(0, self.queries.size, 256):
            scores = text.global_vector[self.queries[start : start + 256]] @ image_global.T
            ranks.append(
                retrieval_metrics.ranks_text_to_image(
                    scores, self.query_images[start : start + 256]
                )
            )
            top.append(top_images(scores))  # [256, 10]
        ranks = np.concatenate(ranks)
        matrix = text.global_vector @ image_global[: self.corpus.num_images].T  # [M, N0]
        i2t = retrieval_metrics.ranks_image_to_text(matrix.T, self.corpus.caption_image)
        latency = self.latency.scan(context["searcher"], "exact_global", "stage1")
        return self._record(
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

    def _split_maxsim(self, context) -> np.ndarray:
        """[M, N0] MaxSim of every caption against the split's images (computed once)."""
        if "split_maxsim" not in context:
            count = self.corpus.num_images
            context["split_maxsim"] = maxsim_matrix(
                self.text.concepts,
                self.text.mask,
                context["concepts"][:count],
                context["region_mask"][:count],
            )
        return context["split_maxsim"]

    def _maxsim(self, context) -> dict:
        text, concepts, mask = self.text, context["concepts"], context["region_mask"]
        ranks, top = [], []
        for start in range(0, self.queries.size, QUERY_BLOCK):
            rows = self.queries[start : start + QUERY_BLOCK]
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
                retrieval_metrics.ranks_text_to_image(scores, self.corpus.caption_image[rows])
            )
            top.append(top_images(scores))
        matrix = self._split_maxsim(context)
        i2t = retrieval_metrics.ranks_image_to_text(matrix.T, self.corpus.caption_image)
        latency = self.latency.scan(context["searcher"], "exact", "stage2")
        return self._record(
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

    # ---- joint layers -------------------------------------------------------------------------

    def _joint(self, captions, stored, image_mask) -> np.ndarray:
        """Joint scores of pairs: captions [P] int with stored images [P, R, H'] and masks [P, R]
        (broadcast views are fine) -> [P]. Each caption keeps the tokens of its length bucket,
        as the searcher pads queries, so short captions cost what they cost online."""
        captions = np.asarray(captions)
        scores = np.empty(captions.size, np.float32)
        lengths = self.caption_lengths[captions]
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            chosen = captions[rows]
            scores[rows] = self.inference.joint_scores(
                self.text.activations[chosen, :length],
                self.text.mask[chosen, :length],
                stored[rows],
                image_mask[rows],
                JOINT_BATCH,
            )
        return scores

    def _exhaustive(self, context) -> dict:
        store, settings = context["store"], self.settings
        positions = spaced(
            self.queries.size,
            min(
                settings.max_exhaustive_queries,
                max(1, settings.max_exhaustive_pairs // store.num_images),
            ),
        )  # into self.queries
        queries = self.queries[positions]
        scores = np.empty((queries.size, store.num_images), np.float32)  # [Qe, N]
        joint_ms, gather_ms, began = np.zeros(queries.size), 0.0, time.perf_counter()
        for start, stop in store.blocks():
            started = time.perf_counter()
            stored, image_mask = store.gather(np.arange(start, stop))  # [b, R, H'], [b, R]
            gather_ms += milliseconds(started)
            for row, caption in enumerate(queries):
                started = time.perf_counter()
                scores[row, start:stop] = self._joint(
                    np.full(stop - start, caption), stored, image_mask
                )
                joint_ms[row] += milliseconds(started)
        ranks = retrieval_metrics.ranks_text_to_image(scores, self.query_images[positions])
        logger.info(
            f"joint_exhaustive t2i: {queries.size} queries x {store.num_images} images in "
            f"{time.perf_counter() - began:.0f} s"
        )
        encode_ms = self.latency.encode(context["searcher"], 3)
        latency = dict(
            dict.fromkeys(LATENCY_KEYS),
            encode=encode_ms,
            gather=gather_ms,
            joint=float(np.median(joint_ms)),
        )
        latency["total"] = encode_ms + gather_ms + latency["joint"]
        images, i2t_ranks = self._exhaustive_i2t(store)
        full = queries.size == self.corpus.num_captions and images.size == self.corpus.num_images
        notes = [
            f"t2i on {queries.size} of {self.queries.size} queries (evenly spaced; "
            f"max_exhaustive_queries={settings.max_exhaustive_queries}, "
            f"max_exhaustive_pairs={settings.max_exhaustive_pairs})",
            f"i2t on {images.size} of {self.corpus.num_images} images (evenly spaced) "
            f"against all {self.corpus.num_captions} captions",
            "latency: encode + gather of all N stored activations + joint layers over the "
            "N pairs of one query (median over its t2i queries)",
        ]
        all_ranks = np.full(self.queries.size, store.num_images, np.int64)
        all_ranks[positions] = ranks  # only `positions` (the exhaustive subset) are read
        record = self._record(
            "joint_exhaustive",
            all_ranks,
            i2t_ranks,
            latency,
            {"activations": context["parts"]["activations"]},
            notes,
            scores[:, : self.corpus.num_images] if full else None,
            settings={},
            query_positions=positions,
            top_images=top_images(scores),
        )
        if not full:  # the 'full' summary must come from the subset's own ranks
            record["recall"]["full"] = retrieval_metrics.top_k_summary(ranks, i2t_ranks)
        record["queries"].update(t2i=int(queries.size), i2t=int(images.size))
        return record

    def _exhaustive_i2t(self, store: ActivationStore):
        """Joint i2t of an evenly spaced image subset against every caption (N-independent,
        cached per storage mode). Returns (images [S], ranks [S])."""
        key = ("exhaustive", store.storage_dtype)
        if key not in self._i2t_cache:
            settings, captions = self.settings, self.corpus.num_captions
            images = spaced(
                self.corpus.num_images,
                min(
                    settings.max_exhaustive_queries,
                    max(1, settings.max_exhaustive_pairs // captions),
                ),
            )
            scores = np.empty((images.size, captions), np.float32)  # [S, M]
            for row, image in enumerate(images):
                stored, image_mask = store.gather(np.array([image]))  # [1, R, H'], [1, R]
                scores[row] = self._joint(
                    np.arange(captions),
                    np.broadcast_to(stored, (captions,) + stored.shape[1:]),
                    np.broadcast_to(image_mask, (captions, image_mask.shape[1])),
                )
            self._i2t_cache[key] = (
                images,
                retrieval_metrics.ranks_image_subset_to_text(
                    scores, images, self.corpus.caption_image
                ),
            )
        return self._i2t_cache[key]

    def _staged_i2t(self, context) -> np.ndarray:
        """[N0] i2t ranks: each split image's MaxSim top-K captions reranked by the joint layers
        (lateint.train.dev_recall.rerank); the others keep their MaxSim order below them."""
        store = context["store"]
        key = ("staged", store.storage_dtype, self.settings.K)
        if key not in self._i2t_cache:
            base = self._split_maxsim(context).T  # [N0, M]
            top = min(self.settings.K, base.shape[1])
            candidates = np.argsort(-base, axis=1, kind="stable")[:, :top]  # [N0, K]
            joint = np.empty(candidates.shape, np.float32)
            block = max(1, 4096 // top)  # images per step: <= 4096 (caption, image) pairs
            for start in range(0, base.shape[0], block):
                rows = candidates[start : start + block]  # [b, K]
                stored, image_mask = store.gather(np.arange(start, start + rows.shape[0]))
                images = np.repeat(np.arange(rows.shape[0]), top)
                joint[start : start + rows.shape[0]] = self._joint(
                    rows.reshape(-1), stored[images], image_mask[images]
                ).reshape(rows.shape)
            self._i2t_cache[key] = retrieval_metrics.ranks_image_to_text(
                rerank(base, candidates, joint), self.corpus.caption_image
            )
        return self._i2t_cache[key]

    # ---- the staged pipeline ------------------------------------------------------------------

    def _staged(self, context, name: str) -> dict:
        searcher, settings, text = context["searcher"], self.settings, self.text
        options = dict(k=settings.K, n=settings.n, K=settings.K, first_stage=name)
        began = time.perf_counter()
        results = searcher.search([self.corpus.captions[row] for row in self.queries], **options)
        ranks = np.full(self.queries.size, context["store"].num_images, np.int64)  # >= K
        top = np.full((self.queries.size, 10), context["store"].num_images, np.int64)
        for row, (result, image) in enumerate(zip(results, self.query_images)):
            scores = np.array([hit.score for hit in result.hits])
            found_top = [hit.index for hit in result.hits][:10]
            top[row, : len(found_top)] = found_top
            found = [hit.score for hit in result.hits if hit.index == image]
            if found:  # the metrics' tie rule: every tie counts against the query
                ranks[row] = int(np.sum(scores >= found[0])) - 1
        logger.info(
            f"staged {name}: {self.queries.size} queries in {time.perf_counter() - began:.0f} s"
        )
        latency = self.latency.staged(searcher, options)
        stage = searcher.stages[name]
        reference_rows = self.queries[spaced(self.queries.size, settings.recall_queries)]
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
        return self._record(
            "staged",
            ranks,
            self._staged_i2t(context),
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

    def _samples(self, searcher: Searcher, first_stage: str) -> list[dict]:
        if not self.settings.sample_queries:
            return []
        rows = self.queries[spaced(self.queries.size, self.settings.sample_queries)]
        results = searcher.search(
            [self.corpus.captions[row] for row in rows],
            k=min(5, self.settings.K),
            first_stage=first_stage,
        )

        def hit_record(row, hit):
            found = {"id": hit.id, "score": hit.score}
            if self.relational is not None and hit.index < self.corpus.num_images:
                found["caption_true"] = bool(self.relational.truth[row, hit.index])
            return found

        return [
            {
                "query": result.query,
                "first_stage": first_stage,
                "true_image": self.corpus.image_ids[self.corpus.caption_image[row]],
                "top5": [hit_record(row, hit) for hit in result.hits],
            }
            for row, result in zip(rows, results)
        ]
