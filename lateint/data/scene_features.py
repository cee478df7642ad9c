"""Region features of a generated scenes corpus: raw crops, or a frozen pretrained encoder's.

The generator writes each split's raw 16 x 16 crops as `{split}_ims.npy` first. With
`region_features="cnn"` (the default) it then trains `lateint.data.region_encoder` on the train
split's crops (never a dev/test sprite: sprites are partitioned by split), keeps the crops as
`{split}_pixels.npy` and rewrites `{split}_ims.npy` with the encoder's features [N, R, D]. The
encoder is saved in `DIR/region_encoder/` so distractor corpora are encoded with the same one.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from lateint.data import region_encoder
from lateint.data.npy_writer import NpyStreamWriter

log = logging.getLogger(__name__)
ENCODER_DIR = "region_encoder"
FEATURE_KINDS = ("cnn", "pixels")
BLOCK = 2048  # images encoded per block: memory stays flat for any N


def pixels_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}_pixels.npy")


def _records(directory: str, split: str) -> list:
    with open(os.path.join(directory, f"{split}_scenes.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def train_on_split(
    directory: str, split: str = "train", config: region_encoder.EncoderConfig | None = None
) -> region_encoder.RegionEncoder:
    """Trains the encoder on `split`'s raw crops (still in {split}_ims.npy) and saves it."""
    config = config or region_encoder.EncoderConfig()
    pixels = np.load(os.path.join(directory, f"{split}_ims.npy"), mmap_mode="r")
    boxes = np.load(os.path.join(directory, f"{split}_boxes.npy"))
    classes, sizes = region_encoder.region_labels(_records(directory, split), pixels.shape[1])
    encoder = region_encoder.train_encoder(np.asarray(pixels), boxes, classes, sizes, config)
    report = encoder.report
    log.info(
        "region encoder: trained on %d %s regions in %.1f s; held-out class accuracy "
        "%.3f, size accuracy %.3f",
        report["train_regions"],
        split,
        report["train_seconds"],
        report.get("held_out_class_accuracy", float("nan")),
        report.get("held_out_size_accuracy", float("nan")),
    )
    encoder.save(os.path.join(directory, ENCODER_DIR))
    return encoder


def encode_split(directory: str, split: str, encoder: region_encoder.RegionEncoder) -> None:
    """Moves raw crops to {split}_pixels.npy and writes encoded {split}_ims.npy [N, R, D]."""
    features_path = os.path.join(directory, f"{split}_ims.npy")
    raw_path = pixels_path(directory, split)
    if not os.path.exists(raw_path):
        os.replace(features_path, raw_path)
    pixels = np.load(raw_path, mmap_mode="r")
    boxes = np.load(os.path.join(directory, f"{split}_boxes.npy"), mmap_mode="r")
    began = time.perf_counter()
    shape = (pixels.shape[0], pixels.shape[1], encoder.feature_dim)
    with NpyStreamWriter(features_path, shape, np.float32) as writer:
        for start in range(0, pixels.shape[0], BLOCK):
            stop = min(start + BLOCK, pixels.shape[0])
            writer.append(
                encoder.encode(np.asarray(pixels[start:stop]), np.asarray(boxes[start:stop]))
            )
    log.info(
        "region encoder: encoded %s (%d images) in %.1f s",
        split,
        pixels.shape[0],
        time.perf_counter() - began,
    )


def load_encoder(directory: str) -> region_encoder.RegionEncoder | None:
    """The encoder saved with a corpus, or None for a raw-pixel corpus."""
    if not os.path.exists(os.path.join(directory, ENCODER_DIR, region_encoder.INFO_FILE)):
        return None
    return region_encoder.RegionEncoder.load(os.path.join(directory, ENCODER_DIR))
