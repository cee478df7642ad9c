"""Storage modes: float32 exact, bfloat16 and int8 within their stated error bounds."""

import numpy as np
import pytest

from lateint.index import codecs


def _activations(shape=(3, 5, 16), seed=0):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.01, 30, shape[:2])[..., None]  # regions of very different magnitude
    values = (rng.standard_normal(shape) * scales).astype(np.float32)
    values[0, 0] = 0.0  # an all-zero region must survive int8 (scale 0)
    return values


def test_float32_is_exact():
    values = _activations()
    encoded = codecs.encode(values, "float32")
    assert set(encoded) == {"activations"} and encoded["activations"].dtype == np.float32
    np.testing.assert_array_equal(codecs.decode(encoded["activations"], "float32"), values)


def test_bfloat16_relative_error_bound():
    values = _activations()
    encoded = codecs.encode(values, "bfloat16")
    assert encoded["activations"].dtype.name == "bfloat16"
    decoded = codecs.decode(encoded["activations"], "bfloat16")
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    bound = np.abs(values) * 2.0**-8  # 8 significand bits: half an ulp is <= 2**-8 relative
    assert np.all(np.abs(decoded - values) <= bound)
    assert np.abs(decoded - values).max() > 0  # really lossy: the test can tell modes apart


def test_int8_per_region_error_bound():
    values = _activations()
    encoded = codecs.encode(values, "int8")
    assert encoded["activations"].dtype == np.int8
    assert encoded["activation_scale"].shape == values.shape[:2]
    assert encoded["activation_scale"].dtype == np.float32
    assert np.abs(encoded["activations"].astype(int)).max() <= 127
    decoded = codecs.decode(encoded["activations"], "int8", encoded["activation_scale"])
    per_region_max = np.abs(values).max(axis=-1, keepdims=True)
    assert np.all(np.abs(decoded - values) <= per_region_max / 254 * (1 + 1e-5) + 1e-12)
    np.testing.assert_array_equal(decoded[0, 0], 0.0)


def test_any_width_is_stored():  # learned compression: the model hands over H' < H
    values = _activations((2, 4, 7))
    per_region_max = np.abs(values).max(axis=-1, keepdims=True)
    bounds = {
        "float32": np.zeros_like(values),
        "bfloat16": np.abs(values) * 2.0**-8,
        "int8": per_region_max / 254 * (1 + 1e-5) + 1e-12,
    }
    assert set(bounds) == set(codecs.STORAGE_DTYPES)
    for mode, bound in bounds.items():
        encoded = codecs.encode(values, mode)
        assert encoded["activations"].shape == (2, 4, 7)
        decoded = codecs.decode(encoded["activations"], mode, encoded.get("activation_scale"))
        assert decoded.shape == (2, 4, 7) and decoded.dtype == np.float32
        assert np.all(np.abs(decoded - values) <= bound), mode


def test_bytes_per_region():
    assert codecs.bytes_per_region("float32", 384) == 1536
    assert codecs.bytes_per_region("bfloat16", 384) == 768
    assert codecs.bytes_per_region("int8", 384) == 388
    assert codecs.bytes_per_region("int8", 64) == 68


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"one of \['float32', 'bfloat16', 'int8'\], got 'fp8'"):
        codecs.encode(_activations(), "fp8")
    with pytest.raises(ValueError, match=r"\[B, R, H'\], got shape \(5, 16\)"):
        codecs.encode(np.zeros((5, 16), np.float32), "int8")
    with pytest.raises(ValueError, match="NaN or Inf"):
        codecs.encode(np.full((1, 1, 2), np.nan, np.float32), "bfloat16")
    with pytest.raises(ValueError, match="needs activation_scale"):
        codecs.decode(np.zeros((1, 1, 2), np.int8), "int8")
