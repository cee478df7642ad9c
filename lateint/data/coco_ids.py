"""COCO splits as VSE++ and TERAN read them: `coco_{split}_ids.npy` + `captions_*2014.json`.

The annotations directory (TERAN: data/coco/annotations/, VSE++: coco/annotations/) holds:

    coco_train_ids.npy     [K] integer COCO annotation (caption) ids into captions_train2014.json
    coco_restval_ids.npy   [K] ids into captions_val2014.json (Karpathy's restval images)
    coco_dev_ids.npy       [K] ids into captions_val2014.json (VSE++ and TERAN read [:5000])
    coco_test_ids.npy      [25,000] ids into captions_val2014.json (5 per image, 5,000 images)
    captions_{train,val}2014.json   {"images": [{"id", "width", "height", "file_name"}, ...],
                                     "annotations": [{"id", "image_id", "caption"}, ...]}

Caption k of a split is the annotation ids[k]; its image is that annotation's `image_id`, which
names the image's feature files (bu_att/{image_id}.npz, bu_box/{image_id}.npy), and the image's
width and height come from the same file's "images" (what TERAN's CocoDataset does). Images are
numbered in order of first appearance. 'train' is train + restval (TERAN's `restval: True`).
"""

import glob
import os

import numpy as np

from lateint.data.corpus import clean_caption
from lateint.data.karpathy import KarpathySplit, read_json

TRAIN_JSON, VAL_JSON = "captions_train2014.json", "captions_val2014.json"
# Our split name -> the (ids file stem, annotation file) pairs it reads, as TERAN's get_paths.
SPLIT_FILES = {
    "train": (("train", TRAIN_JSON), ("restval", VAL_JSON)),
    "train+restval": (("train", TRAIN_JSON), ("restval", VAL_JSON)),
    "trainrestval": (("train", TRAIN_JSON), ("restval", VAL_JSON)),
    "train_only": (("train", TRAIN_JSON),),
    "restval": (("restval", VAL_JSON),),
    "dev": (("dev", VAL_JSON),),
    "val": (("dev", VAL_JSON),),
    "test": (("test", VAL_JSON),),
    "testall": (("test", VAL_JSON),),
}


def has_coco_ids(directory: str) -> bool:
    """Whether `directory` holds VSE++/TERAN COCO split ids (coco_*_ids.npy)."""
    return bool(glob.glob(os.path.join(directory, "coco_*_ids.npy")))


def _ids_path(split_ids: str | None, annotations: str, stem: str, split: str, files: tuple):
    if split_ids and os.path.isfile(split_ids):
        if len(files) > 1:
            raise ValueError(
                f"{split_ids}: split {split!r} reads "
                f"{' + '.join(f'coco_{name}_ids.npy' for name, _ in files)}; pass "
                f"the directory holding them as split_ids (--data_split_ids=DIR)"
            )
        return split_ids
    return os.path.join(split_ids or annotations, f"coco_{stem}_ids.npy")


def _read_ids(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: missing COCO split ids (VSE++/TERAN coco_*_ids.npy); "
            f"pass split_ids= (--data_split_ids=PATH) if they are elsewhere"
        )
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(
            f"{path}: expected a .npy array of COCO annotation ids, got: {error}"
        ) from error
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise ValueError(
            f"{path}: expected a non-empty [K] integer array of COCO annotation "
            f"ids, got {ids.dtype} {ids.shape}"
        )
    return ids


class _Annotations:
    """One captions_*2014.json: annotation id -> (image id, caption), image id -> (w, h)."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: missing COCO captions file (the split ids point "
                f"into it); pass annotations= (--data_annotations=DIR)"
            )
        content = read_json(path)
        if (
            not isinstance(content, dict)
            or not isinstance(content.get("annotations"), list)
            or not isinstance(content.get("images"), list)
        ):
            raise ValueError(
                f"{path}: expected COCO captions with 'images' and 'annotations' "
                f"lists, got keys "
                f"{sorted(content) if isinstance(content, dict) else '-'}"
            )
        self.path = path
        try:
            self.captions = {
                int(entry["id"]): (int(entry["image_id"]), entry["caption"])
                for entry in content["annotations"]
            }
            self.sizes = {
                int(entry["id"]): (entry["width"], entry["height"]) for entry in content["images"]
            }
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: expected annotations {{id, image_id, caption}} and images "
                f"{{id, width, height}}, missing {error}"
            ) from error


def load_coco_split(annotations: str, split: str, split_ids: str | None = None):
    """Reads split `split` (see SPLIT_FILES) from the ids files and COCO captions files.

    Returns (KarpathySplit with ids as strings and captions in ids order, sizes [N, 2] float64
    width/height per image).
    """
    if split not in SPLIT_FILES:
        raise ValueError(
            f"{annotations}: split: expected one of {sorted(SPLIT_FILES)}, got {split!r}"
        )
    files = SPLIT_FILES[split]
    tables, image_index, sizes = {}, {}, []
    captions, caption_image = [], []
    for stem, json_name in files:
        ids_path = _ids_path(split_ids, annotations, stem, split, files)
        ids = _read_ids(ids_path)
        json_path = os.path.join(annotations, json_name)
        table = tables.get(json_path) or tables.setdefault(json_path, _Annotations(json_path))
        for position, annotation in enumerate(ids.tolist()):
            found = table.captions.get(annotation)
            if found is None:
                raise ValueError(
                    f"{ids_path}: entry {position}: annotation id {annotation} is "
                    f"not in {json_path}"
                )
            image, caption = found
            if image not in image_index:
                if image not in table.sizes:
                    raise ValueError(
                        f"{json_path}: expected width/height of image {image} "
                        f"(annotation {annotation}) in 'images', got none"
                    )
                image_index[image] = len(image_index)
                sizes.append(table.sizes[image])
            text = clean_caption(str(caption))
            if not text:
                raise ValueError(
                    f"{json_path}: annotation {annotation}: expected a non-empty "
                    f"caption, got {caption!r}"
                )
            captions.append(text)
            caption_image.append(image_index[image])
    image_ids = [str(image) for image in image_index]
    record = KarpathySplit(
        dataset="coco",
        image_ids=image_ids,
        positions=np.arange(len(image_ids), dtype=np.int64),
        filenames=[""] * len(image_ids),
        captions=captions,
        caption_image=np.asarray(caption_image, np.int64),
    )
    return record, np.asarray(sizes, np.float64)
