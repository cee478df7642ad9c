"""Karpathy split files `dataset_{coco,flickr30k,flickr8k}.json`: captions and splits.

Format (Karpathy & Fei-Fei, "Deep visual-semantic alignments", 2015):

    {"dataset": "coco", "images": [
        {"split": "train" | "restval" | "val" | "test", "filename": "...",
         "imgid": 0, "cocoid": 391895,            # cocoid only in the COCO file
         "sentences": [{"raw": "A man riding a horse.", "tokens": [...], ...}, ...]}, ...]}

An image's external id is its `cocoid` when present (COCO feature files are named by it),
otherwise its position in the "images" list (TERAN's FlickrDataset names Flickr feature files by
that position; Karpathy's `imgid` records the same number).

Standard protocol (SCAN / VSE++ / TERAN), applied by `standardize`: each image keeps its first
`captions_per_image` = 5 sentences (Karpathy's COCO test has 25,010 sentences for 5,000 images;
SCAN's precomp files and VSE++'s / TERAN's `coco_test_ids.npy` hold 25,000), 'train' is Karpathy's
train + restval (113,287 COCO images), and 'dev' is the first `dev_images` = 1,000 val images (SCAN
reads the first 5,000 dev captions, TERAN `coco_dev_ids.npy[:5000]`).
"""

import dataclasses
import glob
import json
import os

import numpy as np

from lateint.data.corpus import clean_caption

# Our split names on the left; Karpathy's on the right. "train" is the standard training set:
# Karpathy's train + the 30,504 COCO "restval" images (SCAN, VSE++ --use_restval, TERAN
# restval: True; Flickr30k has no restval). "train_only" is Karpathy's train alone. "testall" is
# SCAN's name for the 5,000-image COCO test split.
SPLIT_ALIASES = {
    "train": ("train", "restval"),
    "train_only": ("train",),
    "restval": ("restval",),
    "train+restval": ("train", "restval"),
    "trainrestval": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
    "testall": ("test",),
}
DEV_SPLITS = ("dev", "val")
CAPTIONS_PER_IMAGE = 5  # the standard protocol's captions per image
DEV_IMAGES = 1000  # SCAN / TERAN validate on the first 1,000 dev images


@dataclasses.dataclass
class KarpathySplit:
    """The images of one split with their captions, in file order.

    image_ids:      [N] external ids (cocoid, else imgid), as strings.
    positions:      [N] int64 index of each image in the file's "images" list.
    filenames:      [N] image file names.
    captions:       [M] raw sentences, grouped by image.
    caption_image:  [M] int64 index (into image_ids) of each caption's image.
    """

    dataset: str
    image_ids: list
    positions: np.ndarray
    filenames: list
    captions: list
    caption_image: np.ndarray


def find_karpathy_json(directory: str) -> str:
    """The one `dataset_*.json` in `directory`; FileNotFoundError/ValueError otherwise."""
    found = sorted(glob.glob(os.path.join(directory, "dataset_*.json")))
    if not found:
        raise FileNotFoundError(
            f"{directory}: expected a Karpathy split file dataset_coco.json "
            f"or dataset_flickr30k.json, found none"
        )
    if len(found) > 1:
        raise ValueError(
            f"{directory}: expected one Karpathy split file, found {len(found)}: "
            f"{', '.join(os.path.basename(path) for path in found)}"
        )
    return found[0]


def _image_id(entry: dict, path: str, position: int) -> str:
    if "cocoid" in entry:
        return str(entry["cocoid"])
    if "imgid" in entry or "filename" in entry:
        return str(position)
    raise ValueError(
        f"{path}: images[{position}]: expected a 'cocoid', 'imgid' or 'filename' "
        f"field, got keys {sorted(entry)}"
    )


def load_karpathy(path: str, split: str) -> KarpathySplit:
    """Reads the images of `split` (see SPLIT_ALIASES) and their raw captions from `path`."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"{path}: split: expected one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing Karpathy split file")
    content = read_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(
            f"{path}: expected an object with an 'images' list, got "
            f"{type(content).__name__} with keys "
            f"{sorted(content) if isinstance(content, dict) else '-'}"
        )
    wanted = SPLIT_ALIASES[split]
    image_ids, positions, filenames, captions, caption_image = [], [], [], [], []
    seen_splits = set()
    for position, entry in enumerate(content["images"]):
        if not isinstance(entry, dict) or "split" not in entry:
            raise ValueError(
                f"{path}: images[{position}]: expected an object with a 'split' "
                f"field, got {str(entry)[:80]}"
            )
        seen_splits.add(entry["split"])
        if entry["split"] not in wanted:
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(
                f"{path}: images[{position}]: expected a non-empty 'sentences' "
                f"list, got {str(sentences)[:80]}"
            )
        image_index = len(image_ids)
        for number, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(
                    f"{path}: images[{position}].sentences[{number}]: expected a "
                    f"non-empty 'raw' string, got {str(sentence)[:80]}"
                )
            captions.append(clean_caption(raw))
            caption_image.append(image_index)
        image_ids.append(_image_id(entry, path, position))
        positions.append(position)
        filenames.append(str(entry.get("filename", "")))
    if not image_ids:
        raise ValueError(
            f"{path}: split {split!r} (Karpathy {'+'.join(wanted)}): expected "
            f"images, got none; the file has splits {sorted(seen_splits)}"
        )
    return KarpathySplit(
        dataset=str(content.get("dataset", "")),
        image_ids=image_ids,
        positions=np.asarray(positions, np.int64),
        filenames=filenames,
        captions=captions,
        caption_image=np.asarray(caption_image, np.int64),
    )


def read_json(path: str):
    """The parsed JSON of `path`; ValueError naming the file for bad UTF-8 or bad JSON."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: expected UTF-8 JSON, got byte 0x{data[error.start]:02x} at "
            f"offset {error.start}"
        ) from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: expected JSON, got: {error}") from error


def standardize(
    split: KarpathySplit,
    name: str,
    source: str,
    captions_per_image: int = CAPTIONS_PER_IMAGE,
    dev_images: int = DEV_IMAGES,
) -> KarpathySplit:
    """The standard protocol's view of `split` (named `name`): the first `dev_images` images of a
    dev split (0: all), the first `captions_per_image` captions of every image (0: all of them),
    captions grouped by image in image order. Raises ValueError naming `source` and the image when
    an image has fewer captions than asked for."""
    num_images = len(split.image_ids)
    if name in DEV_SPLITS and dev_images and num_images > dev_images:
        num_images = dev_images
    grouped = [[] for _ in range(num_images)]
    for caption, image in zip(split.captions, split.caption_image):
        if image < num_images:
            grouped[image].append(caption)
    if captions_per_image:
        for image, captions in enumerate(grouped):
            if len(captions) < captions_per_image:
                raise ValueError(
                    f"{source}: image {split.image_ids[image]}: expected at least "
                    f"{captions_per_image} captions (the standard protocol keeps the first "
                    f"{captions_per_image} of each image), got {len(captions)}; pass "
                    f"captions_per_image=0 (--data_captions_per_image=0) to keep every caption"
                )
        grouped = [captions[:captions_per_image] for captions in grouped]
    return KarpathySplit(
        dataset=split.dataset,
        image_ids=split.image_ids[:num_images],
        positions=split.positions[:num_images],
        filenames=split.filenames[:num_images],
        captions=[caption for captions in grouped for caption in captions],
        caption_image=np.repeat(
            np.arange(num_images, dtype=np.int64), [len(captions) for captions in grouped]
        ),
    )
