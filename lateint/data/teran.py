"""TERN/TERAN per-image bottom-up-attention features (Messina et al.), as a RegionCorpus.

Layout of a corpus directory D (the one TERAN's `BottomUpFeaturesDataset` reads):

    D/bu_att/{id}.npz     key 'feat': [n, F] region features (F = 2048 for bottom-up attention)
    D/bu_box/{id}.npy     [n, 4] boxes x1, y1, x2, y2 in pixels of the original image
    D/dataset_*.json      the Karpathy split file: captions and splits (lateint.data.karpathy);
                          {id} is the image's cocoid (COCO) or imgid (Flickr30k)
    image sizes, first found of:
      D/image_sizes.json            {"<id>": [width, height], ...}  (ours; simplest to write)
      D/annotations/captions_*.json COCO annotation files: "images": [{id, width, height}]
      D/sizes.pkl                   TERAN's Flickr cache: a pickled list of (width, height) in
                                    Karpathy file order, loaded without running code
                                    (lateint.data.restricted_pickle)

The pixel boxes are divided by (width, height) — what TERAN does — and get their area as a
fifth column. Region counts n vary per image; they are padded to R = max n (or `max_regions`).
`load_teran` holds the features in memory (N x R x F x 4 bytes); for a large split write it once
in the precomp layout with `convert_teran_to_precomp` and read that memory-mapped instead.
"""

import glob
import json
import os
import zipfile

import numpy as np

from lateint.data import karpathy as karpathy_lib
from lateint.data.corpus import RegionCorpus, validate_corpus
from lateint.data.precomp import PrecompWriter
from lateint.data.restricted_pickle import load_restricted

FEATURE_FOLDER = "bu_att"
BOX_FOLDER = "bu_box"
SIZES_FILE = "image_sizes.json"
# Detector boxes may overshoot the image border by a pixel or so; more than this fraction of the
# image size means the sizes do not belong to these boxes.
BOX_SLACK = 0.02


def _sizes_from_json(path: str, image_ids: list) -> np.ndarray:
    with open(path, encoding="utf-8") as file:
        table = json.load(file)
    sizes = []
    for image_id in image_ids:
        size = table.get(image_id) if isinstance(table, dict) else None
        if size is None:
            raise ValueError(f"{path}: expected a [width, height] entry for image id "
                             f"{image_id!r}, got none")
        sizes.append(size)
    return np.asarray(sizes, np.float64)


def _sizes_from_coco(paths: list, image_ids: list) -> np.ndarray:
    table = {}
    for path in paths:
        with open(path, encoding="utf-8") as file:
            for image in json.load(file).get("images", []):
                table[str(image["id"])] = (image["width"], image["height"])
    missing = [image_id for image_id in image_ids if image_id not in table]
    if missing:
        raise ValueError(f"{', '.join(paths)}: expected width/height for every image, missing "
                         f"{len(missing)} ids, e.g. {missing[:3]}")
    return np.asarray([table[image_id] for image_id in image_ids], np.float64)


def _sizes_from_pickle(path: str, positions: np.ndarray) -> np.ndarray:
    sizes = load_restricted(path, allow_arrays=False)
    if not isinstance(sizes, (list, tuple)) or len(sizes) <= int(positions.max()):
        raise ValueError(f"{path}: expected a list of (width, height) covering every image of the "
                         f"Karpathy file, got {type(sizes).__name__} of length "
                         f"{len(sizes) if hasattr(sizes, '__len__') else '-'}")
    return np.asarray([tuple(sizes[position]) for position in positions], np.float64)


def load_image_sizes(directory: str, split: karpathy_lib.KarpathySplit,
                     sizes_path: str | None = None) -> np.ndarray:
    """[N, 2] (width, height) in pixels of each image of `split`, from the first source found."""
    candidates = [sizes_path] if sizes_path else [
        os.path.join(directory, SIZES_FILE),
        os.path.join(directory, "annotations"),
        os.path.join(directory, "sizes.pkl")]
    sizes = None
    for candidate in candidates:
        if candidate.endswith(".json") and os.path.isfile(candidate):
            sizes, source = _sizes_from_json(candidate, split.image_ids), candidate
        elif candidate.endswith(".pkl") and os.path.isfile(candidate):
            sizes, source = _sizes_from_pickle(candidate, split.positions), candidate
        elif os.path.isdir(candidate):
            found = sorted(glob.glob(os.path.join(candidate, "captions_*.json")))
            if found:
                sizes, source = _sizes_from_coco(found, split.image_ids), candidate
        if sizes is not None:
            break
    if sizes is None:
        raise FileNotFoundError(f"{directory}: expected image sizes to normalise the pixel boxes "
                                f"in one of: {', '.join(candidates)} (see lateint/data/teran.py)")
    if sizes.shape != (len(split.image_ids), 2) or not (sizes > 0).all():
        raise ValueError(f"{source}: expected a positive (width, height) per image, got shape "
                         f"{sizes.shape} with minimum {sizes.min() if sizes.size else '-'}")
    return sizes


def _npz_feature_shape(path: str) -> tuple:
    """Shape of the 'feat' member of an .npz, read from its header without loading the data."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing region features ({FEATURE_FOLDER}/{{id}}.npz)")
    with zipfile.ZipFile(path) as archive:
        if "feat.npy" not in archive.namelist():
            raise ValueError(f"{path}: expected key 'feat', got keys "
                             f"{[name[:-4] for name in archive.namelist()]}")
        with archive.open("feat.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(member)
    if len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"{path}: 'feat': expected shape [n, F] with n >= 1, got {shape}")
    return shape


def _read_image(feature_path: str, box_path: str, size: np.ndarray, feature_dim: int):
    """Returns (regions [n, F] float32, boxes [n, 5] float32 normalised) for one image."""
    with np.load(feature_path, allow_pickle=False) as archive:
        features = archive["feat"]
    if not np.issubdtype(features.dtype, np.floating) or features.ndim != 2 or \
            features.shape[1] != feature_dim:
        raise ValueError(f"{feature_path}: 'feat': expected float [n, {feature_dim}], got "
                         f"{features.dtype} {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{feature_path}: 'feat': expected finite features, got NaN or Inf")
    if not os.path.exists(box_path):
        raise FileNotFoundError(f"{box_path}: missing boxes for {feature_path}")
    boxes = np.load(box_path, allow_pickle=False)
    if boxes.shape != (features.shape[0], 4) or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(f"{box_path}: expected [{features.shape[0]}, 4] pixel boxes (one per "
                         f"region of {os.path.basename(feature_path)}), got {boxes.dtype} "
                         f"{boxes.shape}")
    normalised = boxes.astype(np.float64) / np.tile(size, 2)
    if not np.isfinite(normalised).all() or normalised.min() < -BOX_SLACK or \
            normalised.max() > 1 + BOX_SLACK or (normalised[:, 2:] < normalised[:, :2]).any():
        raise ValueError(f"{box_path}: expected x1 <= x2, y1 <= y2 inside the {size[0]:g} x "
                         f"{size[1]:g} image, got pixel range [{boxes.min():g}, {boxes.max():g}]")
    normalised = np.clip(normalised, 0.0, 1.0)
    area = (normalised[:, 2] - normalised[:, 0]) * (normalised[:, 3] - normalised[:, 1])
    return (features.astype(np.float32),
            np.concatenate([normalised, area[:, None]], axis=1).astype(np.float32))


class _TeranSplit:
    """The files, sizes and region counts of one split, checked before any feature is read."""

    def __init__(self, directory: str, split: str, karpathy_json: str | None,
                 sizes_path: str | None, max_regions: int | None):
        self.directory = directory
        json_path = karpathy_json or karpathy_lib.find_karpathy_json(directory)
        self.captions = karpathy_lib.load_karpathy(json_path, split)
        self.sizes = load_image_sizes(directory, self.captions, sizes_path)
        self.feature_paths = [os.path.join(directory, FEATURE_FOLDER, f"{image_id}.npz")
                              for image_id in self.captions.image_ids]
        self.box_paths = [os.path.join(directory, BOX_FOLDER, f"{image_id}.npy")
                          for image_id in self.captions.image_ids]
        shapes = [_npz_feature_shape(path) for path in self.feature_paths]
        dims = {shape[1] for shape in shapes}
        if len(dims) != 1:
            raise ValueError(f"{directory}/{FEATURE_FOLDER}: expected one feature dim F across "
                             f"images, got {sorted(dims)}")
        self.feature_dim = dims.pop()
        self.region_counts = np.asarray([shape[0] for shape in shapes], np.int32)
        self.max_regions = int(max_regions or self.region_counts.max())
        too_many = np.flatnonzero(self.region_counts > self.max_regions)
        if too_many.size:
            raise ValueError(f"{self.feature_paths[too_many[0]]}: expected at most max_regions="
                             f"{self.max_regions} regions, got {self.region_counts[too_many[0]]}")

    def images(self):
        """Yields (regions [n, F], boxes [n, 5]) per image, in split order."""
        for feature_path, box_path, size in zip(self.feature_paths, self.box_paths, self.sizes):
            yield _read_image(feature_path, box_path, size, self.feature_dim)


def load_teran(directory: str, split: str, karpathy_json: str | None = None,
               sizes_path: str | None = None, max_regions: int | None = None) -> RegionCorpus:
    """Reads split `split` of a TERAN feature directory into an in-memory RegionCorpus.

    regions [N, R, F] float32 padded with zeros, boxes [N, R, 5], R = max_regions or max n.
    """
    teran = _TeranSplit(directory, split, karpathy_json, sizes_path, max_regions)
    num_images = len(teran.captions.image_ids)
    regions = np.zeros((num_images, teran.max_regions, teran.feature_dim), np.float32)
    boxes = np.zeros((num_images, teran.max_regions, 5), np.float32)
    for index, (image_regions, image_boxes) in enumerate(teran.images()):
        regions[index, :len(image_regions)] = image_regions
        boxes[index, :len(image_boxes)] = image_boxes
    corpus = RegionCorpus(regions=regions, boxes=boxes, region_counts=teran.region_counts,
                          captions=teran.captions.captions,
                          caption_image=teran.captions.caption_image,
                          image_ids=teran.captions.image_ids)
    validate_corpus(corpus, f"{directory} (TERAN split {split!r})")
    return corpus


def convert_teran_to_precomp(directory: str, split: str, out_directory: str,
                             karpathy_json: str | None = None, sizes_path: str | None = None,
                             max_regions: int | None = None) -> None:
    """Streams split `split` of a TERAN directory into the precomp layout under `out_directory`.

    Memory stays flat for any N; afterwards `load_corpus(out_directory, split)` memory-maps it.
    Every image keeps all its Karpathy captions, so caption i -> image i // 5 holds when each
    image has 5 (COCO has a few with 6 or 7: those are cut to the split's minimum).
    """
    teran = _TeranSplit(directory, split, karpathy_json, sizes_path, max_regions)
    per_image = int(np.bincount(teran.captions.caption_image).min())
    grouped = [[] for _ in teran.captions.image_ids]
    for caption, image in zip(teran.captions.captions, teran.captions.caption_image):
        grouped[image].append(caption)
    with PrecompWriter(out_directory, split, len(grouped), teran.max_regions,
                       teran.feature_dim) as writer:
        for index, (image_regions, image_boxes) in enumerate(teran.images()):
            writer.add(image_regions, image_boxes, grouped[index][:per_image],
                       teran.captions.image_ids[index])
