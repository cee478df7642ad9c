"""TERN/TERAN per-image bottom-up-attention features (Messina et al.), as a RegionCorpus.

TERAN's tree (README: features_36_{coco,f30k}.tgz extracted under data/coco/, data/f30k/):

    data/coco/features_36/bu_att/{id}.npz   key 'feat': [n, F] region features (F = 2048)
    data/coco/features_36/bu_box/{id}.npy   [n, 4] boxes x1, y1, x2, y2 in pixels
    data/coco/annotations/                  coco_{train,restval,dev,test}_ids.npy +
                                            captions_{train,val}2014.json (lateint.data.coco_ids):
                                            captions, splits, and the image sizes
    data/f30k/features_36/bu_att, bu_box    the same, {id} = the image's position in the json
    data/f30k/annotations/dataset_flickr30k.json   Karpathy's split file (lateint.data.karpathy)
    data/f30k/images/sizes.pkl              a pickled list of (width, height) in json order,
                                            loaded without running code (restricted_pickle)

`--data` may name the dataset root (data/coco: its features_*/ folder is found) or the features
folder (its parent's annotations/ and images/ are searched). Captions come from `annotations`
(a Karpathy json, or a directory with COCO ids + captions files) or are discovered in
annotations/, the features folder, then the root; `split_ids` points at the coco_*_ids.npy when
they are elsewhere. Image sizes come from `sizes` (image_sizes.json {"<id>": [w, h]}, sizes.pkl,
a COCO captions_*.json or a directory holding one of them) or are discovered (COCO: the captions
files that hold the split; Flickr: images/sizes.pkl, then the features folder and the root).

The pixel boxes are divided by (width, height), as TERAN does, and get their area as a fifth
column. Region counts n vary per image; they are padded to R = max n (or `max_regions`). The
standard protocol (lateint.data.karpathy.standardize) keeps 5 captions per image and the first
1,000 dev images. `load_teran` holds the features in memory (N x R x F x 4 bytes); for a large
split write it once in the precomp layout with `convert_teran_to_precomp` and read that
memory-mapped instead.
"""

import dataclasses
import glob
import os
import zipfile

import numpy as np

from lateint.data import coco_ids
from lateint.data import karpathy as karpathy_lib
from lateint.data.corpus import RegionCorpus, validate_corpus
from lateint.data.precomp import PrecompWriter
from lateint.data.restricted_pickle import load_restricted

FEATURE_FOLDER = "bu_att"
BOX_FOLDER = "bu_box"
SIZES_FILE = "image_sizes.json"
FLICKR_SIZES_FILE = "sizes.pkl"
# load_teran's keyword options (lateint.data.load_corpus refuses others for this layout).
OPTIONS = ("annotations", "sizes", "split_ids", "captions_per_image", "dev_images", "max_regions")
# Detector boxes may overshoot the image border by a pixel or so; more than this fraction of the
# image size means the sizes do not belong to these boxes.
BOX_SLACK = 0.02


@dataclasses.dataclass(frozen=True)
class TeranTree:
    """features: the folder holding bu_att/ and bu_box/; root: the dataset folder (data/coco)."""

    features: str
    root: str

    @property
    def annotation_dirs(self) -> list:
        return _unique([os.path.join(self.root, "annotations"), self.features, self.root])


def _unique(paths: list) -> list:
    return list(dict.fromkeys(os.path.normpath(path) for path in paths))


def find_tree(path: str) -> TeranTree | None:
    """The TERAN tree at `path` (a features folder or a dataset root), or None."""
    if os.path.isdir(os.path.join(path, FEATURE_FOLDER)):
        parent = os.path.dirname(os.path.abspath(path))
        root = parent if os.path.isdir(os.path.join(parent, "annotations")) else path
        return TeranTree(features=path, root=root)
    found = sorted(
        os.path.dirname(folder)
        for folder in glob.glob(os.path.join(path, "features*", FEATURE_FOLDER))
    )
    if len(found) > 1:
        raise ValueError(
            f"{path}: expected one TERAN features folder, found {len(found)}: "
            f"{', '.join(found)}; pass --data=one of them"
        )
    return TeranTree(features=found[0], root=path) if found else None


def _sizes_from_json(path: str, image_ids: list) -> np.ndarray:
    table = karpathy_lib.read_json(path)
    if isinstance(table, dict) and isinstance(table.get("images"), list):
        return _sizes_from_coco([path], image_ids)
    sizes = []
    for image_id in image_ids:
        size = table.get(image_id) if isinstance(table, dict) else None
        if size is None:
            raise ValueError(
                f"{path}: expected a [width, height] entry for image id {image_id!r}, got none"
            )
        sizes.append(size)
    return np.asarray(sizes, np.float64)


def _sizes_from_coco(paths: list, image_ids: list) -> np.ndarray:
    table = {}
    for path in paths:
        for image in karpathy_lib.read_json(path).get("images", []):
            table[str(image["id"])] = (image["width"], image["height"])
    missing = [image_id for image_id in image_ids if image_id not in table]
    if missing:
        raise ValueError(
            f"{', '.join(paths)}: expected width/height for every image, missing "
            f"{len(missing)} ids, e.g. {missing[:3]}"
        )
    return np.asarray([table[image_id] for image_id in image_ids], np.float64)


def _sizes_from_pickle(path: str, positions: np.ndarray) -> np.ndarray:
    sizes = load_restricted(path, allow_arrays=False)
    if not isinstance(sizes, (list, tuple)) or len(sizes) <= int(positions.max()):
        raise ValueError(
            f"{path}: expected a list of (width, height) covering every image of the "
            f"Karpathy file, got {type(sizes).__name__} of length "
            f"{len(sizes) if hasattr(sizes, '__len__') else '-'}"
        )
    return np.asarray([tuple(sizes[position]) for position in positions], np.float64)


def _sizes_from(candidate: str, split: karpathy_lib.KarpathySplit):
    """Sizes from one candidate file or folder, or None when it holds none."""
    if candidate.endswith(".json") and os.path.isfile(candidate):
        return _sizes_from_json(candidate, split.image_ids)
    if candidate.endswith(".pkl") and os.path.isfile(candidate):
        return _sizes_from_pickle(candidate, split.positions)
    if os.path.isdir(candidate):
        found = sorted(glob.glob(os.path.join(candidate, "captions_*.json")))
        if found:
            return _sizes_from_coco(found, split.image_ids)
        for name in (SIZES_FILE, FLICKR_SIZES_FILE):
            if os.path.isfile(os.path.join(candidate, name)):
                return _sizes_from(os.path.join(candidate, name), split)
    return None


def load_image_sizes(
    tree: TeranTree, split: karpathy_lib.KarpathySplit, sizes: str | None = None
) -> np.ndarray:
    """[N, 2] (width, height) in pixels of each image of `split`, from the first source found."""
    candidates = (
        [sizes]
        if sizes
        else _unique(
            [os.path.join(tree.features, SIZES_FILE), os.path.join(tree.root, SIZES_FILE)]
            + [os.path.join(folder, "annotations") for folder in (tree.features, tree.root)]
            + [
                os.path.join(folder, FLICKR_SIZES_FILE)
                for folder in (os.path.join(tree.root, "images"), tree.features, tree.root)
            ]
        )
    )
    if sizes and not os.path.exists(sizes):
        raise FileNotFoundError(f"{sizes}: missing (sizes= / --data_sizes)")
    found = None
    for candidate in candidates:
        found = _sizes_from(candidate, split)
        if found is not None:
            source = candidate
            break
    if found is None:
        raise FileNotFoundError(
            f"{tree.features}: expected image sizes to normalise the pixel "
            f"boxes in one of: {', '.join(candidates)}; pass sizes= "
            f"(--data_sizes=PATH) (see lateint/data/teran.py)"
        )
    if found.shape != (len(split.image_ids), 2) or not (found > 0).all():
        raise ValueError(
            f"{source}: expected a positive (width, height) per image, got shape "
            f"{found.shape} with minimum {found.min() if found.size else '-'}"
        )
    return found


def _load_captions(
    tree: TeranTree, split: str, annotations: str | None, split_ids: str | None, sizes: str | None
):
    """(KarpathySplit of `split`, sizes [N, 2] or None when they are still to be found)."""
    if annotations and not os.path.exists(annotations):
        raise FileNotFoundError(f"{annotations}: missing (annotations= / --data_annotations)")
    if annotations and os.path.isfile(annotations):
        return karpathy_lib.load_karpathy(annotations, split), None
    folders = [annotations] if annotations else tree.annotation_dirs
    for folder in folders:
        if split_ids or coco_ids.has_coco_ids(folder):
            record, coco_sizes = coco_ids.load_coco_split(folder, split, split_ids)
            return record, None if sizes else coco_sizes
        found = sorted(glob.glob(os.path.join(folder, "dataset_*.json")))
        if found:
            return karpathy_lib.load_karpathy(karpathy_lib.find_karpathy_json(folder), split), None
    raise FileNotFoundError(
        f"{tree.features}: expected the captions of these TERAN features, a Karpathy split file "
        f"dataset_coco.json or dataset_flickr30k.json, or COCO's coco_{{split}}_ids.npy + "
        f"captions_*2014.json, in one of: {', '.join(folders)}; pass annotations= "
        f"(--data_annotations=PATH)"
    )


def _npz_feature_shape(path: str) -> tuple:
    """Shape of the 'feat' member of an .npz, read from its header without loading the data."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing region features ({FEATURE_FOLDER}/{{id}}.npz)")
    try:
        with zipfile.ZipFile(path) as archive:
            if "feat.npy" not in archive.namelist():
                raise ValueError(
                    f"{path}: expected key 'feat', got keys "
                    f"{[name[:-4] for name in archive.namelist()]}"
                )
            with archive.open("feat.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(member)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"{path}: expected an .npz archive with key 'feat', got an unreadable "
            f"file ({error}); the download or extraction was probably cut "
            f"short"
        ) from error
    if len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"{path}: 'feat': expected shape [n, F] with n >= 1, got {shape}")
    return shape


def _load_file(path: str, load):
    """load() of one per-image file, its errors re-raised as ValueError naming `path`."""
    try:
        return load()
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path}: expected a readable .npy / .npz array, got: {error} (a "
            f"truncated download or extraction?)"
        ) from error


def _npz_feat(path: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        return archive["feat"]


def _read_image(feature_path: str, box_path: str, size: np.ndarray, feature_dim: int):
    """Returns (regions [n, F] float32, boxes [n, 5] float32 normalised) for one image."""
    features = _load_file(feature_path, lambda: _npz_feat(feature_path))
    if (
        not np.issubdtype(features.dtype, np.floating)
        or features.ndim != 2
        or features.shape[1] != feature_dim
    ):
        raise ValueError(
            f"{feature_path}: 'feat': expected float [n, {feature_dim}], got "
            f"{features.dtype} {features.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError(f"{feature_path}: 'feat': expected finite features, got NaN or Inf")
    if not os.path.exists(box_path):
        raise FileNotFoundError(f"{box_path}: missing boxes for {feature_path}")
    boxes = _load_file(box_path, lambda: np.load(box_path, allow_pickle=False))
    if boxes.shape != (features.shape[0], 4) or not np.issubdtype(boxes.dtype, np.number):
        raise ValueError(
            f"{box_path}: expected [{features.shape[0]}, 4] pixel boxes (one per "
            f"region of {os.path.basename(feature_path)}), got {boxes.dtype} "
            f"{boxes.shape}"
        )
    normalised = boxes.astype(np.float64) / np.tile(size, 2)
    if (
        not np.isfinite(normalised).all()
        or normalised.min() < -BOX_SLACK
        or normalised.max() > 1 + BOX_SLACK
        or (normalised[:, 2:] < normalised[:, :2]).any()
    ):
        raise ValueError(
            f"{box_path}: expected x1 <= x2, y1 <= y2 inside the {size[0]:g} x "
            f"{size[1]:g} image, got pixel range [{boxes.min():g}, {boxes.max():g}]"
        )
    normalised = np.clip(normalised, 0.0, 1.0)
    area = (normalised[:, 2] - normalised[:, 0]) * (normalised[:, 3] - normalised[:, 1])
    return (
        features.astype(np.float32),
        np.concatenate([normalised, area[:, None]], axis=1).astype(np.float32),
    )


class _TeranSplit:
    """The files, sizes and region counts of one split, checked before any feature is read."""

    def __init__(
        self,
        directory: str,
        split: str,
        annotations: str | None = None,
        sizes: str | None = None,
        split_ids: str | None = None,
        captions_per_image: int | None = None,
        dev_images: int | None = None,
        max_regions: int | None = None,
    ):
        tree = find_tree(directory)
        if tree is None:
            raise FileNotFoundError(
                f"{directory}: expected TERAN features ({FEATURE_FOLDER}/ "
                f"and {BOX_FOLDER}/, or features_*/{FEATURE_FOLDER}/)"
            )
        self.directory = tree.features
        record, found_sizes = _load_captions(tree, split, annotations, split_ids, sizes)
        self.captions = karpathy_lib.standardize(
            record,
            split,
            f"{tree.features} (TERAN split {split!r})",
            karpathy_lib.CAPTIONS_PER_IMAGE if captions_per_image is None else captions_per_image,
            karpathy_lib.DEV_IMAGES if dev_images is None else dev_images,
        )
        num_images = len(self.captions.image_ids)
        self.sizes = (
            found_sizes[:num_images]
            if found_sizes is not None
            else load_image_sizes(tree, self.captions, sizes)
        )
        self.feature_paths = [
            os.path.join(tree.features, FEATURE_FOLDER, f"{image_id}.npz")
            for image_id in self.captions.image_ids
        ]
        self.box_paths = [
            os.path.join(tree.features, BOX_FOLDER, f"{image_id}.npy")
            for image_id in self.captions.image_ids
        ]
        shapes = [_npz_feature_shape(path) for path in self.feature_paths]
        dims = {shape[1] for shape in shapes}
        if len(dims) != 1:
            raise ValueError(
                f"{tree.features}/{FEATURE_FOLDER}: expected one feature dim F "
                f"across images, got {sorted(dims)}"
            )
        self.feature_dim = dims.pop()
        self.region_counts = np.asarray([shape[0] for shape in shapes], np.int32)
        self.max_regions = int(max_regions or self.region_counts.max())
        too_many = np.flatnonzero(self.region_counts > self.max_regions)
        if too_many.size:
            raise ValueError(
                f"{self.feature_paths[too_many[0]]}: expected at most max_regions="
                f"{self.max_regions} regions, got {self.region_counts[too_many[0]]}"
            )

    def images(self):
        """Yields (regions [n, F], boxes [n, 5]) per image, in split order."""
        for feature_path, box_path, size in zip(self.feature_paths, self.box_paths, self.sizes):
            yield _read_image(feature_path, box_path, size, self.feature_dim)


def load_teran(directory: str, split: str, **options) -> RegionCorpus:
    """Reads split `split` of a TERAN tree into an in-memory RegionCorpus.

    options: annotations, sizes, split_ids, captions_per_image (None: 5, the standard; 0: all),
    dev_images (None: 1,000; 0: all), max_regions (see the module docstring).
    regions [N, R, F] float32 padded with zeros, boxes [N, R, 5], R = max_regions or max n.
    """
    teran = _TeranSplit(directory, split, **options)
    num_images = len(teran.captions.image_ids)
    regions = np.zeros((num_images, teran.max_regions, teran.feature_dim), np.float32)
    boxes = np.zeros((num_images, teran.max_regions, 5), np.float32)
    for index, (image_regions, image_boxes) in enumerate(teran.images()):
        regions[index, : len(image_regions)] = image_regions
        boxes[index, : len(image_boxes)] = image_boxes
    corpus = RegionCorpus(
        regions=regions,
        boxes=boxes,
        region_counts=teran.region_counts,
        captions=teran.captions.captions,
        caption_image=teran.captions.caption_image,
        image_ids=teran.captions.image_ids,
    )
    validate_corpus(corpus, f"{teran.directory} (TERAN split {split!r})")
    return corpus


def convert_teran_to_precomp(directory: str, split: str, out_directory: str, **options) -> None:
    """Streams split `split` of a TERAN tree into the precomp layout under `out_directory`.

    Memory stays flat for any N; afterwards `load_corpus(out_directory, split)` memory-maps it.
    options as `load_teran`. The precomp layout maps captions to images by position, so every
    image keeps the same number: 5 in the standard protocol (captions_per_image=0: the split's
    minimum). Write dev with dev_images=0 if the precomp dev split should keep every image (the
    precomp reader applies the 1,000-image cut again when reading).
    """
    teran = _TeranSplit(directory, split, **options)
    per_image = int(np.bincount(teran.captions.caption_image).min())
    grouped = [[] for _ in teran.captions.image_ids]
    for caption, image in zip(teran.captions.captions, teran.captions.caption_image):
        grouped[image].append(caption)
    with PrecompWriter(
        out_directory, split, len(grouped), teran.max_regions, teran.feature_dim
    ) as writer:
        for index, (image_regions, image_boxes) in enumerate(teran.images()):
            writer.add(
                image_regions,
                image_boxes,
                grouped[index][:per_image],
                teran.captions.image_ids[index],
            )
