"""What a Searcher takes and returns: prepared queries, hits, results, the served generation.

Shapes: L real tokens of a query; N images in the INDEX.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lateint.index.store import ActivationStore
from lateint.serve.buckets import StageSettings

# Milliseconds per stage: 'maxsim' includes reading the n candidates' stored concepts, 'gather'
# reading the K candidates' stored activations; 'total' = tokenize + the whole batch.
STAGE_TIMINGS = ("tokenize", "text_tower", "first_stage", "maxsim", "gather", "joint", "total")


@dataclasses.dataclass(frozen=True)
class PreparedQuery:
    """A checked, tokenized query: token_ids [L] int32 (L real tokens, [CLS] ... [SEP])."""

    text: str
    token_ids: np.ndarray
    settings: StageSettings
    tokenize_ms: float


@dataclasses.dataclass(frozen=True)
class Hit:
    id: str  # external image id (INDEX/ids.txt)
    index: int  # row in the INDEX, 0..N-1
    score: float  # joint score (the final ranking)
    maxsim: float  # the stage-2 MaxSim score that admitted it to the rerank
    rank: int  # 1-based


@dataclasses.dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[Hit]
    settings: StageSettings
    timings_ms: dict  # STAGE_TIMINGS -> milliseconds (shared by the batch but tokenize)
    batch_size: int  # queries in the batch this one ran in
    candidates: int  # images the first stage returned (<= n)
    generation: int = 0  # the INDEX generation that answered


@dataclasses.dataclass(frozen=True)
class IndexView:
    """One generation of the INDEX as the pipeline reads it."""

    store: ActivationStore
    stages: dict  # {name: first stage}, loaded and warmed
    image_ids: list  # [N] external ids
    generation: int

    @property
    def num_images(self) -> int:
        return self.store.num_images
