"""`RegionCorpus`, the one in-memory shape every reader returns, and `load_corpus`.

Shapes: N images, R regions per image (padded), F region feature dim, M captions.
"""

import dataclasses
import os

import numpy as np

# Boxes computed in float32 may leave [0, 1] by rounding; anything beyond this is a real error
# (typically pixel coordinates that were never normalised).
BOX_TOLERANCE = 1e-4
# Full NaN/Inf scans of memory-mapped features read the whole file; above this many bytes
# `check_finite_regions` checks a deterministic sample of images unless asked for a full scan.
FULL_SCAN_BYTES = 4 << 30
# What SCAN's and VSE++'s `line.strip()` on a bytes line removes: ASCII whitespace only.
CAPTION_STRIP = " \t\n\r\x0b\x0c"


def clean_caption(text: str) -> str:
    """One caption as every reader returns it, so a caption is the same string in every format:
    a leading UTF-8 BOM and the leading/trailing ASCII whitespace SCAN strips are removed; line
    breaks inside (a few COCO captions have them) become spaces; inner spacing is kept."""
    return text.lstrip("\ufeff").replace("\r", " ").replace("\n", " ").strip(CAPTION_STRIP)


@dataclasses.dataclass
class RegionCorpus:
    """Images as padded region sets, with their captions.

    regions:        [N, R, F] float32 (np.memmap where the format allows).
    boxes:          [N, R, 5] float32: x1, y1, x2, y2, area, all in [0, 1].
    region_counts:  [N] int32; regions [i, :count] are real, the rest padding.
    captions:       [M] strings.
    caption_image:  [M] int64, index of each caption's image.
    image_ids:      [N] external ids.
    """

    regions: np.ndarray
    boxes: np.ndarray
    region_counts: np.ndarray
    captions: list
    caption_image: np.ndarray
    image_ids: list

    @property
    def num_images(self) -> int:
        return int(self.regions.shape[0])

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def max_regions(self) -> int:
        return int(self.regions.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.regions.shape[2])

    @property
    def region_mask(self) -> np.ndarray:
        """[N, R] bool, True where a region is real."""
        return np.arange(self.max_regions)[None, :] < self.region_counts[:, None]

    def validate(self, source: str) -> None:
        """Checks shapes, dtypes and value ranges; raises ValueError naming `source`.

        Does not scan the features for NaN/Inf (see `check_finite_regions`), since for a
        memory-mapped corpus that reads the whole file.
        """
        validate_corpus(self, source)


def _fail(source: str, field: str, expected: str, got) -> None:
    raise ValueError(f"{source}: {field}: expected {expected}, got {got}")


def validate_corpus(corpus: RegionCorpus, source: str) -> None:
    """Raises ValueError "<source>: <field>: expected ..., got ..." on the first inconsistency."""
    regions, boxes, counts = corpus.regions, corpus.boxes, corpus.region_counts
    if not isinstance(regions, np.ndarray) or regions.ndim != 3:
        _fail(source, "regions", "a 3-D array [N, R, F]", getattr(regions, "shape", type(regions)))
    if regions.dtype != np.float32:
        _fail(source, "regions", "dtype float32", regions.dtype)
    num_images, max_regions, _ = regions.shape
    if max_regions < 1:
        _fail(source, "regions", "at least one region slot (R >= 1)", regions.shape)
    if not isinstance(boxes, np.ndarray) or boxes.shape != (num_images, max_regions, 5):
        _fail(
            source,
            "boxes",
            f"shape {(num_images, max_regions, 5)} (x1, y1, x2, y2, area)",
            getattr(boxes, "shape", type(boxes)),
        )
    if boxes.dtype != np.float32:
        _fail(source, "boxes", "dtype float32", boxes.dtype)
    if not np.isfinite(boxes).all():
        _fail(source, "boxes", "finite values", "NaN or Inf")
    if boxes.size and (boxes.min() < -BOX_TOLERANCE or boxes.max() > 1 + BOX_TOLERANCE):
        _fail(
            source,
            "boxes",
            "values in [0, 1] (normalised by image size)",
            f"range [{boxes.min():.4g}, {boxes.max():.4g}]",
        )
    if not isinstance(counts, np.ndarray) or counts.shape != (num_images,):
        _fail(
            source,
            "region_counts",
            f"shape ({num_images},)",
            getattr(counts, "shape", type(counts)),
        )
    if counts.dtype != np.int32:
        _fail(source, "region_counts", "dtype int32", counts.dtype)
    if num_images and (counts.min() < 1 or counts.max() > max_regions):
        _fail(
            source,
            "region_counts",
            f"values in [1, {max_regions}]",
            f"range [{counts.min()}, {counts.max()}]",
        )
    if len(corpus.image_ids) != num_images:
        _fail(source, "image_ids", f"{num_images} ids (one per image)", len(corpus.image_ids))
    if len(set(corpus.image_ids)) != num_images:
        _fail(source, "image_ids", "unique ids", "duplicates")
    caption_image = corpus.caption_image
    if not isinstance(caption_image, np.ndarray) or caption_image.shape != (len(corpus.captions),):
        _fail(
            source,
            "caption_image",
            f"shape ({len(corpus.captions)},) (one per caption)",
            getattr(caption_image, "shape", type(caption_image)),
        )
    if caption_image.dtype != np.int64:
        _fail(source, "caption_image", "dtype int64", caption_image.dtype)
    if caption_image.size and (caption_image.min() < 0 or caption_image.max() >= num_images):
        _fail(
            source,
            "caption_image",
            f"image indices in [0, {num_images})",
            f"range [{caption_image.min()}, {caption_image.max()}]",
        )
    for index, caption in enumerate(corpus.captions):
        if not isinstance(caption, str) or not caption.strip():
            _fail(source, f"captions[{index}]", "a non-empty string", repr(caption))


def check_finite_regions(
    regions: np.ndarray, source: str, full: bool | None = None, chunk_bytes: int = 64 << 20
) -> None:
    """Raises ValueError naming `source` and the first image with NaN/Inf features.

    regions: [N, R, F]. Reads in chunks of about `chunk_bytes` so a memmap is never loaded whole.
    full=None scans everything up to FULL_SCAN_BYTES and a deterministic sample of 4,096 images
    beyond that; full=True always scans everything.
    """
    num_images = regions.shape[0]
    if num_images == 0:
        return
    if full is None:
        full = regions.nbytes <= FULL_SCAN_BYTES
    if full:
        rows = range(num_images)
    else:
        rows = np.unique(np.random.default_rng(0).integers(0, num_images, size=4096))
        rows = np.concatenate([[0], rows, [num_images - 1]])
    rows = np.asarray(rows)
    row_bytes = max(1, regions[0].nbytes)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, len(rows), step):
        index = rows[start : start + step]
        block = _read_rows(regions, int(index[0]), len(index)) if full else regions[index]
        finite = np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = int(index[np.argmin(finite)])
            raise ValueError(
                f"{source}: regions: expected finite features, got NaN or Inf in image {bad}"
            )


def _read_rows(regions: np.ndarray, start: int, count: int) -> np.ndarray:
    """regions[start:start + count]; for a whole-file memmap, read with plain file reads so a
    full scan does not leave the file's pages mapped into the process (its RSS stays flat)."""
    filename = getattr(regions, "filename", None)
    whole_file = (
        isinstance(regions, np.memmap)
        and filename
        and regions.flags.c_contiguous
        and os.path.getsize(filename) == regions.offset + regions.nbytes
    )
    if not whole_file:
        return np.asarray(regions[start : start + count])
    row_items = int(np.prod(regions.shape[1:]))
    with open(filename, "rb") as file:
        file.seek(regions.offset + start * row_items * regions.itemsize)
        block = np.fromfile(file, dtype=regions.dtype, count=count * row_items)
    return block.reshape((count,) + regions.shape[1:])


def load_corpus(path: str, split: str, **options) -> RegionCorpus:
    """Loads split `split` of the corpus at `path`, detecting the format from the files.

    - `{path}/{split}_ims.npy` present: SCAN/VSE++ precomp (`lateint.data.precomp.load_precomp`);
    - `{path}/bu_att/` or `{path}/features_*/bu_att/` present: TERAN bottom-up features, with
      its annotations and image sizes found in TERAN's tree (`lateint.data.teran.load_teran`).
    `options`: reader options (see `lateint.data.options`), merged over those a
    `lateint.data.options.DataPath` carries; None values mean the reader's default. Raises
    FileNotFoundError listing what was looked for, ValueError for an option the format lacks.
    """
    # The readers import RegionCorpus from this module, so they are imported here, not at the top.
    from lateint.data import options as options_lib
    from lateint.data import precomp, teran

    merged = options_lib.path_options(path)
    merged.update(options)
    merged = {name: value for name, value in merged.items() if value is not None}
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: not a directory (expected a corpus directory holding "
            f"{split}_ims.npy (precomp), bu_att/ or features_*/bu_att/ "
            f"(TERAN))"
        )
    if os.path.exists(os.path.join(path, f"{split}_ims.npy")):
        _refuse_options(merged, precomp.OPTIONS, path, "a SCAN/VSE++ precomp directory")
        return precomp.load_precomp(path, split, **merged)
    tree = teran.find_tree(path)
    if tree is not None:
        _refuse_options(merged, teran.OPTIONS, path, "TERAN features")
        return teran.load_teran(path, split, **merged)
    present = sorted(os.listdir(path))
    shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
    raise FileNotFoundError(
        f"{path}: no corpus for split {split!r}: expected {split}_ims.npy (SCAN/VSE++ precomp), "
        f"{teran.FEATURE_FOLDER}/ + {teran.BOX_FOLDER}/ or features_*/{teran.FEATURE_FOLDER}/ "
        f"(TERAN); found: {shown or 'nothing'}"
    )


def _refuse_options(options: dict, accepted: tuple, path: str, what: str) -> None:
    unused = sorted(set(options) - set(accepted))
    if unused:
        raise ValueError(
            f"{path}: holds {what}, which takes the options {list(accepted)}; got "
            f"{unused} (the --data_{unused[0]} flag does not apply to it)"
        )
