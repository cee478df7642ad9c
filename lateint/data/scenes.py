"""The scenes benchmark: relational scenes from real sprites, written in the precomp layout.

    python -m lateint.data.scenes --out=DIR --num_train=5000 --num_dev=1000 --num_test=1000 \
        --seed=0 [--images=false] [--region_features=cnn|pixels]

Each scene places 2-5 sprites (MNIST / scikit-learn digits, animal-mnist silhouettes; see
lateint.data.sprites) on a 128 x 128 canvas, small or large. Its regions are the sprites' crops
plus 0-3 distractor crops (background, shifted boxes, unions of two objects), each resized to
16 x 16 pixels, padded to R = 8, with boxes (x1, y1, x2, y2, area) in [0, 1]. By default a
frozen CNN pretrained on the train split's crops (lateint.data.scene_features) turns each crop
into F = 128 features, like a detector's; `--region_features=pixels` keeps the raw F = 256.
Five captions per scene (lateint.data.captions). Scenes come in groups of `group_size` that share
the same sprites at the same sizes in different arrangements, so only relations separate them.

Output in DIR, per split S (readable with `lateint.data.load_corpus(DIR, S)`):

    S_ims.npy [N, 8, F] float32 (S_pixels.npy [N, 8, 256]: the raw crops), S_boxes.npy [N, 8, 5],
    S_region_counts.npy [N] int32,
    S_caps.txt (5 lines per scene), S_ids.txt, S_scenes.jsonl (one layout per scene: objects
    with class, sprite source/instance, size, box and region index; distractors; captions),
    images/{id}.png (with --images), scenes_info.json (config, seed, counts, region features),
    region_encoder/ (the frozen region encoder, with its held-out accuracy and cost).

Everything is a function of (seed, split, group index): the same seed gives identical files.
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from lateint import atomic
from lateint.data import captions as captions_lib
from lateint.data import layout as layout_lib
from lateint.data import region_encoder, render, scene_features
from lateint.data import sprites as sprites_lib
from lateint.data.precomp import PrecompWriter

SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}


@dataclasses.dataclass
class Scene:
    """One generated scene. features [n, F], boxes [n, 5] normalised, n <= R regions."""

    scene_id: str
    group: str
    canvas: np.ndarray
    features: np.ndarray
    boxes: np.ndarray
    captions: list
    record: dict


def _normalised(box, canvas_size: int) -> list:
    return [value / canvas_size for value in box]


def make_group(
    bank: sprites_lib.SpriteBank,
    split: str,
    seed: int,
    group_index: int,
    members: int,
    config: layout_lib.SceneConfig,
) -> list:
    """The `members` scenes of one group: same sprites and sizes, different arrangements."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], group_index])
    objects = layout_lib.choose_objects(bank, split, rng, config, render.scale_sprite)
    shapes = [spec.pixels.shape for spec in objects]
    brightness = rng.uniform(0.75, 1.0, size=len(objects))
    arrangements, signatures = [], []
    for _ in range(members):
        for _ in range(20):
            object_boxes = layout_lib.place(shapes, rng, config)
            signature = layout_lib.relation_signature(objects, object_boxes)
            if signature not in signatures:
                break
        arrangements.append(object_boxes)
        signatures.append(signature)
    items = [
        [
            captions_lib.Item(spec.class_name, spec.size, box)
            for spec, box in zip(objects, object_boxes)
        ]
        for object_boxes in arrangements
    ]
    group_id = f"s{seed}-{split}-g{group_index:06d}"
    scenes = []
    for member, object_boxes in enumerate(arrangements):
        others = tuple(items[:member] + items[member + 1 :])
        scene_index = group_index * config.group_size + member
        scenes.append(
            _make_scene(
                objects,
                object_boxes,
                brightness,
                rng,
                config,
                captions_lib.describe(items[member], rng, others),
                scene_id=f"s{seed}-{split}-{scene_index:06d}",
                group_id=group_id,
                split=split,
            )
        )
    return scenes


def _make_scene(
    objects: list,
    object_boxes: list,
    brightness: np.ndarray,
    rng: np.random.Generator,
    config: layout_lib.SceneConfig,
    captions: list,
    scene_id: str,
    group_id: str,
    split: str,
) -> Scene:
    distractors = layout_lib.distractor_boxes(object_boxes, rng, config)
    canvas = render.compose(
        render.background(rng, config.canvas_size),
        [spec.pixels for spec in objects],
        object_boxes,
        brightness,
    )
    region_boxes = list(object_boxes) + [box for box, _ in distractors]
    order = rng.permutation(len(region_boxes))  # region slot k holds region order[k]
    slot_of = np.argsort(order)
    ordered = [region_boxes[k] for k in order]
    features = render.crop_features(canvas, ordered, config.feature_side)
    size = config.canvas_size
    boxes = np.asarray(
        [
            _normalised(box, size) + [(box[2] - box[0]) * (box[3] - box[1]) / size**2]
            for box in ordered
        ],
        np.float32,
    )
    record = {
        "id": scene_id,
        "split": split,
        "group": group_id,
        "canvas_size": size,
        "objects": [
            {
                "class": spec.class_name,
                "category": "digit" if spec.class_name.isdigit() else "animal",
                "source": spec.sprite.source,
                "instance": spec.sprite.instance,
                "size": spec.size,
                "box": _normalised(box, size),
                "box_pixels": list(box),
                "region": int(slot_of[index]),
            }
            for index, (spec, box) in enumerate(zip(objects, object_boxes))
        ],
        "distractors": [
            {
                "kind": kind,
                "box": _normalised(box, size),
                "region": int(slot_of[len(objects) + index]),
            }
            for index, (box, kind) in enumerate(distractors)
        ],
        "num_regions": len(ordered),
        "captions": captions,
    }
    return Scene(scene_id, group_id, canvas, features, boxes, captions, record)


def generate_split(
    out_dir: str,
    split: str,
    num_scenes: int,
    seed: int,
    config: layout_lib.SceneConfig = layout_lib.SceneConfig(),
    images: bool = True,
    progress_seconds: float = 10.0,
) -> dict:
    """Writes `num_scenes` scenes of `split` under out_dir; returns counts and timing."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split: expected one of {sorted(SPLIT_CODES)}, got {split!r}")
    config.check()
    bank = sprites_lib.load_sprite_bank()  # cached: loaded once per process
    image_dir = os.path.join(out_dir, "images")
    if images:
        os.makedirs(image_dir, exist_ok=True)
    stats = {"scenes": 0, "regions": 0, "start": time.perf_counter()}
    jsonl_path = os.path.join(out_dir, f"{split}_scenes.jsonl")
    try:
        with (
            PrecompWriter(
                out_dir, split, num_scenes, config.max_regions, config.feature_dim
            ) as writer,
            open(jsonl_path + ".partial", "w", encoding="utf-8") as jsonl,
        ):
            _write_scenes(
                bank,
                split,
                num_scenes,
                seed,
                config,
                writer,
                jsonl,
                image_dir if images else None,
                progress_seconds,
                stats,
            )
    except BaseException:
        if os.path.exists(jsonl_path + ".partial"):
            os.remove(jsonl_path + ".partial")
        raise
    os.replace(jsonl_path + ".partial", jsonl_path)
    stats["seconds"] = time.perf_counter() - stats["start"]
    del stats["start"]
    stats["mean_regions"] = stats.pop("regions") / max(stats["scenes"], 1)
    return stats


def _write_scenes(
    bank: sprites_lib.SpriteBank,
    split: str,
    num_scenes: int,
    seed: int,
    config: layout_lib.SceneConfig,
    writer: PrecompWriter,
    jsonl,
    image_dir: str | None,
    progress_seconds: float,
    stats: dict,
) -> None:
    """Generates the split group by group into `writer`, `jsonl` and image_dir (if any)."""
    last_report = stats["start"]
    for group_index in range(-(-num_scenes // config.group_size)):
        members = min(config.group_size, num_scenes - group_index * config.group_size)
        for scene in make_group(bank, split, seed, group_index, members, config):
            writer.add(scene.features, scene.boxes, scene.captions, scene.scene_id)
            jsonl.write(json.dumps(scene.record, separators=(",", ":")) + "\n")
            if image_dir is not None:
                render.save_png(scene.canvas, os.path.join(image_dir, f"{scene.scene_id}.png"))
            stats["scenes"] += 1
            stats["regions"] += len(scene.features)
        now = time.perf_counter()
        if now - last_report >= progress_seconds:
            done = stats["scenes"]
            rate = done / (now - stats["start"])
            logging.info(
                "%s: %d/%d scenes, %.0f scenes/s, ETA %.0f s",
                split,
                done,
                num_scenes,
                rate,
                (num_scenes - done) / max(rate, 1e-9),
            )
            last_report = now


def generate(
    out_dir: str,
    num_train: int,
    num_dev: int,
    num_test: int,
    seed: int,
    config: layout_lib.SceneConfig = layout_lib.SceneConfig(),
    images: bool = True,
    progress_seconds: float = 10.0,
    region_features: str = "cnn",
    encoder_config=None,
) -> dict:
    """Writes the train/dev/test splits (skipping empty ones) and scenes_info.json.

    region_features: "cnn" (a frozen encoder trained on this train split's crops, which then
    needs num_train > 0) or "pixels" (raw crops); encoder_config: a
    region_encoder.EncoderConfig (None: its defaults). Returns {"splits": {split: stats},
    "setup_seconds": sprite loading, "encoder": its report or None, "seconds": total}.
    Sprites are disjoint across splits for any seeds (lateint.data.sprites), so a distractor
    corpus made with another seed keeps test sprites out of train.
    """
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    if region_features not in scene_features.FEATURE_KINDS:
        raise ValueError(
            f"region_features: expected one of {scene_features.FEATURE_KINDS}, "
            f"got {region_features!r}"
        )
    if region_features == "cnn" and num_train < 1:
        raise ValueError(
            "region_features='cnn' trains the region encoder on the train split: "
            "num_train must be >= 1 (or use region_features='pixels')"
        )
    config.check()
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    sprites_lib.load_sprite_bank()
    setup_seconds = time.perf_counter() - start
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    stats = {}
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"num_{split}: expected >= 0, got {count}")
        if count:
            stats[split] = generate_split(
                out_dir, split, count, seed, config, images, progress_seconds
            )
    encoder_report = None
    if region_features == "cnn":
        encoder = scene_features.train_on_split(out_dir, "train", encoder_config, config)
        for split in stats:
            scene_features.encode_split(out_dir, split, encoder)
        encoder_report = dict(encoder.report)
        if "dev" in stats:
            encoder_report["dev"] = scene_features.label_ceiling(out_dir, "dev", encoder)
    info = {
        "seed": seed,
        "counts": counts,
        "images": images,
        "config": dataclasses.asdict(config),
        "region_features": region_features,
        "feature_dim": (encoder.feature_dim if region_features == "cnn" else config.feature_dim),
        "region_encoder": encoder_report
        and {  # timings vary: printed, never stored
            key: value for key, value in encoder_report.items() if key != "train_seconds"
        },
        "captions_per_scene": 5,
    }
    atomic.write_json(os.path.join(out_dir, "scenes_info.json"), info, indent=2)  # marks done
    return {
        "splits": stats,
        "setup_seconds": setup_seconds,
        "encoder": encoder_report,
        "seconds": time.perf_counter() - start,
    }


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a binary: importing `generate` must not claim flag names."""
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("num_train", 5000, "Training scenes.")
    flags.DEFINE_integer("num_dev", 1000, "Development scenes.")
    flags.DEFINE_integer("num_test", 1000, "Test scenes.")
    flags.DEFINE_integer("seed", 0, "Seed; the same seed gives identical files.")
    flags.DEFINE_bool("images", True, "Also write images/{id}.png per scene (slow at 100k+).")
    flags.DEFINE_integer(
        "encoder_steps", region_encoder.EncoderConfig.steps, "Training steps of the region encoder."
    )
    flags.DEFINE_integer(
        "encoder_sprite_copies",
        region_encoder.EncoderConfig.sprite_copies,
        "Crops of each train sprite drawn alone, added to the region encoder's training set.",
    )
    flags.DEFINE_enum(
        "region_features",
        "cnn",
        list(scene_features.FEATURE_KINDS),
        "cnn: features of a frozen region encoder pretrained on the train split; "
        "pixels: the raw 16x16 crops.",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    result = generate(
        FLAGS.out,
        FLAGS.num_train,
        FLAGS.num_dev,
        FLAGS.num_test,
        FLAGS.seed,
        images=FLAGS.images,
        progress_seconds=5.0,
        region_features=FLAGS.region_features,
        encoder_config=region_encoder.EncoderConfig(
            steps=FLAGS.encoder_steps, sprite_copies=FLAGS.encoder_sprite_copies
        ),
    )
    total = sum(split["scenes"] for split in result["splits"].values())
    writing = sum(split["seconds"] for split in result["splits"].values())
    parts = ", ".join(
        f"{name} {split['scenes']} ({split['mean_regions']:.1f} regions/scene)"
        for name, split in result["splits"].items()
    )
    print(
        f"scenes: wrote {total} scenes to {FLAGS.out} in {result['seconds']:.1f} s "
        f"(sprites {result['setup_seconds']:.1f} s, then {total / max(writing, 1e-9):.0f} "
        f"scenes/s): {parts}"
    )
    if result["encoder"]:
        print(scene_features.summary(result["encoder"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)


def read_records(directory: str, split: str, image_ids: list) -> list:
    """The scene layouts of `{split}_scenes.jsonl` aligned to `image_ids` (one dict each)."""
    path = os.path.join(directory, f"{split}_scenes.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: missing (group batching, caption semantics and the "
            f"oracle metrics need the scenes layouts)"
        )
    by_id = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            record = json.loads(line)
            by_id[record["id"]] = record
    missing = [image_id for image_id in image_ids if image_id not in by_id]
    if missing:
        raise ValueError(f"{path}: no layout for {len(missing)} images, e.g. {missing[0]!r}")
    return [by_id[image_id] for image_id in image_ids]


def read_groups(directory: str, split: str, image_ids: list) -> np.ndarray:
    """[N] int group index of each image (scenes sharing objects in other arrangements share a
    group), read from `{split}_scenes.jsonl` and aligned to `image_ids`."""
    labels = {}
    return np.array(
        [
            labels.setdefault(record["group"], len(labels))
            for record in read_records(directory, split, image_ids)
        ],
        np.int64,
    )
