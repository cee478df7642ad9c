"""Shape buckets of the online path and the per-request stage settings they bound.

Every array on the hot path has one of a few fixed shapes (DESIGN.md contract 5): a query batch
of Q queries is padded to a batch bucket B, its tokens to a length bucket T, the first stage's
candidate count n to an n bucket and the rerank count K to a K bucket. `Buckets` holds those
lists; `Buckets.resolve` turns a request's (k, n, K, first_stage) into checked `StageSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def bucket_for(value: int, buckets: Sequence[int], what: str) -> int:
    """Smallest bucket >= value; raises ValueError naming `what` when none holds it."""
    for bucket in buckets:
        if value <= bucket:
            return bucket
    raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")


def _check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sorted(set(int(size) for size in sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(
            f"Buckets.{name}: expected a non-empty list of positive ints, got {list(sizes)}"
        )
    return sizes


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """Checked stage settings of one query: k results out of K reranked out of n candidates."""

    k: int
    n: int
    K: int
    first_stage: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Compiled shapes and the request bounds and defaults they imply.

    query_lengths: token buckets T (the tokenizer pads each query to the smallest that holds it).
    query_batches: query batch buckets B (several queries run as one padded batch).
    candidates: first-stage candidate buckets (n is padded up to one; max is the bound on n).
    rerank: joint-layer candidate buckets (K is padded up to one; max is the bound on K).
    default_n, default_K: used when a request leaves them out (raised to cover K and k).
    """

    query_lengths: tuple[int, ...] = (16, 32, 64)
    query_batches: tuple[int, ...] = (1, 4, 16)
    candidates: tuple[int, ...] = (64, 256, 1024)
    rerank: tuple[int, ...] = (16, 32, 64, 128)
    default_n: int = 256
    default_K: int = 32

    def __post_init__(self):
        for field in ("query_lengths", "query_batches", "candidates", "rerank"):
            object.__setattr__(self, field, _check_sizes(field, getattr(self, field)))
        if self.query_lengths[0] < 3:
            raise ValueError(
                f"Buckets.query_lengths: the smallest must hold [CLS] x [SEP] "
                f"(>= 3), got {self.query_lengths[0]}"
            )
        if not 1 <= self.default_K <= self.max_K:
            raise ValueError(
                f"Buckets.default_K: expected 1..{self.max_K} (largest rerank "
                f"bucket), got {self.default_K}"
            )
        if not self.default_K <= self.default_n <= self.max_n:
            raise ValueError(
                f"Buckets.default_n: expected {self.default_K}..{self.max_n} "
                f"(default_K..largest candidates bucket), got {self.default_n}"
            )
        if self.max_K > self.max_n:
            raise ValueError(
                f"Buckets: the largest rerank bucket {self.max_K} exceeds the "
                f"largest candidates bucket {self.max_n} (K <= n)"
            )

    max_n = property(lambda self: self.candidates[-1])
    max_K = property(lambda self: self.rerank[-1])
    max_batch = property(lambda self: self.query_batches[-1])
    max_length = property(lambda self: self.query_lengths[-1])

    def resolve(
        self,
        k: int,
        n: int | None,
        K: int | None,
        first_stage: str | None,
        first_stages: Sequence[str],
        default_first_stage: str,
    ) -> StageSettings:
        """Checks one query's settings against the bounds; fills the defaults.

        Bounds: 1 <= k <= K <= n, K <= max_K, n <= max_n, first_stage in first_stages. A
        missing K is max(default_K, k) capped at max_K; a missing n is max(default_n, K).
        Raises ValueError naming the field, the bound and the value.
        """
        for field, value in (("k", k), ("n", n), ("K", K)):
            if value is None and field != "k":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{field}: expected an int, got {type(value).__name__} {value!r}")
        if not 1 <= k <= self.max_K:
            raise ValueError(f"k: expected 1..{self.max_K} (largest rerank bucket), got {k}")
        if K is None:
            K = min(max(self.default_K, k), self.max_K)
        elif not 1 <= K <= self.max_K:
            raise ValueError(f"K: expected 1..{self.max_K} (largest rerank bucket), got {K}")
        if n is None:
            n = max(self.default_n, K)
        elif not 1 <= n <= self.max_n:
            raise ValueError(f"n: expected 1..{self.max_n} (largest candidates bucket), got {n}")
        if k > K:
            raise ValueError(
                f"k: expected at most K={K} (k results come from K reranked candidates), got {k}"
            )
        if K > n:
            raise ValueError(
                f"K: expected at most n={n} (K candidates are chosen from the "
                f"first stage's n), got {K}"
            )
        first_stage = default_first_stage if first_stage is None else first_stage
        if first_stage not in first_stages:
            raise ValueError(
                f"first_stage: expected one of {list(first_stages)}, got {first_stage!r}"
            )
        return StageSettings(k=k, n=n, K=K, first_stage=first_stage)
