"""The SCAN/VSE++ "precomp" layout: reader and streaming writer.

Files of split S in one directory (N images, R regions, F features, M captions):

    S_ims.npy            [N, R, F] float32 region features (SCAN: R = 36, F = 2048), or VSE++'s
                         one vector per image [N, D] (read as R = 1), or VSE++'s 10-crop variant
                         [M, D] with one row per caption, rows 5i..5i+4 of image i (as VSE++'s
                         evaluation, image i is row 5i); opened with mmap_mode='r'
    S_caps.txt           M lines, one UTF-8 caption each, stripped like SCAN's `line.strip()`
                         (a BOM is dropped); caption i belongs to image i // 5, or to image i when
                         M == N (SCAN's im_div = 1)
    S_ids.txt            optional: N lines (one id per image) or M lines (one per caption,
                         constant within an image); default ids are "0", "1", ...
    S_boxes.npy          optional [N, R, 5] (x1, y1, x2, y2, area) or [N, R, 4] (area is
                         computed), normalised to [0, 1]; default all zeros (no geometry)
    S_region_counts.npy  optional [N] integers in [1, R]; default R for every image

The standard protocol expects 5 captions per image; `captions_per_image=K` reads K per image
(0: any whole number M / N). Split 'dev' keeps its first `dev_images` = 1,000 images, as SCAN's
PrecompDataset reads the first 5,000 dev captions (0: all). SCAN's COCO folder holds train
(113,287 images), dev (5,000), test (the first 1,000 of the test split) and testall (5,000).
The scenes benchmark writes all five files (`PrecompWriter`), so one reader serves it and COCO.
"""

import os

import numpy as np

from lateint.data.corpus import RegionCorpus, check_finite_regions, clean_caption, validate_corpus
from lateint.data.karpathy import CAPTIONS_PER_IMAGE, DEV_IMAGES, DEV_SPLITS
from lateint.data.npy_writer import NpyStreamWriter

# load_precomp's keyword options (lateint.data.load_corpus refuses others for this layout).
OPTIONS = ("captions_per_image", "dev_images", "check_finite")


def precomp_paths(directory: str, split: str) -> dict:
    """Maps 'ims', 'caps', 'ids', 'boxes', 'region_counts' to their file paths."""
    return {
        "ims": os.path.join(directory, f"{split}_ims.npy"),
        "caps": os.path.join(directory, f"{split}_caps.txt"),
        "ids": os.path.join(directory, f"{split}_ids.txt"),
        "boxes": os.path.join(directory, f"{split}_boxes.npy"),
        "region_counts": os.path.join(directory, f"{split}_region_counts.npy"),
    }


def _read_lines(path: str) -> list:
    """Lines of a UTF-8 text file split at "\\n" (as SCAN reads them); one trailing empty line is
    dropped. ValueError naming the file and line for bytes that are not UTF-8."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}: line {line}: expected UTF-8 text, got byte "
            f"0x{data[error.start]:02x} (convert the file once, e.g. iconv -f "
            f"latin1 -t utf-8)"
        ) from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_header(path: str, what: str):
    """(shape, dtype, data offset) from a .npy header; ValueError for a file that is not one."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:  # 3.0 (UTF-8 field names): no public header reader; numpy parses it
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                return array.shape, array.dtype, array.offset
            return shape, dtype, file.tell()
    except (EOFError, ValueError, SyntaxError) as error:
        got = "an empty file" if size == 0 else f"{size} bytes without a complete .npy header"
        raise ValueError(
            f"{path}: {what}: expected a .npy array, got {got} ({error}); the "
            f"download or copy was probably cut short"
        ) from error


def _load_array(path: str, what: str) -> np.ndarray:
    """The .npy at `path` memory-mapped; ValueError naming the file when it is empty, not a .npy,
    pickled, or shorter than its header says."""
    shape, dtype, offset = _read_header(path, what)
    if dtype.hasobject:
        raise ValueError(
            f"{path}: {what}: expected a plain .npy array, got dtype {dtype} "
            f"(pickled Python objects)"
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < expected:
        raise ValueError(
            f"{path}: {what}: truncated: its header says shape {shape} {dtype}, "
            f"{expected} bytes, the file has {size} ({expected - size} missing); "
            f"the download or copy was cut short"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: {what}: expected a plain .npy array, got: {error}") from error


def _read_features(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: missing; the precomp layout needs region features "
            f"[N, R, F] (or VSE++'s [N, D]) float32 here"
        )
    regions = _load_array(path, "regions")
    if regions.ndim not in (2, 3):
        raise ValueError(
            f"{path}: regions: expected a 3-D array [N, R, F] (SCAN regions) or a "
            f"2-D array [N, D] (VSE++; [5N, D] for 10-crop), got shape "
            f"{regions.shape}"
        )
    if regions.dtype != np.float32:
        raise ValueError(
            f"{path}: regions: expected dtype float32, got {regions.dtype} "
            f"(convert once with np.save(path, array.astype(np.float32)))"
        )
    return regions


def _image_layout(
    regions: np.ndarray, num_captions: int, captions_per_image, caps_path: str, ims_path: str
):
    """(regions [N, R, F] view, captions per image K): caption i belongs to image i // K."""
    rows = regions.shape[0]
    wanted = CAPTIONS_PER_IMAGE if captions_per_image is None else int(captions_per_image)
    if rows == 0 or num_captions == 0:
        raise ValueError(
            f"{caps_path}: expected captions for the {rows} images of {ims_path}, "
            f"got {num_captions} captions"
        )
    if regions.ndim == 2:
        regions = regions[:, None, :]  # one global vector per image: R = 1
        if rows == num_captions and wanted > 1 and num_captions % wanted == 0:
            return regions[::wanted], wanted  # VSE++ 10-crop: image i is row K·i
    if rows == num_captions:
        return regions, 1
    if wanted == 0 and num_captions % rows == 0:
        return regions, num_captions // rows
    if wanted and num_captions == wanted * rows:
        return regions, wanted
    per_image = f"{num_captions / rows:g} per image" if rows else "-"
    expected = (
        "a whole number of captions per image"
        if wanted == 0
        else f"{wanted} captions per image ({wanted * rows}; caption i -> image i // {wanted}, "
        f"as SCAN/VSE++ read it) or one per image ({rows})"
    )
    raise ValueError(
        f"{caps_path}: expected {expected} for the {rows} images of {ims_path}, got "
        f"{num_captions} captions ({per_image}); pass captions_per_image=K "
        f"(--data_captions_per_image=K) for K per image, 0 for any whole number"
    )


def _read_ids(path: str, num_images: int, caption_image: np.ndarray) -> list:
    if not os.path.exists(path):
        return [str(index) for index in range(num_images)]
    ids = [line.strip() for line in _read_lines(path)]
    if len(ids) == num_images:
        return ids
    if len(ids) == len(caption_image):
        per_image = [None] * num_images
        for line, (image, image_id) in enumerate(zip(caption_image, ids)):
            if per_image[image] is None:
                per_image[image] = image_id
            elif per_image[image] != image_id:
                raise ValueError(
                    f"{path}: line {line + 1}: expected id {per_image[image]!r} "
                    f"(same image as the line before), got {image_id!r}"
                )
        return per_image
    raise ValueError(
        f"{path}: expected {num_images} ids (one per image) or "
        f"{len(caption_image)} (one per caption), got {len(ids)}"
    )


def _read_boxes(path: str, regions_shape: tuple) -> np.ndarray:
    num_images, max_regions, _ = regions_shape
    if not os.path.exists(path):
        return np.zeros((num_images, max_regions, 5), np.float32)
    boxes = np.asarray(_load_array(path, "boxes"))
    if (
        boxes.ndim != 3
        or boxes.shape[:2] != (num_images, max_regions)
        or boxes.shape[2] not in (4, 5)
    ):
        raise ValueError(
            f"{path}: boxes: expected shape ({num_images}, {max_regions}, 5) or "
            f"(..., 4), got {boxes.shape}"
        )
    if not np.issubdtype(boxes.dtype, np.floating):
        raise ValueError(f"{path}: boxes: expected a float dtype, got {boxes.dtype}")
    boxes = boxes.astype(np.float32)
    if boxes.shape[2] == 4:
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        boxes = np.concatenate([boxes, area[..., None]], axis=-1)
    return boxes


def _read_counts(path: str, regions_shape: tuple) -> np.ndarray:
    num_images, max_regions, _ = regions_shape
    if not os.path.exists(path):
        return np.full((num_images,), max_regions, np.int32)
    counts = np.asarray(_load_array(path, "region_counts"))
    if counts.shape != (num_images,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(
            f"{path}: region_counts: expected shape ({num_images},) integers, got "
            f"shape {counts.shape} dtype {counts.dtype}"
        )
    return counts.astype(np.int32)


def _read_captions(path: str, ims_path: str) -> list:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: missing; expected the captions of {ims_path}, one per line"
        )
    captions = [clean_caption(line) for line in _read_lines(path)]
    for line, caption in enumerate(captions):
        if not caption:
            raise ValueError(f"{path}: line {line + 1}: expected a caption, got an empty line")
    return captions


def load_precomp(
    directory: str,
    split: str,
    check_finite: bool | None = None,
    captions_per_image: int | None = None,
    dev_images: int | None = None,
) -> RegionCorpus:
    """Reads split `split` of a precomp directory into a RegionCorpus (regions memory-mapped).

    check_finite: None scans the features for NaN/Inf fully up to 4 GiB and samples beyond
    (see corpus.check_finite_regions), True always scans fully, False skips the scan.
    captions_per_image: None or 5 (the standard), K, or 0 for any whole number per image.
    dev_images: split 'dev' keeps its first N images (None: 1,000, SCAN's; 0: all).
    Raises FileNotFoundError / ValueError naming the file and what was expected.
    """
    paths = precomp_paths(directory, split)
    features = _read_features(paths["ims"])
    captions = _read_captions(paths["caps"], paths["ims"])
    regions, per_image = _image_layout(
        features, len(captions), captions_per_image, paths["caps"], paths["ims"]
    )
    caption_image = np.arange(len(captions), dtype=np.int64) // per_image
    image_ids = _read_ids(paths["ids"], regions.shape[0], caption_image)
    boxes = _read_boxes(paths["boxes"], regions.shape)
    counts = _read_counts(paths["region_counts"], regions.shape)
    keep = DEV_IMAGES if dev_images is None else int(dev_images)
    if split in DEV_SPLITS and keep and regions.shape[0] > keep:
        regions, boxes, counts, image_ids = (
            regions[:keep],
            boxes[:keep],
            counts[:keep],
            image_ids[:keep],
        )
        captions, caption_image = captions[: keep * per_image], caption_image[: keep * per_image]
    corpus = RegionCorpus(
        regions=regions,
        boxes=boxes,
        region_counts=counts,
        captions=captions,
        caption_image=caption_image,
        image_ids=image_ids,
    )
    source = f"{directory} (precomp split {split!r})"
    validate_corpus(corpus, source)
    if check_finite is not False:
        check_finite_regions(regions, paths["ims"], full=check_finite)
    return corpus


class PrecompWriter:
    """Streams images into the precomp layout: S_ims/boxes/region_counts .npy, caps, ids.

    The image count N is declared up front (the .npy headers hold it); images arrive one at a
    time through `add` and are flushed every `chunk_images`, so memory stays flat for any N.
    Use as a context manager; on an exception nothing is left under the final names.
    """

    def __init__(
        self,
        directory: str,
        split: str,
        num_images: int,
        max_regions: int,
        feature_dim: int,
        chunk_images: int = 1024,
    ):
        os.makedirs(directory, exist_ok=True)
        self.paths = precomp_paths(directory, split)
        self.shape = (num_images, max_regions, feature_dim)
        self.chunk_images = chunk_images
        self._arrays = {
            "ims": NpyStreamWriter(self.paths["ims"], self.shape, np.float32),
            "boxes": NpyStreamWriter(self.paths["boxes"], (num_images, max_regions, 5), np.float32),
            "region_counts": NpyStreamWriter(self.paths["region_counts"], (num_images,), np.int32),
        }
        self._texts = {
            name: open(self.paths[name] + ".partial", "w", encoding="utf-8")
            for name in ("caps", "ids")
        }
        self._pending = {"ims": [], "boxes": [], "region_counts": []}
        self.images_added = 0

    def add(self, regions: np.ndarray, boxes: np.ndarray, captions: list, image_id: str):
        """Adds one image: regions [n, F] and boxes [n, 5] of its n <= R real regions."""
        num_regions = regions.shape[0]
        _, max_regions, feature_dim = self.shape
        if (
            not 1 <= num_regions <= max_regions
            or regions.shape[1:] != (feature_dim,)
            or boxes.shape != (num_regions, 5)
        ):
            raise ValueError(
                f"{self.paths['ims']}: image {image_id}: expected regions [n, "
                f"{feature_dim}] and boxes [n, 5] with 1 <= n <= {max_regions}, "
                f"got {regions.shape} and {boxes.shape}"
            )
        if "\n" in image_id or not image_id.strip():
            raise ValueError(
                f"{self.paths['ids']}: expected a one-line non-empty image id, got {image_id!r}"
            )
        for caption in captions:
            if "\n" in caption or not caption.strip():
                raise ValueError(
                    f"{self.paths['caps']}: image {image_id}: expected one-line "
                    f"non-empty captions, got {caption!r}"
                )
        padded_regions = np.zeros((max_regions, feature_dim), np.float32)
        padded_regions[:num_regions] = regions
        padded_boxes = np.zeros((max_regions, 5), np.float32)
        padded_boxes[:num_regions] = boxes
        self._pending["ims"].append(padded_regions)
        self._pending["boxes"].append(padded_boxes)
        self._pending["region_counts"].append(num_regions)
        self._texts["caps"].write("".join(caption + "\n" for caption in captions))
        self._texts["ids"].write(image_id + "\n")
        self.images_added += 1
        if len(self._pending["ims"]) >= self.chunk_images:
            self._flush()

    def _flush(self):
        for name, rows in self._pending.items():
            if rows:
                self._arrays[name].append(
                    np.stack(rows) if name != "region_counts" else np.asarray(rows, np.int32)
                )
                rows.clear()

    def close(self):
        self._flush()
        for writer in self._arrays.values():
            writer.close()
        for name, file in self._texts.items():
            file.close()
            os.replace(self.paths[name] + ".partial", self.paths[name])

    def abort(self):
        for writer in self._arrays.values():
            writer.abort()
        for name, file in self._texts.items():
            file.close()
            if os.path.exists(self.paths[name] + ".partial"):
                os.remove(self.paths[name] + ".partial")

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            self.close()
        else:
            self.abort()


def write_precomp(
    directory: str, split: str, corpus: RegionCorpus, captions_per_image: int | None = None
) -> None:
    """Writes a whole RegionCorpus in the precomp layout.

    The layout maps captions to images by position, so the corpus must have the same number of
    captions for every image, stored grouped by image in image order.
    """
    counts = np.bincount(corpus.caption_image, minlength=corpus.num_images)
    per_image = (captions_per_image or int(counts[0])) if corpus.num_images else 0
    expected = np.arange(corpus.num_images * per_image) // max(per_image, 1)
    if not (counts == per_image).all() or not np.array_equal(corpus.caption_image, expected):
        raise ValueError(
            f"{directory}: write_precomp needs {per_image} captions per image, "
            f"grouped in image order; got per-image counts in "
            f"[{counts.min()}, {counts.max()}]"
        )
    with PrecompWriter(
        directory, split, corpus.num_images, corpus.max_regions, corpus.feature_dim
    ) as writer:
        for image in range(corpus.num_images):
            count = int(corpus.region_counts[image])
            writer.add(
                np.asarray(corpus.regions[image, :count]),
                np.asarray(corpus.boxes[image, :count]),
                corpus.captions[image * per_image : (image + 1) * per_image],
                corpus.image_ids[image],
            )
