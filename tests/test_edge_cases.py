"""SPEC's edge cases: each must give the reference value with finite gradients."""

import keras
import numpy as np
import pytest

import reference as ref
from backend import BACKEND, to_numpy, value_and_grad
from test_losses import KINDS
from triplet_tools import PNLoss, TripletLoss
from triplet_tools.distances import DISTANCE_NAMES

# Under PyTorch, each test runs with both eager miners (see conftest.py).
pytestmark = pytest.mark.usefixtures("each_torch_miner")

ALL_LOSSES = [("triplet", {"distance": d}) for d in DISTANCE_NAMES] + [
    ("pn", {"distance": "euclidean", "soft_margin": True}),
    ("priming", {"distance": "cosine"}),
]


def _finite(*arrays):
    return all(np.all(np.isfinite(a)) for a in arrays)


@pytest.mark.parametrize(
    "labels", [[0, 1, 2, 3, 4, 5], [7, 7, 7, 7, 7, 7]], ids=["no-positives", "one-class"]
)
@pytest.mark.parametrize("kind,kwargs", ALL_LOSSES)
def test_no_valid_anchor_gives_exact_zero_and_zero_gradient(labels, kind, kwargs):
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    value, grad = value_and_grad(lambda t: KINDS[kind](**kwargs)(np.array(labels), t), x)
    assert value == 0.0
    assert np.all(grad == 0.0)


@pytest.mark.parametrize("kind,kwargs", ALL_LOSSES)
def test_empty_batch_gives_exact_zero(kind, kwargs):
    """Zero rows (say, an empty last batch): no valid anchor, so the loss is exactly 0."""
    x = np.zeros((0, 4), "float32")
    value, grad = value_and_grad(lambda t: KINDS[kind](**kwargs)(np.zeros((0,), "int32"), t), x)
    assert value == 0.0 and grad.shape == (0, 4)
    assert to_numpy(KINDS[kind](reduction="none", **kwargs)([], x)).shape == (0,)


@pytest.mark.parametrize("kind,kwargs", ALL_LOSSES)
def test_duplicate_embeddings(kind, kwargs):
    """Rows 0/1 and 2/3 are exact duplicates, within and across classes: zero distances and
    ties. The result must be one of the values a tied choice gives, with finite gradients."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 3)).astype("float32")
    x = np.concatenate([base[:1], base[:1], base[1:2], base[1:2], base[2:]])
    labels = np.array([0, 0, 0, 1, 1, 2])
    loss = KINDS[kind](reduction="none", **kwargs)
    got = to_numpy(loss(labels, x))
    ref_kwargs = dict(kwargs)
    ref_kwargs["distance_name"] = ref_kwargs.pop("distance")
    rows = ref.anchor_options(labels, x, loss=kind, tie_tol=1e-6, **ref_kwargs)
    for value, (options, _, _) in zip(got, rows):
        assert np.min(np.abs(np.array(options) - value)) < 1e-4, (value, options)
    _, grad = value_and_grad(lambda t: KINDS[kind](**kwargs)(labels, t), x)
    assert _finite(grad)


@pytest.mark.parametrize("kind,kwargs", ALL_LOSSES)
def test_all_zero_embeddings(kind, kwargs):
    """Every distance is 0 except for the normalised ones, where the zero vector stays
    zero: cosine gives 1 - 0 = 1 and euclidean_norm ||0 - 0|| = 0 for every pair."""
    x = np.zeros((6, 4), "float32")
    labels = np.array([0, 0, 1, 1, 2, 2])
    ref_kwargs = dict(kwargs)
    ref_kwargs["distance_name"] = ref_kwargs.pop("distance")
    rows = ref.anchor_options(labels, x, loss=kind, **ref_kwargs)
    want = np.mean([r[0][0] for r in rows])
    value, grad = value_and_grad(lambda t: KINDS[kind](**kwargs)(labels, t), x)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    assert _finite(value, grad)


@pytest.mark.parametrize("gap", [1e3, -1e3, 1e4, -1e4])
def test_soft_margin_extreme_distances(gap):
    """Euclidean distances of order 1e3-1e4: softplus(d_ap - d_an) must stay finite.

    Anchor at 0; positive at |gap| if gap > 0 else at 1; negative at 1 if gap > 0 else at
    |gap| + 1. With hard/hard mining, anchor 0 gets d_ap - d_an = gap - 1 (or ~ gap).
    """
    far = abs(gap)
    if gap > 0:
        x = np.array([[0.0], [far], [1.0], [2.0]], "float32")
    else:
        x = np.array([[0.0], [1.0], [far + 1.0], [far + 2.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    kwargs = {"distance": "euclidean", "negative_mining_strategy": "hard", "soft_margin": True}
    value, grad = value_and_grad(lambda t: TripletLoss(**kwargs)(labels, t), x)
    want = ref.loss_value(labels, x, distance_name="euclidean", negative="hard", soft_margin=True)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert _finite(value, grad)


def test_labels_above_2_pow_24_stay_distinct():
    """Ids 2**24 and 2**24 + 1 are one float32 value; as int64 they must stay two classes.
    Merged, every anchor would have three positives and the loss would differ."""
    labels = np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1, 2**31 - 1, 2**31 - 1], np.int64)
    x = np.random.default_rng(5).normal(size=(6, 3)).astype("float32")
    loss = TripletLoss(distance="euclidean", reduction="none")
    want = ref.per_anchor(labels, x, distance_name="euclidean")[0]
    merged = ref.per_anchor(labels.astype(np.float32), x, distance_name="euclidean")[0]
    assert not np.allclose(want, merged), "the test data must tell merged ids apart"
    np.testing.assert_allclose(to_numpy(loss(labels, x)), want, rtol=1e-5)
    np.testing.assert_allclose(
        to_numpy(loss(keras.ops.convert_to_tensor(labels), x)), want, rtol=1e-5
    )


def test_labels_as_column_and_as_floats():
    labels = np.array([0, 0, 1, 1, 2, 2])
    x = np.random.default_rng(6).normal(size=(6, 3)).astype("float32")
    loss = PNLoss()
    want = ref.loss_value(labels, x, loss="pn")
    for variant in (labels[:, None], labels.astype("float32"), labels.astype("float64")[:, None]):
        np.testing.assert_allclose(to_numpy(loss(variant, x)), want, rtol=1e-5)
    float_tensor = keras.ops.convert_to_tensor(labels.astype("float32"))
    np.testing.assert_allclose(to_numpy(loss(float_tensor, x)), want, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind,kwargs", ALL_LOSSES)
def test_half_precision_inputs(dtype, kind, kwargs):
    """Half-precision embeddings are computed in float32: value of the rounded inputs,
    finite gradients of the input dtype."""
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    x32 = np.random.default_rng(8).normal(size=(7, 4)).astype("float32")
    x = keras.ops.cast(x32, dtype)
    rounded = to_numpy(keras.ops.cast(x, "float32"))
    ref_kwargs = dict(kwargs)
    ref_kwargs["distance_name"] = ref_kwargs.pop("distance")
    want = ref.loss_value(labels, rounded, loss=kind, **ref_kwargs)
    value, grad = value_and_grad(lambda t: KINDS[kind](**kwargs)(labels, t), x)
    np.testing.assert_allclose(np.float32(value), want, rtol=1e-4, atol=1e-5)
    assert _finite(np.float32(value), grad.astype("float32"))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("row", [0, 6], ids=["valid-anchor", "invalid-anchor"])
def test_nan_and_inf_propagate(bad, row):
    """A bad value anywhere in the embeddings reaches the loss, even in an anchor that has
    no positive (row 6) and would otherwise be left out."""
    labels = np.array([0, 0, 1, 1, 2, 2, 9])
    x = np.random.default_rng(9).normal(size=(7, 3)).astype("float32")
    x[row, 1] = bad
    for reduction in ("sum_over_batch_size", "sum"):
        assert np.isnan(to_numpy(TripletLoss(reduction=reduction)(labels, x)))
    assert np.isnan(to_numpy(TripletLoss(reduction="none")(labels, x))[row])


def test_nan_propagates_when_no_anchor_is_valid():
    x = np.ones((3, 2), "float32")
    x[1, 0] = np.nan
    assert np.isnan(to_numpy(TripletLoss()(np.array([0, 1, 2]), x)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data shapes with unknown batch size")
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    loss = TripletLoss(distance="euclidean")
    fn = tf.function(
        lambda y, x: loss(y, x),
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 3], tf.float32)],
    )
    labels = np.array([0, 0, 1, 1, 2])
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(fn(labels, x)), ref.loss_value(labels, x, distance_name="euclidean"), rtol=1e-5
    )
