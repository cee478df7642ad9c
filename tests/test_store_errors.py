"""A missing or corrupt chunk file is an error naming the array and the image range."""

import os

import numpy as np
import pytest

from lateint.index import store
from lateint.index.store import ActivationStore

N, R, H, C, SHARD = 20, 3, 4, 2, 8


def _build(directory):
    rng = np.random.default_rng(0)
    writer = ActivationStore.create(
        str(directory),
        image_ids=[str(i) for i in range(N)],
        regions=R,
        hidden=H,
        concept_dim=C,
        model_fingerprint="fp",
        split_layer=1,
        storage_dtype="int8",
        shard_rows=SHARD,
    )
    writer.write_batch(
        0,
        {
            "activations": rng.standard_normal((N, R, H)).astype(np.float32),
            "region_mask": np.zeros((N, R), bool),  # all fill value: must still be written
            "concepts": rng.standard_normal((N, R, C)).astype(np.float32),
            "global": rng.standard_normal((N, C)).astype(np.float32),
        },
    )
    writer.mark_completed(0, N)
    writer.finalize()


def _shard_file(directory, array, shard):
    path = os.path.join(
        directory,
        array,
        "c",
        str(shard),
        *["0"] * (2 if array in ("activations", "concepts") else 1),
    )
    assert os.path.isfile(path), path
    return path


def _flip_byte(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_missing_shard_file(tmp_path):
    _build(tmp_path)
    os.remove(_shard_file(tmp_path, "activations", 1))
    reader = ActivationStore.open(str(tmp_path))
    reader.gather([0, 7, 16, 19])  # other shards still read
    with pytest.raises(
        OSError,
        match=r"array 'activations' .* images \[8, 16\) .* first bad "
        r"image 9.*NOT_FOUND",
    ):
        reader.gather([0, 9, 12])


def test_missing_mask_file_is_not_read_as_zeros(tmp_path):
    _build(tmp_path)
    os.remove(_shard_file(tmp_path, "region_mask", 2))
    reader = ActivationStore.open(str(tmp_path))
    with pytest.raises(OSError, match=r"array 'region_mask' .* images \[16, 20\)"):
        reader.read_region_mask(0, N)


def test_corrupt_row_inside_shard(tmp_path):
    _build(tmp_path)
    row_bytes = R * C * 4 + 4  # each inner chunk is one image's row + its crc32c
    _flip_byte(_shard_file(tmp_path, "concepts", 0), 3 * row_bytes + 5)  # inside image 3
    reader = ActivationStore.open(str(tmp_path))
    np.testing.assert_equal(reader.gather_concepts([2, 4])[0].shape, (2, R, C))
    with pytest.raises(
        OSError,
        match=r"array 'concepts' .* images \[0, 8\) .* first bad image 3"
        r".*DATA_LOSS",
    ):
        reader.read_concepts(0, 10)


def test_corrupt_shard_index(tmp_path):
    _build(tmp_path)
    path = _shard_file(tmp_path, "activation_scale", 1)
    _flip_byte(path, os.path.getsize(path) - 6)  # the index sits at the end of the shard file
    reader = ActivationStore.open(str(tmp_path))
    with pytest.raises(OSError, match=r"array 'activation_scale' .* images \[8, 16\).*DATA_LOSS"):
        reader.gather([10])


def test_corrupt_dense_array_chunk(tmp_path):
    store.write_array(str(tmp_path), "first_stage/postings", np.arange(100, dtype=np.int64))
    _flip_byte(os.path.join(tmp_path, "first_stage", "postings", "c", "0"), 17)
    with pytest.raises(OSError, match=r"'first_stage/postings' .* failed.*DATA_LOSS"):
        store.read_array(str(tmp_path), "first_stage/postings")
