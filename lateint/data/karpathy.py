"""Karpathy split files `dataset_{coco,flickr30k,flickr8k}.json`: captions and splits.

Format (Karpathy & Fei-Fei, "Deep visual-semantic alignments", 2015):

    {"dataset": "coco", "images": [
        {"split": "train" | "restval" | "val" | "test", "filename": "...",
         "imgid": 0, "cocoid": 391895,            # cocoid only in the COCO file
         "sentences": [{"raw": "A man riding a horse.", "tokens": [...], ...}, ...]}, ...]}

An image's external id is its `cocoid` when present (COCO feature files are named by it),
otherwise its `imgid` (Flickr feature files are named by the position in this file, which
`imgid` records).
"""

import dataclasses
import glob
import json
import os

import numpy as np

# Our split names on the left; Karpathy's on the right. "train" is Karpathy's train alone;
# "train+restval" adds the 30,504 COCO "restval" images most papers train on.
SPLIT_ALIASES = {
    "train": ("train",),
    "restval": ("restval",),
    "train+restval": ("train", "restval"),
    "trainrestval": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
}


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
        raise FileNotFoundError(f"{directory}: expected a Karpathy split file dataset_coco.json "
                                f"or dataset_flickr30k.json, found none")
    if len(found) > 1:
        raise ValueError(f"{directory}: expected one Karpathy split file, found {len(found)}: "
                         f"{', '.join(os.path.basename(path) for path in found)}")
    return found[0]


def _image_id(entry: dict, path: str, position: int) -> str:
    for key in ("cocoid", "imgid"):
        if key in entry:
            return str(entry[key])
    raise ValueError(f"{path}: images[{position}]: expected a 'cocoid' or 'imgid' field, got "
                     f"keys {sorted(entry)}")


def load_karpathy(path: str, split: str) -> KarpathySplit:
    """Reads the images of `split` (see SPLIT_ALIASES) and their raw captions from `path`."""
    if split not in SPLIT_ALIASES:
        raise ValueError(f"{path}: split: expected one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing Karpathy split file")
    with open(path, encoding="utf-8") as file:
        try:
            content = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: expected JSON, got: {error}") from error
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(f"{path}: expected an object with an 'images' list, got "
                         f"{type(content).__name__} with keys "
                         f"{sorted(content) if isinstance(content, dict) else '-'}")
    wanted = SPLIT_ALIASES[split]
    image_ids, positions, filenames, captions, caption_image = [], [], [], [], []
    seen_splits = set()
    for position, entry in enumerate(content["images"]):
        if not isinstance(entry, dict) or "split" not in entry:
            raise ValueError(f"{path}: images[{position}]: expected an object with a 'split' "
                             f"field, got {str(entry)[:80]}")
        seen_splits.add(entry["split"])
        if entry["split"] not in wanted:
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError(f"{path}: images[{position}]: expected a non-empty 'sentences' "
                             f"list, got {str(sentences)[:80]}")
        image_index = len(image_ids)
        for number, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(f"{path}: images[{position}].sentences[{number}]: expected a "
                                 f"non-empty 'raw' string, got {str(sentence)[:80]}")
            captions.append(" ".join(raw.split()))
            caption_image.append(image_index)
        image_ids.append(_image_id(entry, path, position))
        positions.append(position)
        filenames.append(str(entry.get("filename", "")))
    if not image_ids:
        raise ValueError(f"{path}: split {split!r} (Karpathy {'+'.join(wanted)}): expected "
                         f"images, got none; the file has splits {sorted(seen_splits)}")
    return KarpathySplit(
        dataset=str(content.get("dataset", "")),
        image_ids=image_ids,
        positions=np.asarray(positions, np.int64),
        filenames=filenames,
        captions=captions,
        caption_image=np.asarray(caption_image, np.int64))
