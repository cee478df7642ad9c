"""The evaluation harness: recall, per-stage latency and bytes per image of every scorer of one
model on one INDEX, in one run (lateint.evaluation.main runs it over several N).

    evaluation = Evaluation(workdir, data, "test", Settings(n=256, K=32))
    records, samples = evaluation.evaluate_index(index_dir)   # one record per scorer

The scorers and their records: lateint.evaluation.scorers. t2i: the split's captions (or an
evenly spaced subset) against all N INDEX images; i2t: the split's N0 images against its M
captions through the same towers (it does not depend on N). Latency: single queries, medians per
stage (lateint.evaluation.latency). The recall protocols and Settings: lateint.evaluation.protocols.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lateint import pretrained, retrieval_metrics
from lateint.checkpoint import load_model
from lateint.data import load_corpus
from lateint.evaluation import distractors, scorers
from lateint.evaluation.joint import JointScorer
from lateint.evaluation.latency import Latency
from lateint.evaluation.protocols import RECALL_KEYS, Settings, recall_by_protocol, spaced
from lateint.evaluation.relational_truth import RelationalTruth, annotate
from lateint.index import codecs
from lateint.index.first_stage import SEARCH_NAMES
from lateint.index.store import ActivationStore
from lateint.inference import Inference
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher
from lateint.tokenizer import WordPieceTokenizer

logger = logging.getLogger(__name__)


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
        self.joint = JointScorer(self.inference, self.text, self.caption_lengths)
        self.i2t_cache: dict = {}
        self.ranks: dict = {}  # label -> t2i ranks [Q] on the last INDEX (N where unknown)
        # Scenes corpora: oracle recall and partner accuracy (None for COCO-style data).
        self.relational = RelationalTruth.load(data, split, self.corpus)

    def evaluate_index(self, index_dir: str) -> tuple[list[dict], list[dict]]:
        """Every scorer on INDEX; returns (records, sample queries with their top 5)."""
        store = ActivationStore.open(index_dir)
        distractors.check_index_ids(store, self.corpus.image_ids, self.source)
        # 'exact' and 'refined' run on any INDEX (serve.stages); the others when built.
        always = ("exact", "refined")
        wanted = [name for name in self.settings.first_stages if name not in always]
        built = distractors.ready_stages(index_dir, wanted)
        staged = built + [name for name in always if name in self.settings.first_stages]
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
        records = [scorers.exhaustive_record(self, context), scorers.global_record(self, context)]
        records.append(scorers.maxsim_record(self, context))
        records += [scorers.staged_record(self, context, name) for name in staged]
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
        # Sample queries through the server's default first stage among those evaluated.
        shown = next((name for name in ("refined", "concepts") if name in staged), "exact")
        return records, self._samples(searcher, shown)

    def _add_relational(self, records: list, context: dict, subset: np.ndarray) -> None:
        """Oracle R@K and partner accuracy per scorer (lateint.evaluation.relational_truth.annotate)."""

        def pair_scorers():
            matrix = scorers.split_maxsim(self, context)
            store, image_global, text = context["store"], context["image_global"], self.text
            return {
                "global": lambda captions, images: np.sum(
                    text.global_vector[captions] * image_global[images], axis=-1
                ),
                "maxsim": lambda captions, images: matrix[captions, images],
                "joint": lambda captions, images: self.joint.pairs(captions, *store.gather(images)),
            }

        annotate(records, self.relational, self.queries, subset, pair_scorers)

    def record(
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
        count = self.corpus.num_images
        recall = {
            protocol: recall_by_protocol(
                protocol, t2i_ranks, i2t_ranks, t2i_known, matrix, self.corpus.caption_image, notes
            )
            for protocol in self.settings.protocols()
        }
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
