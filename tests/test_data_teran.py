"""TERAN bottom-up features and Karpathy split files: round trips and broken inputs."""

import json
import os
import pickle

import numpy as np
import pytest

from lateint.data import load_corpus
from lateint.data.karpathy import load_karpathy
from lateint.data.teran import convert_teran_to_precomp, load_teran

F = 12
SIZES = {"11": (640, 480), "22": (500, 375), "33": (300, 600)}
REGION_COUNTS = {"11": 3, "22": 5, "33": 2}


def _karpathy(images):
    return {"dataset": "coco", "images": images}


def _entry(cocoid, split, position, sentences=5):
    return {
        "split": split,
        "filename": f"COCO_{cocoid}.jpg",
        "imgid": position,
        "cocoid": int(cocoid),
        "sentences": [
            {"raw": f"photo {cocoid}  number {k}.", "tokens": [], "imgid": position}
            for k in range(sentences)
        ],
    }


def _write_teran(directory, sizes="json", id_key="cocoid"):
    """Three test images (11, 22, 33) and a train image (44) in TERAN's layout."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(directory, "bu_att"))
    os.makedirs(os.path.join(directory, "bu_box"))
    expected = {}
    entries = [_entry("44", "train", 0)] + [_entry(i, "test", p + 1) for p, i in enumerate(SIZES)]
    for entry in entries:
        file_id = str(entry[id_key])
        count = REGION_COUNTS.get(str(entry["cocoid"]), 1)
        width, height = SIZES.get(str(entry["cocoid"]), (100, 100))
        features = rng.normal(size=(count, F)).astype(np.float32)
        corners = np.sort(rng.uniform(size=(count, 2, 2)), axis=1)  # normalised x/y pairs
        scale = np.array([width, height, width, height], np.float64)
        pixel = np.concatenate([corners[:, 0], corners[:, 1]], 1) * scale
        np.savez(os.path.join(directory, "bu_att", f"{file_id}.npz"), feat=features)
        np.save(os.path.join(directory, "bu_box", f"{file_id}.npy"), pixel)
        expected[str(entry["cocoid"])] = (features, pixel / scale)
    if id_key == "imgid":
        for entry in entries:
            del entry["cocoid"]
    with open(os.path.join(directory, "dataset_coco.json"), "w") as file:
        json.dump(_karpathy(entries), file)
    all_sizes = [(100, 100)] + list(SIZES.values())
    if sizes == "json":
        with open(os.path.join(directory, "image_sizes.json"), "w") as file:
            json.dump({str(e[id_key]): s for e, s in zip(entries, all_sizes)}, file)
    elif sizes == "coco":
        os.makedirs(os.path.join(directory, "annotations"))
        with open(os.path.join(directory, "annotations", "captions_val2014.json"), "w") as file:
            json.dump(
                {
                    "images": [
                        {"id": int(e[id_key]), "width": s[0], "height": s[1]}
                        for e, s in zip(entries, all_sizes)
                    ]
                },
                file,
            )
    elif sizes == "pickle":
        with open(os.path.join(directory, "sizes.pkl"), "wb") as file:
            pickle.dump(all_sizes, file)
    return expected


@pytest.mark.parametrize("sizes", ["json", "coco", "pickle"])
def test_teran_round_trip(tmp_path, sizes):
    expected = _write_teran(str(tmp_path), sizes=sizes)
    corpus = load_corpus(str(tmp_path), "test")
    assert corpus.image_ids == ["11", "22", "33"]
    assert corpus.regions.shape == (3, 5, F)  # padded to the largest region count
    np.testing.assert_array_equal(corpus.region_counts, [3, 5, 2])
    for index, image_id in enumerate(corpus.image_ids):
        features, boxes = expected[image_id]
        count = len(features)
        np.testing.assert_array_equal(corpus.regions[index, :count], features)
        assert not corpus.regions[index, count:].any()
        np.testing.assert_allclose(corpus.boxes[index, :count, :4], boxes, atol=1e-6)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        np.testing.assert_allclose(corpus.boxes[index, :count, 4], area, atol=1e-6)
    # Raw sentences keep their inner spacing, as the same caption in a precomp file would.
    assert corpus.captions[:2] == ["photo 11  number 0.", "photo 11  number 1."]
    np.testing.assert_array_equal(corpus.caption_image, np.arange(15) // 5)


def test_flickr_ids_are_positions(tmp_path):
    _write_teran(str(tmp_path), sizes="pickle", id_key="imgid")
    corpus = load_teran(str(tmp_path), "test")
    assert corpus.image_ids == ["1", "2", "3"]


def test_convert_to_precomp_is_memory_mapped_and_equal(tmp_path):
    _write_teran(str(tmp_path / "teran"))
    direct = load_teran(str(tmp_path / "teran"), "test", max_regions=6)
    convert_teran_to_precomp(
        str(tmp_path / "teran"), "test", str(tmp_path / "precomp"), max_regions=6
    )
    converted = load_corpus(str(tmp_path / "precomp"), "test")
    assert isinstance(converted.regions, np.memmap)
    np.testing.assert_array_equal(converted.regions, direct.regions)
    np.testing.assert_array_equal(converted.boxes, direct.boxes)
    np.testing.assert_array_equal(converted.region_counts, direct.region_counts)
    assert converted.captions == direct.captions and converted.image_ids == direct.image_ids


def _nan_features(directory):
    features = np.ones((3, F), np.float32)
    features[1, 1] = np.nan
    np.savez(os.path.join(directory, "bu_att", "11.npz"), feat=features)


@pytest.mark.parametrize(
    "mutate, error, pattern",
    [
        (
            lambda d: os.remove(os.path.join(d, "bu_box", "22.npy")),
            FileNotFoundError,
            r"bu_box/22.npy: missing boxes for .*bu_att/22.npz",
        ),
        (
            lambda d: os.remove(os.path.join(d, "bu_att", "33.npz")),
            FileNotFoundError,
            r"bu_att/33.npz: missing region features",
        ),
        (
            lambda d: np.save(os.path.join(d, "bu_box", "11.npy"), np.zeros((4, 4))),
            ValueError,
            r"bu_box/11.npy: expected \[3, 4\] pixel boxes \(one per region of 11.npz\), got float64 "
            r"\(4, 4\)",
        ),
        (
            lambda d: np.save(os.path.join(d, "bu_box", "11.npy"), np.full((3, 4), 5000.0)),
            ValueError,
            r"bu_box/11.npy: expected x1 <= x2, y1 <= y2 inside the 640 x 480 image, got pixel range",
        ),
        (_nan_features, ValueError, r"bu_att/11.npz: 'feat': expected finite features, got NaN"),
        (
            lambda d: np.savez(os.path.join(d, "bu_att", "22.npz"), features=np.zeros((5, F))),
            ValueError,
            r"bu_att/22.npz: expected key 'feat', got keys \['features'\]",
        ),
        (
            lambda d: np.savez(os.path.join(d, "bu_att", "22.npz"), feat=np.zeros((5, F + 1))),
            ValueError,
            r"bu_att: expected one feature dim F across images, got \[12, 13\]",
        ),
        (
            lambda d: os.remove(os.path.join(d, "image_sizes.json")),
            FileNotFoundError,
            r"expected image sizes to normalise the pixel boxes in one of: .*image_sizes.json.*; pass "
            r"sizes= \(--data_sizes=PATH\)",
        ),
        (
            lambda d: json.dump({"11": [640, 480]}, open(os.path.join(d, "image_sizes.json"), "w")),
            ValueError,
            r"image_sizes.json: expected a \[width, height\] entry for image id '22'",
        ),
        (
            lambda d: os.remove(os.path.join(d, "dataset_coco.json")),
            FileNotFoundError,
            r"expected the captions of these TERAN features, a Karpathy split file dataset_coco.json or "
            r"dataset_flickr30k.json, or COCO's coco_\{split\}_ids.npy \+ captions_\*2014.json, in one "
            r"of: .*; pass annotations= \(--data_annotations=PATH\)",
        ),
    ],
)
def test_broken_teran_inputs(tmp_path, mutate, error, pattern):
    _write_teran(str(tmp_path))
    mutate(str(tmp_path))
    with pytest.raises(error, match=pattern):
        load_corpus(str(tmp_path), "test")


def test_too_many_regions_for_max_regions(tmp_path):
    _write_teran(str(tmp_path))
    with pytest.raises(
        ValueError,
        match=r"bu_att/22.npz: expected at most max_regions=4 "
        r"regions, got 5",
    ):
        load_teran(str(tmp_path), "test", max_regions=4)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_sizes_pickle_cannot_run_code(tmp_path):
    _write_teran(str(tmp_path), sizes="pickle")
    with open(os.path.join(tmp_path, "sizes.pkl"), "wb") as file:
        pickle.dump([(100, 100), _Evil(), (1, 1), (1, 1)], file)
    with pytest.raises(
        pickle.UnpicklingError,
        match=r"sizes.pkl: refusing to load global "
        r"(posix|os).system; allowed: none",
    ):
        load_corpus(str(tmp_path), "test")


def test_karpathy_splits_and_aliases(tmp_path):
    path = str(tmp_path / "dataset_coco.json")
    entries = [
        _entry("1", "train", 0, sentences=2),
        _entry("2", "restval", 1, sentences=5),
        _entry("3", "val", 2, sentences=2),
        _entry("4", "test", 3, sentences=2),
    ]
    with open(path, "w") as file:
        json.dump(_karpathy(entries), file)
    assert load_karpathy(path, "train_only").image_ids == ["1"]
    both = load_karpathy(path, "train+restval")
    assert both.image_ids == ["1", "2"] and len(both.captions) == 7
    np.testing.assert_array_equal(both.caption_image, [0, 0, 1, 1, 1, 1, 1])
    # The standard 'train' is train + restval (SCAN's 113,287 COCO images).
    assert load_karpathy(path, "train").image_ids == ["1", "2"]
    np.testing.assert_array_equal(both.positions, [0, 1])
    assert load_karpathy(path, "dev").image_ids == ["3"]
    assert load_karpathy(path, "test").captions == ["photo 4  number 0.", "photo 4  number 1."]
    assert both.dataset == "coco" and both.filenames == ["COCO_1.jpg", "COCO_2.jpg"]


@pytest.mark.parametrize(
    "content, split, pattern",
    [
        (
            {"pictures": []},
            "test",
            r"expected an object with an 'images' list, got dict with keys "
            r"\['pictures'\]",
        ),
        (
            _karpathy([_entry("1", "train", 0)]),
            "test",
            r"split 'test' \(Karpathy test\): expected images, got none; the file has splits "
            r"\['train'\]",
        ),
        (
            _karpathy([{"split": "test", "cocoid": 1, "sentences": [{"tokens": []}]}]),
            "test",
            r"images\[0\].sentences\[0\]: expected a non-empty 'raw' string",
        ),
        (
            _karpathy([{"split": "test", "sentences": [{"raw": "x"}]}]),
            "test",
            r"images\[0\]: expected a 'cocoid', 'imgid' or 'filename' field",
        ),
        (_karpathy([]), "validation", r"split: expected one of .*got 'validation'"),
    ],
)
def test_broken_karpathy_files(tmp_path, content, split, pattern):
    path = str(tmp_path / "dataset_flickr30k.json")
    with open(path, "w") as file:
        json.dump(content, file)
    with pytest.raises(ValueError, match=pattern):
        load_karpathy(path, split)
