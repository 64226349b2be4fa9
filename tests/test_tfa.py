"""``triplet_tools.tfa``, the tensorflow-addons drop-in names (SPEC): the argument mapping,
the documented differences from tfa 0.23, configs and serialization. Expected values come
from the NumPy reference (reference_pairs.py), which tests/peers/ checks against tfa 0.23
itself."""

import keras
import numpy as np
import pytest

import reference_pairs as rp
from backend import compiled_value_and_grad, to_numpy, value_and_grad
from pair_support import GRAD_TOL, VALUE_TOL, batch, save_and_reload
from triplet_tools import TripletLoss
from triplet_tools.distances import Distance
from triplet_tools.tfa import (
    TripletHardLoss,
    TripletSemiHardLoss,
    triplet_hard_loss,
    triplet_semihard_loss,
)

METRICS = ["L2", "squared-L2", "angular"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
def test_semihard_matches_reference(metric, batch_kind):
    """Every positive pair, its own semi-hard negative, mean over the pairs; on the uneven
    batch the anchors without a positive are left out."""
    labels, x = batch(batch_kind)
    loss = TripletSemiHardLoss(margin=0.6, distance_metric=metric)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, rp.tfa_semihard_loss(labels, x, 0.6, metric), **VALUE_TOL)
    want_grad = rp.triplet_gradient(
        labels,
        x,
        distance_name=rp.TFA_DISTANCES[metric],
        positive="all",
        negative="semi-hard",
        margin=0.6,
    )
    np.testing.assert_allclose(grad, want_grad, **GRAD_TOL)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS)
def test_hard_matches_reference(metric, soft):
    """Hardest positive and negative; anchors without a positive are left out of the mean
    (tfa counts them)."""
    labels, x = batch("uneven")
    loss = TripletHardLoss(margin=0.6, soft=soft, distance_metric=metric)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, rp.tfa_hard_loss(labels, x, 0.6, soft, metric), **VALUE_TOL)
    want_grad = rp.triplet_gradient(
        labels,
        x,
        distance_name=rp.TFA_DISTANCES[metric],
        positive="hard",
        negative="hard",
        soft_margin=soft,
        margin=1.0 if soft else 0.6,
    )
    np.testing.assert_allclose(grad, want_grad, **GRAD_TOL)


def test_classes_equal_the_documented_triplet_losses():
    labels, x = batch("uneven")
    pairs = [
        (
            TripletSemiHardLoss(margin=0.7, distance_metric="squared-L2"),
            TripletLoss(
                distance="squared_euclidean",
                positive_mining_strategy="all",
                negative_mining_strategy="semi-hard",
                margin=0.7,
            ),
        ),
        (
            TripletHardLoss(margin=0.4, distance_metric="angular"),
            TripletLoss(distance="cosine", negative_mining_strategy="hard", margin=0.4),
        ),
        (
            TripletHardLoss(soft=True, distance_metric="L2"),
            TripletLoss(distance="euclidean", negative_mining_strategy="hard", soft_margin=True),
        ),
    ]
    for ours, documented in pairs:
        np.testing.assert_allclose(
            to_numpy(ours(labels, x)), to_numpy(documented(labels, x)), rtol=1e-6
        )


def test_defaults_are_tfa_defaults():
    """margin 1.0, L2, and for the hard loss soft=False."""
    labels, x = batch("full")
    np.testing.assert_allclose(
        to_numpy(TripletSemiHardLoss()(labels, x)), rp.tfa_semihard_loss(labels, x), **VALUE_TOL
    )
    np.testing.assert_allclose(
        to_numpy(TripletHardLoss()(labels, x)), rp.tfa_hard_loss(labels, x), **VALUE_TOL
    )
    assert TripletSemiHardLoss().name == "TripletSemiHardLoss"
    assert TripletHardLoss().name == "TripletHardLoss"


def test_functions_return_the_scalar():
    labels, x = batch("uneven")
    value = to_numpy(triplet_semihard_loss(labels, x, margin=0.5, distance_metric="angular"))
    assert value.shape == ()
    np.testing.assert_allclose(value, rp.tfa_semihard_loss(labels, x, 0.5, "angular"), **VALUE_TOL)
    value = to_numpy(
        triplet_hard_loss(labels, x, margin=0.5, soft=True, distance_metric="squared-L2")
    )
    assert value.shape == ()
    np.testing.assert_allclose(
        value, rp.tfa_hard_loss(labels, x, 0.5, True, "squared-L2"), **VALUE_TOL
    )
    np.testing.assert_allclose(
        to_numpy(triplet_semihard_loss(labels, x)), rp.tfa_semihard_loss(labels, x), **VALUE_TOL
    )


def test_compiled():
    labels, x = batch("uneven")
    loss = TripletSemiHardLoss(distance_metric="L2")
    value, grad = compiled_value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, rp.tfa_semihard_loss(labels, x), **VALUE_TOL)
    np.testing.assert_allclose(
        grad,
        rp.triplet_gradient(
            labels, x, distance_name="euclidean", positive="all", negative="semi-hard"
        ),
        **GRAD_TOL,
    )


@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0, 2.5])
def test_soft_accepts_any_margin_and_ignores_it(margin):
    """tfa's signature always carries a margin: no ValueError, and the value is the soft
    margin's whatever the margin."""
    labels, x = batch("uneven")
    loss = TripletHardLoss(margin=margin, soft=True)
    np.testing.assert_allclose(
        to_numpy(loss(labels, x)), rp.tfa_hard_loss(labels, x, margin, True), **VALUE_TOL
    )
    np.testing.assert_allclose(
        to_numpy(triplet_hard_loss(labels, x, margin, True)),
        rp.tfa_hard_loss(labels, x, margin, True),
        **VALUE_TOL,
    )


class _Chebyshev(Distance):
    """A user-defined distance: max |a - b|."""

    name = "chebyshev_tfa_test"

    def pairwise(self, x, y):
        return keras.ops.max(keras.ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)

    def paired(self, x, y):
        return keras.ops.max(keras.ops.abs(x - y), axis=-1)


def test_distance_metric_accepts_a_distance_instance():
    """Worked on the line (1-D, where Chebyshev is |a - b| = euclidean): the instance gives
    the L2 values."""
    labels, x = batch("uneven")
    line = x[:, :1]
    for cls in (TripletSemiHardLoss, TripletHardLoss):
        np.testing.assert_allclose(
            to_numpy(cls(distance_metric=_Chebyshev())(labels, line)),
            to_numpy(cls(distance_metric="L2")(labels, line)),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        to_numpy(TripletSemiHardLoss(distance_metric=_Chebyshev())(labels, line)),
        rp.tfa_semihard_loss(labels, line),
        **VALUE_TOL,
    )


@pytest.mark.parametrize("bad", ["cosine", "euclidean", "L1", 3])
def test_bad_distance_metric_lists_the_valid_ones(bad):
    """Our own names are not tfa's: the message names what was received and lists
    "L2", "squared-L2", "angular"."""
    for make in (
        lambda: TripletSemiHardLoss(distance_metric=bad),
        lambda: TripletHardLoss(distance_metric=bad),
    ):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert repr(bad) in message or str(bad) in message
        for name in METRICS:
            assert name in message


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 5], []], ids=["no-positive-pair", "empty"])
def test_no_positive_pair_gives_zero_not_nan(labels):
    """tfa #2447: tfa's semi-hard loss divides by the number of positive pairs, 0 here."""
    x = np.random.default_rng(4).normal(size=(len(labels), 3)).astype("float32")
    labels = np.array(labels, "int64")
    for loss in (TripletSemiHardLoss(), TripletHardLoss(), TripletHardLoss(soft=True)):
        value, grad = value_and_grad(lambda t, loss=loss: loss(labels, t), x)
        assert value == 0.0 and np.all(grad == 0.0)
    assert to_numpy(triplet_semihard_loss(labels, x)) == 0.0
    assert to_numpy(triplet_hard_loss(labels, x)) == 0.0


def test_class_ids_are_not_cast_to_float():
    labels = np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1, 2**31 - 1, 2**31 - 1], np.int64)
    x = np.random.default_rng(5).normal(size=(6, 3)).astype("float32")
    want = rp.tfa_semihard_loss(labels, x)
    assert not np.isclose(want, rp.tfa_semihard_loss(labels.astype(np.float32), x))
    np.testing.assert_allclose(to_numpy(TripletSemiHardLoss()(labels, x)), want, **VALUE_TOL)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    labels, x32 = batch("full")
    x = keras.ops.cast(x32, dtype)
    rounded = to_numpy(keras.ops.cast(x, "float32"))
    value, grad = value_and_grad(lambda t: TripletSemiHardLoss()(labels, t), x)
    np.testing.assert_allclose(
        np.float32(value), rp.tfa_semihard_loss(labels, rounded), rtol=1e-4, atol=1e-5
    )
    assert np.all(np.isfinite(grad.astype("float32")))


CONFIGS = [
    (TripletSemiHardLoss, {"margin": 0.3, "distance_metric": "angular"}),
    (TripletSemiHardLoss, {}),
    (TripletHardLoss, {"margin": 0.5, "soft": True, "distance_metric": "squared-L2"}),
    (TripletHardLoss, {"name": "hard"}),
]


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
def test_config_holds_tfa_names(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    assert config["margin"] == kwargs.get("margin", 1.0)
    assert config["distance_metric"] == kwargs.get("distance_metric", "L2")
    assert config["name"] == kwargs.get("name", cls.__name__)
    if cls is TripletHardLoss:
        assert config["soft"] == kwargs.get("soft", False)
    for ours in ("distance", "positive_mining_strategy", "negative_mining_strategy"):
        assert ours not in config
    clone = cls.from_config(config)
    assert type(clone) is cls and clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is cls and restored.get_config() == config
    labels, x = batch("uneven")
    np.testing.assert_allclose(to_numpy(restored(labels, x)), to_numpy(loss(labels, x)), rtol=1e-6)


def test_save_and_load_without_custom_objects(tmp_path):
    """In this process (test_pair_losses reloads every new loss in a fresh one)."""
    losses = [
        TripletSemiHardLoss(margin=0.4, distance_metric="angular"),
        TripletHardLoss(margin=0.2, soft=True),
    ]
    reloaded, expected = save_and_reload(tmp_path, losses)
    for loss, got, want in zip(losses, reloaded, expected):
        assert got["class"] == type(loss).__name__
        assert got["config"] == loss.get_config()
        np.testing.assert_allclose(got["value"], want, rtol=1e-5)
