"""Region features of a generated scenes corpus: raw crops, or a frozen pretrained encoder's.

The generator writes each split's raw 16 x 16 crops as `{split}_ims.npy` first. With
`region_features="cnn"` (the default) it then trains `lateint.data.region_encoder` on the train
split's crops (never a dev/test sprite: sprites are partitioned by split), keeps the crops as
`{split}_pixels.npy` and rewrites `{split}_ims.npy` with the encoder's features [N, R, D]. The
encoder is saved in `DIR/region_encoder/` so distractor corpora are encoded with the same one.

`label_ceiling` says how much of the benchmark the encoder's features leave reachable: the
oracle R@1 per caption kind of a perfect reasoner that sees only the encoder's argmax labels
(class and size of each region, on its box). Inventory captions name every object of a scene,
so one misread region makes one false: with ~93% of unseen objects named right the inventory
ceiling is ~80. The towers see soft features, not argmax labels, so a model can pass it a
little: it measures what the features leave ambiguous, not a strict bound.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from lateint.data import region_encoder, semantics, sprite_renders, sprites
from lateint.data.layout import SceneConfig
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
    directory: str,
    split: str = "train",
    config: region_encoder.EncoderConfig | None = None,
    scene_config: SceneConfig = SceneConfig(),
) -> region_encoder.RegionEncoder:
    """Trains the encoder on `split`'s raw crops (still in {split}_ims.npy), plus
    `config.sprite_copies` crops of each of `split`'s sprites drawn alone, and saves it."""
    config = config or region_encoder.EncoderConfig()
    pixels = np.load(os.path.join(directory, f"{split}_ims.npy"), mmap_mode="r")
    boxes = np.load(os.path.join(directory, f"{split}_boxes.npy"))
    classes, sizes = region_encoder.region_labels(_records(directory, split), pixels.shape[1])
    began = time.perf_counter()
    extra = None
    if config.sprite_copies:
        extra = sprite_renders.isolated_crops(
            sprites.load_sprite_bank(), split, scene_config, config.sprite_copies, config.seed
        )
        log.info(
            "region encoder: drew %d %s sprites alone in %.1f s",
            len(extra[2]),
            split,
            time.perf_counter() - began,
        )
    encoder = region_encoder.train_encoder(
        np.asarray(pixels), boxes, classes, sizes, config, extra=extra
    )
    report = encoder.report
    log.info(
        "region encoder: trained on %d %s regions and %d sprite crops in %.1f s; held-out "
        "class accuracy %.3f, size accuracy %.3f",
        report["train_regions"],
        split,
        report["sprite_crops"],
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


def encoder_labels(
    directory: str, split: str, encoder: region_encoder.RegionEncoder
) -> semantics.SceneTruth:
    """The split's scenes as the encoder reads them: each region's argmax class (none ->
    no object) and size, on the region's box. Reads {split}_pixels.npy, _boxes, _region_counts."""
    pixels = np.load(pixels_path(directory, split), mmap_mode="r")
    boxes = np.load(os.path.join(directory, f"{split}_boxes.npy"))
    counts = np.load(os.path.join(directory, f"{split}_region_counts.npy"))
    num, regions, _ = pixels.shape
    classes = np.empty((num, regions), np.int32)
    sizes = np.empty((num, regions), np.int32)
    network = encoder.network()
    logits = jax.jit(lambda pixels, boxes: network(pixels, boxes))
    for start in range(0, num, BLOCK):
        stop = min(start + BLOCK, num)
        class_logits, size_logits = logits(
            np.asarray(pixels[start:stop], np.float32).reshape(-1, pixels.shape[-1]),
            np.asarray(boxes[start:stop], np.float32).reshape(-1, 5),
        )
        classes[start:stop] = np.argmax(class_logits, -1).reshape(stop - start, regions)
        sizes[start:stop] = np.argmax(size_logits, -1).reshape(stop - start, regions)
    real = np.arange(regions)[None, :] < counts[:, None]
    classes = np.where(real & (classes != region_encoder.NONE_CLASS), classes, -1)
    return semantics.SceneTruth(classes, sizes, boxes[:, :, :4].astype(np.float64))


def label_ceiling(directory: str, split: str, encoder: region_encoder.RegionEncoder) -> dict:
    """{"object_accuracy": share of the split's objects whose class the encoder names,
    "oracle_r1/KIND": expected oracle R@1 (percent) of a reasoner that ranks scenes by the
    caption's truth under `encoder_labels`, picking uniformly among those it holds for}."""
    records = _records(directory, split)
    truth = semantics.SceneTruth.from_records(records)
    read = encoder_labels(directory, split, encoder)
    named = total = 0
    for row, record in enumerate(records):
        for item in record["objects"]:
            total += 1
            named += read.classes[row, item["region"]] == sprites.CLASS_NAMES.index(item["class"])
    hits, captions = {}, {}
    for record in records:
        for caption in record["captions"]:
            claims = semantics.parse(caption)
            kind = semantics.kind(claims)
            true, believed = truth.holds(claims), read.holds(claims)
            hit = (true & believed).sum() / believed.sum() if believed.any() else true.mean()
            hits[kind] = hits.get(kind, 0.0) + float(hit)
            captions[kind] = captions.get(kind, 0) + 1
    report = {"object_accuracy": round(named / max(total, 1), 4)}
    for kind in semantics.KINDS:
        if captions.get(kind):
            report[f"oracle_r1/{kind}"] = round(100.0 * hits[kind] / captions[kind], 1)
    return report


def summary(report: dict) -> str:
    """Lines a person reads after generation, from the encoder's report (+ its "dev" ceiling)."""
    lines = [
        f"region encoder: {report['train_seconds']:.0f} s on {report['train_regions']} train "
        f"regions and {report.get('sprite_crops', 0)} sprite crops; held-out accuracy class "
        f"{report.get('held_out_class_accuracy', float('nan')):.3f}, size "
        f"{report.get('held_out_size_accuracy', float('nan')):.3f}"
    ]
    if "dev" in report:
        dev = report["dev"]
        ceilings = ", ".join(
            f"{key.split('/')[1]} {value:.1f}"
            for key, value in dev.items()
            if key.startswith("oracle_r1/")
        )
        lines.append(
            f"region encoder on dev (unseen sprites): {100 * dev['object_accuracy']:.1f}% of "
            f"objects named right; oracle R@1 of a perfect reasoner on its labels: {ceilings}"
        )
    return "\n".join(lines)
