"""Synthetic clustered concept vectors with a known structure, for tests and benchmarks.

Regions are noisy copies of "topic" directions drawn with Zipf-like frequencies (a few common
concepts, a long tail, as real region concepts are); an image's global vector is the normalised
mean of its regions plus noise. A query describes one target image: most words are noisy copies
of the target's regions, the rest come from random topics. Shapes: N images, R regions, C dim,
Q queries, T words.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lateint.index.first_stage.query import QuerySide


class SyntheticImages(NamedTuple):
    concepts: np.ndarray  # [N, R, C] float32, zeros where the mask is False
    region_mask: np.ndarray  # [N, R] bool
    global_vectors: np.ndarray  # [N, C] float32


def _normalise(vectors):
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def topics(num_topics: int, concept_dim: int, seed: int = 0) -> np.ndarray:
    """Topic directions [num_topics, C] float32 unit rows."""
    return _normalise(np.random.default_rng(seed).standard_normal((num_topics, concept_dim)))


def images(
    topic_vectors,
    num_images: int,
    regions: int,
    *,
    min_regions: int = 1,
    noise: float = 0.6,
    seed: int = 1,
    first_image: int = 0,
) -> SyntheticImages:
    """Images [N] whose regions are noisy topic vectors (noise: norm of the noise relative to
    the topic). Rows depend only on (seed, first_image + row), so generating [0, N) in one call
    or in pieces gives the same images."""
    num_topics, concept_dim = topic_vectors.shape
    frequencies = 1.0 / np.arange(1, num_topics + 1) ** 0.8
    frequencies /= frequencies.sum()
    concepts = np.zeros((num_images, regions, concept_dim), np.float32)
    region_mask = np.zeros((num_images, regions), bool)
    global_vectors = np.zeros((num_images, concept_dim), np.float32)
    for row in range(num_images):
        generator = np.random.default_rng([seed, first_image + row])
        count = generator.integers(min_regions, regions + 1)
        chosen = generator.choice(num_topics, count, p=frequencies)
        noisy = topic_vectors[chosen] + noise * generator.standard_normal(
            (count, concept_dim)
        ) / np.sqrt(concept_dim)
        concepts[row, :count] = _normalise(noisy)
        region_mask[row, :count] = True
        # An image without regions (min_regions = 0) gets a random global vector.
        mean = concepts[row, :count].mean(axis=0) if count else np.zeros(concept_dim)
        scale = 0.3 * np.linalg.norm(mean) if count else 1.0
        global_vectors[row] = _normalise(
            mean + scale * generator.standard_normal(concept_dim) / np.sqrt(concept_dim)
        )
    return SyntheticImages(concepts, region_mask, global_vectors)


def queries(
    data: SyntheticImages,
    topic_vectors,
    num_queries: int,
    words: int,
    *,
    min_words: int = 2,
    noise: float = 0.8,
    generic_fraction: float = 0.25,
    seed: int = 2,
) -> tuple[QuerySide, np.ndarray]:
    """Queries describing random target images (among those with at least one region).

    Returns:
      (QuerySide with concepts [Q, T, C], mask [Q, T], global_vector [Q, C]; targets [Q] int64).
    """
    generator = np.random.default_rng(seed)
    num_topics, concept_dim = topic_vectors.shape
    with_regions = np.flatnonzero(data.region_mask.any(axis=1))
    targets = with_regions[generator.integers(0, with_regions.size, num_queries)]
    concepts = np.zeros((num_queries, words, concept_dim), np.float32)
    mask = np.zeros((num_queries, words), bool)
    global_vector = np.zeros((num_queries, concept_dim), np.float32)
    for row, target in enumerate(targets):
        count = generator.integers(min_words, words + 1)
        real = np.flatnonzero(data.region_mask[target])
        sources = data.concepts[target, generator.choice(real, count)]
        generic = generator.random(count) < generic_fraction
        sources[generic] = topic_vectors[generator.integers(0, num_topics, generic.sum())]
        noisy = sources + noise * generator.standard_normal((count, concept_dim)) / np.sqrt(
            concept_dim
        )
        concepts[row, :count] = _normalise(noisy)
        mask[row, :count] = True
        global_vector[row] = _normalise(concepts[row, :count].mean(axis=0))
    return QuerySide(concepts, mask, global_vector), targets.astype(np.int64)
