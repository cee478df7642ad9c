"""TERAN's real directory tree (mesnico/TERAN data.py and README), read through load_corpus.

The fixtures (tests/real_layouts.py) are written as TERAN's loaders read them, and the expected
values apply TERAN's own rules: caption k = anns[ids[k]]['caption'], its image
anns[ids[k]]['image_id'], boxes / np.tile([width, height], 2); Flickr img_id = the position.
"""

import json
import os
import shutil

import numpy as np
import pytest
from real_layouts import write_coco, write_f30k

from lateint.data import load_corpus
from lateint.data.options import DataPath
from lateint.data.teran import convert_teran_to_precomp


def teran_coco_reference(root, split):
    """TERAN's CocoDataset over the ids of `split`: [(image_id, caption)] in dataset order."""
    annotations = os.path.join(root, "annotations")
    items = []
    for stem, json_name in {
        "train": [("train", "captions_train2014.json"), ("restval", "captions_val2014.json")],
        "test": [("test", "captions_val2014.json")],
        "dev": [("dev", "captions_val2014.json")],
    }[split]:
        anns = {
            a["id"]: a for a in json.load(open(os.path.join(annotations, json_name)))["annotations"]
        }
        ids = np.load(os.path.join(annotations, f"coco_{stem}_ids.npy"))
        if split == "dev":
            ids = ids[:5000]
        items += [(anns[ann]["image_id"], anns[ann]["caption"]) for ann in ids]
    return items


@pytest.fixture
def coco(tmp_path):
    root = str(tmp_path / "data" / "coco")
    return root, write_coco(root)


@pytest.mark.parametrize("where", ["root", "features"])
def test_coco_test_split_from_the_tree(coco, where):
    root, expected = coco
    path = root if where == "root" else os.path.join(root, "features_36")
    corpus = load_corpus(path, "test")
    reference = teran_coco_reference(root, "test")
    images = list(dict.fromkeys(image for image, _ in reference))
    assert corpus.image_ids == [str(image) for image in images]
    # The standard protocol keeps the first 5 captions of image 72 (it has 6 ids).
    first_five = [
        caption.strip()
        for image in images
        for caption in [c for i, c in reference if i == image][:5]
    ]
    assert corpus.captions == first_five and corpus.num_captions == 15
    np.testing.assert_array_equal(corpus.caption_image, np.arange(15) // 5)
    for index, image in enumerate(images):
        feat, boxes = expected[image]
        np.testing.assert_array_equal(corpus.regions[index, : len(feat)], feat)
        np.testing.assert_allclose(corpus.boxes[index, : len(feat), :4], boxes, atol=1e-6)
    every = load_corpus(path, "test", captions_per_image=0)
    assert every.num_captions == 16


def test_coco_train_is_train_plus_restval(coco):
    root, _ = coco
    corpus = load_corpus(root, "train")
    reference = teran_coco_reference(root, "train")
    assert corpus.image_ids == [str(i) for i in dict.fromkeys(image for image, _ in reference)]
    assert corpus.image_ids == ["9", "25", "30"] and corpus.num_captions == 15
    assert load_corpus(root, "train_only").image_ids == ["9", "25"]


def test_coco_dev_keeps_its_first_images(coco):
    root, _ = coco
    assert load_corpus(root, "dev").image_ids == ["41", "42", "43"]
    corpus = load_corpus(DataPath(root, dev_images=2), "dev")
    assert corpus.image_ids == ["41", "42"] and corpus.num_captions == 10


def test_annotations_and_split_ids_elsewhere(coco, tmp_path):
    root, _ = coco
    moved = str(tmp_path / "elsewhere")
    shutil.move(os.path.join(root, "annotations"), moved)
    with pytest.raises(FileNotFoundError, match=r"pass annotations= \(--data_annotations=PATH\)"):
        load_corpus(root, "test")
    ids = str(tmp_path / "ids")
    os.makedirs(ids)
    shutil.move(os.path.join(moved, "coco_test_ids.npy"), ids)
    path = DataPath(root, annotations=moved, split_ids=os.path.join(ids, "coco_test_ids.npy"))
    assert load_corpus(path, "test").image_ids == ["71", "72", "73"]
    with pytest.raises(
        FileNotFoundError,
        match=r"coco_test_ids.npy: missing COCO split ids .*"
        r"--data_split_ids=PATH",
    ):
        load_corpus(DataPath(root, annotations=moved), "test")


def test_unknown_annotation_id_names_both_files(coco):
    root, _ = coco
    np.save(os.path.join(root, "annotations", "coco_test_ids.npy"), np.array([1, 2]))
    with pytest.raises(
        ValueError,
        match=r"coco_test_ids.npy: entry 0: annotation id 1 is not "
        r"in .*captions_val2014.json",
    ):
        load_corpus(root, "test")


def test_convert_coco_tree_to_precomp(coco, tmp_path):
    root, _ = coco
    direct = load_corpus(root, "test")
    convert_teran_to_precomp(root, "test", str(tmp_path / "precomp"))
    converted = load_corpus(str(tmp_path / "precomp"), "test")
    assert converted.captions == direct.captions and converted.image_ids == direct.image_ids
    np.testing.assert_array_equal(converted.regions, direct.regions)


def test_f30k_tree_with_sizes_in_the_images_folder(tmp_path):
    root = str(tmp_path / "data" / "f30k")
    expected = write_f30k(root)
    corpus = load_corpus(root, "test")
    # TERAN's FlickrDataset: ids (i, x) for d['split'] == split; img_id = i; sizes[i].
    dataset = json.load(open(os.path.join(root, "annotations", "dataset_flickr30k.json")))
    positions = [i for i, d in enumerate(dataset["images"]) if d["split"] == "test"]
    assert corpus.image_ids == [str(i) for i in positions] == ["2", "3"]
    assert corpus.captions[0] == dataset["images"][2]["sentences"][0]["raw"].strip()
    for index, position in enumerate(positions):
        feat, boxes = expected[position]
        np.testing.assert_allclose(corpus.boxes[index, : len(feat), :4], boxes, atol=1e-6)
    assert load_corpus(os.path.join(root, "features_36"), "dev").image_ids == ["1", "4"]


def test_f30k_sizes_elsewhere_need_the_option(tmp_path):
    root = str(tmp_path / "data" / "f30k")
    write_f30k(root)
    moved = str(tmp_path / "sizes.pkl")
    shutil.move(os.path.join(root, "images", "sizes.pkl"), moved)
    with pytest.raises(
        FileNotFoundError,
        match=r"expected image sizes .*images/sizes.pkl.*; "
        r"pass sizes= \(--data_sizes=PATH\)",
    ):
        load_corpus(root, "test")
    assert load_corpus(DataPath(root, sizes=moved), "test").num_images == 2


@pytest.mark.parametrize(
    "name, pattern",
    [
        (
            "bu_att/72.npz",
            r"bu_att/72.npz: expected an .npz archive with key 'feat', got an "
            r"unreadable file",
        ),
        ("bu_box/72.npy", r"bu_box/72.npy: expected a readable .npy / .npz array"),
    ],
)
def test_truncated_per_image_files_name_the_file(coco, name, pattern):
    root, _ = coco
    path = os.path.join(root, "features_36", name)
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=pattern):
        load_corpus(root, "test")


def test_non_utf8_annotations_name_the_file(coco):
    root, _ = coco
    with open(os.path.join(root, "annotations", "captions_val2014.json"), "ab") as file:
        file.write(b"\xff")
    with pytest.raises(
        ValueError,
        match=r"captions_val2014.json: expected UTF-8 JSON, got byte "
        r"0xff",
    ):
        load_corpus(root, "test")
