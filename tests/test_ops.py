"""``triplet_tools._ops.ops``: under torch, its shortcuts give what ``keras.ops`` gives."""

import keras
import numpy as np
import pytest

from backend import to_numpy
from triplet_tools._ops import ops

F32 = np.array([[1.5, -2.0, 0.0], [np.nan, 4.0, -0.5]], "float32")
F64 = F32.astype("float64")
MASK = np.array([[True, False, True], [False, True, True]])
INDICES = np.array([1, 0, 1], "int32")


def _cases():
    t32, t64, mask = (keras.ops.convert_to_tensor(a) for a in (F32, F64, MASK))
    return [
        ("convert_to_tensor", (t32,), {}),
        ("convert_to_tensor", (F64,), {}),
        ("convert_to_tensor", (t32, "float64"), {}),
        ("cast", (t32, "float64"), {}),
        ("cast", (mask, "float32"), {}),
        ("cast", (mask, t64.dtype), {}),
        ("cast", (F32, "int32"), {}),
        ("stop_gradient", (t32,), {}),
        ("take", (t32, keras.ops.convert_to_tensor(INDICES[:2])), {"axis": 0}),
        ("take", (F32, INDICES[:2]), {"axis": 0}),
        ("take", (t32, INDICES), {"axis": 1}),
        ("where", (mask, t32, 0), {}),
        ("where", (mask, 1, t64), {}),
        ("where", (mask, t32, t64), {}),
        ("where", (MASK, F32, F64), {}),
        ("where", (mask, 0.5, 2), {}),
        ("sum", (t32,), {}),
        ("sum", (t64,), {"axis": 1}),
        ("sum", (t32,), {"axis": -1, "keepdims": True}),
        ("sum", (mask,), {"axis": 0}),
        ("maximum", (t32, 0), {}),
        ("maximum", (t32, t32), {}),
        ("maximum", (F32, 1), {}),
        ("square", (t32,), {}),
        ("square", (F64,), {}),
        ("rsqrt", (keras.ops.abs(t32),), {}),
        ("relu", (t32,), {}),
        ("relu", (F64,), {}),
        ("abs", (t32,), {}),
        ("max", (t64,), {"axis": -1, "keepdims": True}),
        ("max", (t32,), {"axis": 0}),
        ("sqrt", (keras.ops.abs(t64),), {}),
        ("isfinite", (t32,), {}),
        ("all", (mask,), {"axis": -1}),
        ("all", (mask,), {"axis": 0, "keepdims": True}),
        ("ones_like", (t64,), {}),
        ("matmul", (keras.ops.abs(t32), keras.ops.transpose(t32)), {}),
        ("matmul", (t32, keras.ops.convert_to_tensor(INDICES, "float32")), {}),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_same_values_and_dtypes_as_keras_ops(case):
    name, args, kwargs = _cases()[case]
    got, want = getattr(ops, name)(*args, **kwargs), getattr(keras.ops, name)(*args, **kwargs)
    assert keras.backend.standardize_dtype(got.dtype) == keras.backend.standardize_dtype(
        want.dtype
    ), name
    np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


def test_maximum_with_a_scalar_keeps_float64():
    """Keras 3.15's torch ``maximum(float64 tensor, 1e-12)`` returns float32 (TensorFlow
    keeps float64); ours keeps float64, so float64 losses normalise in float64."""
    got = ops.maximum(keras.ops.convert_to_tensor(F64), 1e-12)
    if keras.backend.backend() != "jax":  # JAX runs in float32 unless x64 is enabled
        assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_array_equal(to_numpy(got), np.maximum(F64, 1e-12).astype(to_numpy(got).dtype))


def test_matmul_keeps_float64():
    """Keras 3.15's torch ``matmul`` of two float64 tensors computes in float32; ours in
    float64, so the pair engine's gradient products keep a float64 loss exact."""
    x = np.random.default_rng(0).normal(size=(4, 3)) * (1 + 1e-9)
    got = ops.matmul(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(x.T))
    if keras.backend.backend() != "jax":  # JAX runs in float32 unless x64 is enabled
        assert keras.backend.standardize_dtype(got.dtype) == "float64"
        np.testing.assert_allclose(to_numpy(got), x @ x.T, rtol=1e-13)


def test_other_names_fall_through_to_keras_ops():
    assert ops.einsum is keras.ops.einsum and ops.arange is keras.ops.arange
