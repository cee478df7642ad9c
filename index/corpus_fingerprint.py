"""Corpus fingerprint: what an INDEX was computed from, so a resume cannot mix two corpora.

The manifest's `corpus` entry (written by lateint.index.precompute, checked on every resume and on every
rerun over a finished INDEX):

  split            the corpus split indexed
  images, regions, feature_dim   the corpus shapes N, R, F
  ids_sha256       sha256 of the external ids, one per line (the same text as INDEX/ids.txt)
  content_sha256   sha256 over region counts [N] and boxes [N, R, 5] of every image, and the
                   region features [R, F] of `sampled_images` images spread evenly over [0, N)
  sampled_images   how many images' features the content digest covers (all of them up to
                   FULL_DIGEST_IMAGES; a large memory-mapped corpus is sampled so the check reads
                   a bounded number of bytes)
"""

from __future__ import annotations

import hashlib

import numpy as np

from lateint.index.manifest import CORPUS_FIELDS, IndexRefusedError

# Up to this many images every image's features enter the digest (scenes' 1,000-image test split,
# COCO 5K: ~1.5 GB of features, ~2 s); above it, this many images spread evenly over the corpus.
FULL_DIGEST_IMAGES = 8192


def _sampled_rows(num_images: int) -> np.ndarray:
    if num_images <= FULL_DIGEST_IMAGES:
        return np.arange(num_images)
    return np.unique(np.linspace(0, num_images - 1, FULL_DIGEST_IMAGES).round().astype(np.int64))


def corpus_fingerprint(corpus, split: str) -> dict:
    """corpus: lateint.data.corpus.RegionCorpus. Returns the manifest's `corpus` entry."""
    ids_text = "".join(f"{image_id}\n" for image_id in corpus.image_ids)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(corpus.region_counts, np.int64).tobytes())
    digest.update(np.ascontiguousarray(corpus.boxes, np.float32).tobytes())
    rows = _sampled_rows(corpus.num_images)
    for start in range(0, len(rows), 256):  # bounded reads of a memory-mapped [N, R, F]
        block = np.asarray(corpus.regions[rows[start : start + 256]], np.float32)
        digest.update(np.ascontiguousarray(block).tobytes())
    return {
        "split": str(split),
        "images": corpus.num_images,
        "regions": corpus.max_regions,
        "feature_dim": corpus.feature_dim,
        "ids_sha256": hashlib.sha256(ids_text.encode("utf-8")).hexdigest(),
        "content_sha256": digest.hexdigest(),
        "sampled_images": int(len(rows)),
    }


def check_corpus(manifest_path: str, stored: dict | None, current: dict, data: str) -> None:
    """Raises IndexRefusedError naming every differing field, stored vs current, when the INDEX
    at `manifest_path` was written for another corpus than the one at `data`."""
    if not isinstance(stored, dict):
        raise IndexRefusedError(
            f"{manifest_path}: field 'corpus' is missing (an INDEX written before corpus "
            f"fingerprints): cannot tell whether it holds {data!r}; pass --overwrite to rebuild"
        )
    differing = [
        f"corpus.{field}: index {stored.get(field)!r}, --data {current[field]!r}"
        for field in CORPUS_FIELDS
        if stored.get(field) != current[field]
    ]
    if differing:
        raise IndexRefusedError(
            f"{manifest_path}: written for another corpus than --data={data} ("
            + "; ".join(differing)
            + "); pass --overwrite to rebuild it for this corpus"
        )
