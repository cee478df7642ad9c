"""SCAN/VSE precomp reader and writer: round trips on small real files, and broken inputs."""

import os

import numpy as np
import pytest

from lateint.data import RegionCorpus, load_corpus
from lateint.data.corpus import check_finite_regions
from lateint.data.precomp import PrecompWriter, load_precomp, write_precomp

N, R, F = 4, 6, 10


def _write_scan(
    directory,
    split="test",
    captions_per_image=5,
    ids="image",
    boxes=None,
    counts=None,
    features=None,
):
    """Writes the files the way SCAN's precomp folders hold them."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(N, R, F)).astype(np.float32) if features is None else features
    np.save(os.path.join(directory, f"{split}_ims.npy"), features)
    captions = [f"image {i} caption {k}" for i in range(N) for k in range(captions_per_image)]
    with open(os.path.join(directory, f"{split}_caps.txt"), "w") as file:
        file.write("\n".join(captions) + "\n")
    if ids == "image":
        with open(os.path.join(directory, f"{split}_ids.txt"), "w") as file:
            file.write("\n".join(str(1000 + i) for i in range(N)) + "\n")
    elif ids == "caption":
        with open(os.path.join(directory, f"{split}_ids.txt"), "w") as file:
            file.write(
                "\n".join(str(1000 + i // captions_per_image) for i in range(len(captions))) + "\n"
            )
    if boxes is not None:
        np.save(os.path.join(directory, f"{split}_boxes.npy"), boxes)
    if counts is not None:
        np.save(os.path.join(directory, f"{split}_region_counts.npy"), counts)
    return features, captions


def test_scan_layout_round_trip(tmp_path):
    features, captions = _write_scan(tmp_path)
    corpus = load_corpus(str(tmp_path), "test")
    assert isinstance(corpus.regions, np.memmap)
    np.testing.assert_array_equal(corpus.regions, features)
    assert corpus.captions == captions
    np.testing.assert_array_equal(corpus.caption_image, np.arange(5 * N) // 5)
    assert corpus.caption_image.dtype == np.int64
    assert corpus.image_ids == [str(1000 + i) for i in range(N)]
    assert corpus.boxes.shape == (N, R, 5) and not corpus.boxes.any()
    np.testing.assert_array_equal(corpus.region_counts, np.full(N, R, np.int32))
    assert corpus.region_mask.all() and corpus.region_mask.shape == (N, R)
    assert corpus.num_images == N and corpus.num_captions == 5 * N


def test_one_caption_per_image_and_per_caption_ids(tmp_path):
    _write_scan(tmp_path, captions_per_image=1, ids="caption")
    corpus = load_precomp(str(tmp_path), "test")  # M == N: SCAN's im_div = 1
    np.testing.assert_array_equal(corpus.caption_image, np.arange(N))
    assert corpus.image_ids == [str(1000 + i) for i in range(N)]


def test_ids_per_caption_collapse_to_images(tmp_path):
    _write_scan(tmp_path, ids="caption")
    assert load_precomp(str(tmp_path), "test").image_ids == [str(1000 + i) for i in range(N)]


def test_missing_ids_default_to_positions(tmp_path):
    _write_scan(tmp_path, ids=None)
    assert load_precomp(str(tmp_path), "test").image_ids == ["0", "1", "2", "3"]


def test_four_column_boxes_get_their_area_and_counts_give_the_mask(tmp_path):
    boxes = np.zeros((N, R, 4), np.float64)
    boxes[..., 2:] = 0.5
    counts = np.array([1, 2, 6, 3], np.int64)
    _write_scan(tmp_path, boxes=boxes, counts=counts)
    corpus = load_corpus(str(tmp_path), "test")
    assert corpus.boxes.dtype == np.float32
    np.testing.assert_allclose(corpus.boxes[..., 4], 0.25)
    np.testing.assert_array_equal(corpus.region_mask.sum(1), counts)


def test_writer_round_trip_with_variable_counts(tmp_path):
    rng = np.random.default_rng(1)
    counts = [3, 1, 6, 2, 5]
    with PrecompWriter(str(tmp_path), "train", len(counts), R, F, chunk_images=2) as writer:
        expected = []
        for index, count in enumerate(counts):
            regions = rng.random((count, F)).astype(np.float32)
            corners = np.sort(rng.random((count, 2, 2)), axis=1)
            boxes = np.concatenate(
                [corners[:, 0], corners[:, 1], np.prod(corners[:, 1] - corners[:, 0], 1)[:, None]],
                1,
            )
            writer.add(
                regions, boxes.astype(np.float32), [f"c{index}a", f"c{index}b"], f"id{index}"
            )
            expected.append((regions, boxes))
    corpus = load_corpus(str(tmp_path), "train", captions_per_image=2)
    np.testing.assert_array_equal(corpus.region_counts, counts)
    for index, (regions, boxes) in enumerate(expected):
        np.testing.assert_array_equal(corpus.regions[index, : counts[index]], regions)
        np.testing.assert_allclose(corpus.boxes[index, : counts[index]], boxes, rtol=1e-6)
        assert not corpus.regions[index, counts[index] :].any()
    assert corpus.captions[2:4] == ["c1a", "c1b"]
    np.testing.assert_array_equal(corpus.caption_image, np.arange(10) // 2)
    # write_precomp re-writes a loaded corpus identically.
    write_precomp(str(tmp_path / "copy"), "train", corpus)
    again = load_corpus(str(tmp_path / "copy"), "train", captions_per_image=0)
    np.testing.assert_array_equal(again.regions, corpus.regions)
    assert again.image_ids == corpus.image_ids and again.captions == corpus.captions


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    with pytest.raises(ValueError, match="1 <= n <= 6"):
        with PrecompWriter(str(tmp_path), "train", 2, R, F) as writer:
            writer.add(
                np.zeros((R + 1, F), np.float32), np.zeros((R + 1, 5), np.float32), ["x"], "a"
            )
    assert os.listdir(tmp_path) == []


def test_writer_refuses_too_few_images(tmp_path):
    writer = PrecompWriter(str(tmp_path), "train", 2, R, F)
    writer.add(np.zeros((1, F), np.float32), np.zeros((1, 5), np.float32), ["x"], "a")
    with pytest.raises(ValueError, match="wrote 1 rows, declared 2"):
        writer.close()


def _break(tmp_path, **overrides):
    _write_scan(tmp_path, **overrides)
    return str(tmp_path)


@pytest.mark.parametrize(
    "mutate, error, pattern",
    [
        # caption count not a multiple of the image count
        (
            lambda d: open(os.path.join(d, "test_caps.txt"), "a").write("one more\n"),
            ValueError,
            r"test_caps.txt: expected 5 captions per image \(20; caption i -> image i // 5, as "
            r"SCAN/VSE\+\+ read it\) or one per image \(4\) for the 4 images of .*test_ims.npy, got 21 "
            r"captions \(5.25 per image\); pass captions_per_image=K",
        ),
        (
            lambda d: os.remove(os.path.join(d, "test_caps.txt")),
            FileNotFoundError,
            r"test_caps.txt: missing",
        ),
        (
            lambda d: np.save(os.path.join(d, "test_ims.npy"), np.zeros((N, R, F, 1), np.float32)),
            ValueError,
            r"test_ims.npy: regions: expected a 3-D array \[N, R, F\] \(SCAN regions\) or a "
            r"2-D array \[N, D\] \(VSE\+\+; \[5N, D\] for 10-crop\), got shape "
            r"\(4, 6, 10, 1\)",
        ),
        (
            lambda d: np.save(os.path.join(d, "test_ims.npy"), np.zeros((N, R, F), np.float64)),
            ValueError,
            r"test_ims.npy: regions: expected dtype float32, got float64",
        ),
        (
            lambda d: np.save(
                os.path.join(d, "test_boxes.npy"), np.zeros((N, R + 1, 5), np.float32)
            ),
            ValueError,
            r"test_boxes.npy: boxes: expected shape \(4, 6, 5\)",
        ),
        (
            lambda d: np.save(
                os.path.join(d, "test_boxes.npy"), np.full((N, R, 5), 320, np.float32)
            ),
            ValueError,
            r"boxes: expected values in \[0, 1\] \(normalised by image size\), got range",
        ),
        (
            lambda d: np.save(os.path.join(d, "test_region_counts.npy"), np.full(N, R + 1)),
            ValueError,
            r"region_counts: expected values in \[1, 6\], got range \[7, 7\]",
        ),
        (
            lambda d: np.save(os.path.join(d, "test_region_counts.npy"), np.full(N, 2.0)),
            ValueError,
            r"test_region_counts.npy: region_counts: expected shape \(4,\) integers",
        ),
        (
            lambda d: open(os.path.join(d, "test_ids.txt"), "a").write("extra\n"),
            ValueError,
            r"test_ids.txt: expected 4 ids \(one per image\) or 20 \(one per caption\), got 5",
        ),
        (
            lambda d: open(os.path.join(d, "test_caps.txt"), "w").write("a\n\nb\nc\n"),
            ValueError,
            r"test_caps.txt: line 2: expected a caption, got an empty line",
        ),
    ],
)
def test_broken_inputs_name_the_file_and_expectation(tmp_path, mutate, error, pattern):
    directory = _break(tmp_path)
    mutate(directory)
    with pytest.raises(error, match=pattern):
        load_corpus(directory, "test")


def test_nan_features_are_found_in_the_memmap(tmp_path):
    features = np.random.default_rng(2).normal(size=(N, R, F)).astype(np.float32)
    features[2, 3, 4] = np.nan
    _write_scan(tmp_path, features=features)
    with pytest.raises(
        ValueError,
        match=r"test_ims.npy: regions: expected finite features, got "
        r"NaN or Inf in image 2",
    ):
        load_corpus(str(tmp_path), "test")
    # The scan can be skipped for a known-good corpus, e.g. one checked before.
    assert load_corpus(str(tmp_path), "test", check_finite=False).num_images == N


def test_pickled_npy_is_refused(tmp_path):
    _write_scan(tmp_path)
    np.save(
        os.path.join(tmp_path, "test_ims.npy"),
        np.array([{"a": 1}], dtype=object),
        allow_pickle=True,
    )
    with pytest.raises(ValueError, match=r"test_ims.npy: regions: expected a plain .npy array"):
        load_corpus(str(tmp_path), "test")


def test_corpus_validation_reports_field_expected_and_got():
    corpus = RegionCorpus(
        regions=np.zeros((2, 3, 4), np.float32),
        boxes=np.zeros((2, 3, 5), np.float32),
        region_counts=np.array([1, 3], np.int32),
        captions=["a", "b"],
        caption_image=np.array([0, 2], np.int64),
        image_ids=["x", "y"],
    )
    with pytest.raises(
        ValueError,
        match=r"src: caption_image: expected image indices in "
        r"\[0, 2\), got range \[0, 2\]",
    ):
        corpus.validate("src")
    corpus.caption_image = np.array([0, 1], np.int64)
    corpus.validate("src")
    corpus.image_ids = ["x", "x"]
    with pytest.raises(ValueError, match=r"src: image_ids: expected unique ids, got duplicates"):
        corpus.validate("src")


def test_load_corpus_says_what_it_looked_for(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(
        FileNotFoundError,
        match=r"no corpus for split 'dev': expected "
        r"dev_ims.npy .* found: readme.txt",
    ):
        load_corpus(str(tmp_path), "dev")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_corpus(str(tmp_path / "nowhere"), "dev")


def test_finite_check_samples_large_arrays_but_always_sees_the_ends():
    regions = np.zeros((50, 2, 3), np.float32)
    regions[49, 1, 2] = np.inf
    with pytest.raises(ValueError, match=r"src: regions: expected finite .* in image 49"):
        check_finite_regions(regions, "src", full=False)
    regions[49, 1, 2] = 0
    regions[17, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"in image 17"):
        check_finite_regions(regions, "src", full=True, chunk_bytes=1)
