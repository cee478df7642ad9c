"""Precomp files as SCAN's and VSE++'s PrecompDataset read them (kuanghuei/SCAN data.py,
fartashf/vsepp data.py): the fixtures follow those loaders' file names and shapes, and the
expected values come from re-running the loaders' own reading rules on the files:

    captions: [line.strip() for line in open(f'{split}_caps.txt', 'rb')]
    images:   np.load(f'{split}_ims.npy'); im_div = 5 if images.shape[0] != len(captions) else 1
              caption i -> images[i // im_div]; evaluation takes images[::5] (VSE++ i2t/t2i)
    dev:      len(dataset) = 5000 captions (the first 1,000 images)
"""

import os

import numpy as np
import pytest

from lateint.data import load_corpus

D = 7


def _scan_captions(path):
    """SCAN / VSE++: `for line in f: captions.append(line.strip())` over the file in 'rb'."""
    with open(path, "rb") as file:
        return [line.strip() for line in file]


def _write(directory, split, images, captions, raw=None):
    np.save(os.path.join(directory, f"{split}_ims.npy"), images)
    with open(os.path.join(directory, f"{split}_caps.txt"), "wb") as file:
        file.write(raw if raw is not None else "".join(f"{c}\n" for c in captions).encode())


def test_vsepp_one_vector_per_image(tmp_path):
    images = np.random.default_rng(0).normal(size=(4, D)).astype(np.float32)  # [N, D]
    captions = [f"image {i // 5} caption {i % 5}" for i in range(20)]
    _write(tmp_path, "test", images, captions)
    corpus = load_corpus(str(tmp_path), "test")
    assert corpus.regions.shape == (4, 1, D) and isinstance(corpus.regions, np.memmap)
    im_div = 5 if images.shape[0] != len(captions) else 1  # VSE++'s rule
    for index in range(len(captions)):
        np.testing.assert_array_equal(
            corpus.regions[corpus.caption_image[index], 0], images[index // im_div]
        )
    assert corpus.region_mask.all() and corpus.captions == captions


def test_vsepp_10crop_one_row_per_caption(tmp_path):
    images = np.random.default_rng(1).normal(size=(20, D)).astype(np.float32)  # [5N, D]
    captions = [f"image {i // 5} caption {i % 5}" for i in range(20)]
    _write(tmp_path, "test", images, captions)
    corpus = load_corpus(str(tmp_path), "test")
    # VSE++'s t2i: ims = images[0::5]; i2t: image `index` is images[5 * index] with captions
    # 5 * index ... 5 * index + 4.
    assert corpus.num_images == 4 and corpus.regions.shape == (4, 1, D)
    np.testing.assert_array_equal(corpus.regions[:, 0], images[::5])
    np.testing.assert_array_equal(corpus.caption_image, np.arange(20) // 5)


def test_captions_are_stripped_like_scan_and_lose_the_bom(tmp_path):
    raw = ("\ufeffA dog runs.  \r\n  Two cats\tsleep \nA  red car.\t\nx\ny \n").encode("utf-8")
    _write(tmp_path, "test", np.zeros((1, 2, D), np.float32), None, raw=raw)
    corpus = load_corpus(str(tmp_path), "test")
    expected = [line.decode("utf-8") for line in _scan_captions(tmp_path / "test_caps.txt")]
    expected[0] = expected[0].lstrip("\ufeff")  # SCAN would keep the BOM inside caption 0
    assert (
        corpus.captions == expected == ["A dog runs.", "Two cats\tsleep", "A  red car.", "x", "y"]
    )


def test_three_captions_per_image_are_refused_unless_asked(tmp_path):
    _write(tmp_path, "test", np.zeros((4, 2, D), np.float32), [f"c{i}" for i in range(12)])
    with pytest.raises(
        ValueError,
        match=r"test_caps.txt: expected 5 captions per image "
        r"\(20; .*got 12 captions \(3 per image\); pass "
        r"captions_per_image=K \(--data_captions_per_image=K\)",
    ):
        load_corpus(str(tmp_path), "test")
    corpus = load_corpus(str(tmp_path), "test", captions_per_image=3)
    np.testing.assert_array_equal(corpus.caption_image, np.arange(12) // 3)
    assert load_corpus(str(tmp_path), "test", captions_per_image=0).num_captions == 12
    _write(tmp_path, "test", np.zeros((4, 2, D), np.float32), [f"c{i}" for i in range(40)])
    with pytest.raises(ValueError, match=r"got 40 captions \(10 per image\)"):
        load_corpus(str(tmp_path), "test")


def test_dev_keeps_the_first_1000_images_like_scan(tmp_path):
    images = np.arange(1200, dtype=np.float32).reshape(1200, 1, 1)
    captions = [f"image {i // 5} caption {i % 5}" for i in range(6000)]
    _write(tmp_path, "dev", images, captions)
    corpus = load_corpus(str(tmp_path), "dev")
    length = 5000  # SCAN: if data_split == 'dev': self.length = 5000
    assert corpus.num_captions == length and corpus.captions == captions[:length]
    assert corpus.num_images == 1000 and corpus.caption_image.max() == (length - 1) // 5
    np.testing.assert_array_equal(corpus.regions[:, 0, 0], np.arange(1000))
    assert load_corpus(str(tmp_path), "dev", dev_images=0).num_images == 1200
    _write(tmp_path, "test", images, captions)
    assert load_corpus(str(tmp_path), "test").num_images == 1200  # other splits: all


def _header_only(path):
    array = np.zeros((4, 2, D), np.float32)
    np.save(path, array)
    with open(path, "rb") as file:
        head = file.read(40)  # inside the header
    with open(path, "wb") as file:
        file.write(head)


def _data_cut(path):
    np.save(path, np.zeros((4, 2, D), np.float32))
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 20)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (
            lambda path: open(path, "wb").close(),
            r"test_ims.npy: regions: expected a .npy array, got an empty file .*cut short",
        ),
        (
            _header_only,
            r"test_ims.npy: regions: expected a .npy array, got 40 bytes without a "
            r"complete .npy header",
        ),
        (
            _data_cut,
            r"test_ims.npy: regions: truncated: its header says shape \(4, 2, 7\) float32, "
            r"352 bytes, the file has 332 \(20 missing\)",
        ),
    ],
)
def test_broken_npy_files_name_the_file(tmp_path, mutate, pattern):
    _write(tmp_path, "test", np.zeros((4, 2, D), np.float32), [f"c{i}" for i in range(20)])
    mutate(str(tmp_path / "test_ims.npy"))
    with pytest.raises(ValueError, match=pattern):
        load_corpus(str(tmp_path), "test")


def test_non_utf8_captions_name_the_file_and_line(tmp_path):
    raw = "one\ntwo\ncaf\xe9 au lait\nfour\n".encode("latin-1")
    _write(tmp_path, "test", np.zeros((4, 2, D), np.float32), None, raw=raw)
    with pytest.raises(
        ValueError,
        match=r"test_caps.txt: line 3: expected UTF-8 text, got byte "
        r"0xe9",
    ):
        load_corpus(str(tmp_path), "test")


def test_teran_only_options_are_refused_for_precomp(tmp_path):
    _write(tmp_path, "test", np.zeros((4, 2, D), np.float32), [f"c{i}" for i in range(20)])
    with pytest.raises(
        ValueError,
        match=r"holds a SCAN/VSE\+\+ precomp directory, which takes "
        r"the options .*got \['sizes'\]",
    ):
        load_corpus(str(tmp_path), "test", sizes="sizes.pkl")
