"""write_array / read_array / append_array round trips on real zarr3 files."""

import ml_dtypes
import numpy as np
import pytest

from lateint.index import store


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.int64),
        np.zeros((0, 4), np.float32),
        np.array([[True, False, True], [False, False, True]]),
        np.linspace(-3, 3, 14).reshape(7, 2).astype(ml_dtypes.bfloat16),
        np.array(3.5),
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.random.default_rng(0).standard_normal((50_000, 8)).astype(np.float32),
    ],
    ids=["int64", "empty", "bool", "bfloat16", "scalar", "uint8_3d", "multi_chunk"],
)
def test_write_read_round_trip(tmp_path, array):
    store.write_array(str(tmp_path), "first_stage/concepts/centroids", array)
    result = store.read_array(str(tmp_path), "first_stage/concepts/centroids")
    assert result.dtype == array.dtype
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_overwrite_replaces_shape_and_dtype(tmp_path):
    store.write_array(str(tmp_path), "a", np.arange(100, dtype=np.int32))
    store.write_array(str(tmp_path), "a", np.ones((2, 2), np.float64))
    result = store.read_array(str(tmp_path), "a")
    assert result.dtype == np.float64 and result.shape == (2, 2)


def test_append_grows_axis_zero(tmp_path):
    directory = str(tmp_path)
    store.append_array(directory, "postings/ids", np.arange(3, dtype=np.int64))
    store.append_array(directory, "postings/ids", np.arange(0, dtype=np.int64))
    big = np.arange(70_000, dtype=np.int64)  # crosses an append chunk boundary
    store.append_array(directory, "postings/ids", big)
    np.testing.assert_array_equal(
        store.read_array(directory, "postings/ids"), np.concatenate([np.arange(3), big])
    )


def test_append_rejects_mismatch(tmp_path):
    directory = str(tmp_path)
    store.append_array(directory, "m", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"trailing shape expected \(3,\), got \(4,\)"):
        store.append_array(directory, "m", np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="dtype expected float32, got int32"):
        store.append_array(directory, "m", np.zeros((1, 3), np.int32))


def test_missing_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nothing/here' not found"):
        store.read_array(str(tmp_path), "nothing/here")
    for name in ["", "../escape", "a//b", "/abs"]:
        with pytest.raises(ValueError, match="array name"):
            store.write_array(str(tmp_path), name, np.zeros(2))
