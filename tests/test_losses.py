"""Every loss x distance x strategy x margin type against the NumPy brute-force reference."""

import itertools

import numpy as np
import pytest

import reference as ref
from backend import BACKEND, compiled_value_and_grad, to_numpy, value_and_grad
from triplet_tools import PNLoss, PrimingLoss, TripletLoss
from triplet_tools.distances import DISTANCE_NAMES

# Under PyTorch, each test runs with both eager miners (see conftest.py).
pytestmark = pytest.mark.usefixtures("each_torch_miner")

KINDS = {"triplet": TripletLoss, "pn": PNLoss, "priming": PrimingLoss}


def configurations():
    """(kind, library kwargs, reference kwargs) for every combination SPEC defines."""
    for kind, distance in itertools.product(KINDS, DISTANCE_NAMES):
        if kind == "priming":
            yield kind, {"distance": distance}, {"loss": kind, "distance_name": distance}
            continue
        for positive, negative, soft in itertools.product(
            ("hard", "easy"), ("hard", "semi-hard", "easy"), (False, True)
        ):
            yield (
                kind,
                (
                    {
                        "distance": distance,
                        "positive_mining_strategy": positive,
                        "negative_mining_strategy": negative,
                        "soft_margin": soft,
                    }
                ),
                (
                    {
                        "loss": kind,
                        "distance_name": distance,
                        "positive": positive,
                        "negative": negative,
                        "soft_margin": soft,
                    }
                ),
            )


CONFIGURATIONS = list(configurations())


def batch(kind):
    """Random batches: 'full' has 4 classes x 3; 'invalid' adds anchors without a positive."""
    rng = np.random.default_rng(7)
    if kind == "full":
        labels = np.repeat(np.arange(4), 3)
    else:
        labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 4, 5])
    return labels, rng.normal(size=(len(labels), 5)).astype("float32")


@pytest.mark.parametrize("batch_kind", ["full", "invalid"])
def test_every_configuration_matches_reference_value_and_gradient(batch_kind):
    labels, x = batch(batch_kind)
    failures = []
    for kind, kwargs, ref_kwargs in CONFIGURATIONS:
        loss = KINDS[kind](**kwargs)
        value, grad = value_and_grad(lambda t: loss(labels, t), x)
        want = ref.loss_value(labels, x.astype(np.float64), **ref_kwargs)
        want_grad = ref.numerical_gradient(labels, x, **ref_kwargs)
        if not np.isclose(value, want, rtol=1e-5, atol=1e-5):
            failures.append((kind, kwargs, "value", float(value), want))
        if not np.allclose(grad, want_grad, rtol=1e-3, atol=2e-5):
            failures.append((kind, kwargs, "grad", float(np.abs(grad - want_grad).max())))
    assert not failures, failures


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("distance", ["euclidean_norm", "squared_euclidean", "cosine", "manhattan"])
def test_compiled_matches_reference(kind, distance):
    """Value and gradient inside tf.function(jit_compile=True) / jax.jit."""
    labels, x = batch("invalid")
    negative = "semi-hard" if kind != "priming" else None
    kwargs = {"distance": distance}
    ref_kwargs = {"loss": kind, "distance_name": distance}
    if negative:
        kwargs["negative_mining_strategy"] = ref_kwargs["negative"] = negative
    loss = KINDS[kind](**kwargs)
    value, grad = compiled_value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, ref.loss_value(labels, x, **ref_kwargs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        grad, ref.numerical_gradient(labels, x, **ref_kwargs), rtol=1e-3, atol=2e-5
    )


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is PyTorch's compiler")
def test_torch_compile_matches_reference():
    """The loss under ``torch.compile`` (what Keras' ``jit_compile=True`` uses on torch),
    once per eager miner (the label-sorted one breaks the graph at its data-dependent
    widths); gradient by autograd through the compiled graph."""
    import torch

    labels, x = batch("invalid")
    ref_kwargs = {"loss": "triplet", "distance_name": "cosine", "negative": "semi-hard"}
    loss = torch.compile(TripletLoss(distance="cosine"))
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, ref.loss_value(labels, x, **ref_kwargs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        grad, ref.numerical_gradient(labels, x, **ref_kwargs), rtol=1e-3, atol=2e-5
    )


def test_semi_hard_fallback_uses_farthest_negative():
    """Class 0 is spread out and class 1 sits between its members, so for the anchors of
    class 0 no negative lies beyond the hardest positive: S(a) is empty and SPEC falls back
    to the farthest negative (triplet-tools 0.2.3 gave these anchors 0)."""
    labels = np.array([0, 0, 1, 1, 1])
    x = np.array([[-5.0, 0], [5.0, 0], [0.0, 0.1], [0.5, 0], [-0.5, 0.2]], "float32")
    rows = ref.anchor_options(labels, x, distance_name="euclidean", negative="semi-hard")
    assert rows[0][2] and rows[1][2], "the batch must exercise the fallback"
    loss = TripletLoss(distance="euclidean", reduction="none")
    np.testing.assert_allclose(
        to_numpy(loss(labels, x)),
        ref.per_anchor(labels, x, distance_name="euclidean", negative="semi-hard")[0],
        rtol=1e-6,
    )
    # Anchor 0 at (-5, 0): d_ap = 10; the farthest negative is (0.5, 0) at 5.5 -> 10 - 5.5 + 1.
    np.testing.assert_allclose(to_numpy(loss(labels, x))[0], 5.5, rtol=1e-6)


@pytest.mark.parametrize("semi_margin", [-0.3, 0.2, 0.7])
@pytest.mark.parametrize("distance", DISTANCE_NAMES[:5])
def test_semi_margin_shifts_the_semi_hard_boundary(semi_margin, distance):
    labels, x = batch("full")
    for kind in ("triplet", "pn"):
        loss = KINDS[kind](distance=distance, semi_margin=semi_margin, margin=0.5, reduction="none")
        want = ref.per_anchor(
            labels, x, loss=kind, distance_name=distance, semi_margin=semi_margin, margin=0.5
        )[0]
        np.testing.assert_allclose(to_numpy(loss(labels, x)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("margin", [0.0, 0.2, 2.5])
def test_margin(margin):
    labels, x = batch("invalid")
    loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard", margin=margin)
    want = ref.loss_value(labels, x, distance_name="euclidean", negative="hard", margin=margin)
    np.testing.assert_allclose(to_numpy(loss(labels, x)), want, rtol=1e-5)


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "sum", "none", "mean", "mean_with_sample_weight", None]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_reductions_and_sample_weight(reduction, weighted):
    labels, x = batch("invalid")
    weights = np.linspace(0.5, 2.0, len(labels)).astype("float32") if weighted else None
    loss = TripletLoss(distance="euclidean_norm", reduction=reduction)
    losses, valid = ref.per_anchor(labels, x, distance_name="euclidean_norm")
    want = ref.reduce(losses, valid, weights, reduction)
    got = to_numpy(loss(labels, x, sample_weight=weights))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The default divides by the number of valid anchors, not by the batch size.
    if reduction == "sum_over_batch_size" and not weighted:
        assert valid.sum() < len(labels)
        np.testing.assert_allclose(got, losses.sum() / valid.sum(), rtol=1e-5)


def test_sample_weight_column_and_gradient():
    labels, x = batch("full")
    weights = np.arange(1, len(labels) + 1, dtype="float32")
    loss = PNLoss(distance="euclidean")
    value, grad = value_and_grad(lambda t: loss(labels, t, sample_weight=weights[:, None]), x)
    kwargs = {"loss": "pn", "distance_name": "euclidean"}
    np.testing.assert_allclose(value, ref.loss_value(labels, x, weights, **kwargs), rtol=1e-5)
    want_grad = ref.numerical_gradient(labels, x, sample_weight=weights, **kwargs)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-3, atol=1e-4)


def test_call_returns_per_anchor_losses():
    labels, x = batch("invalid")
    loss = TripletLoss()
    losses, _ = ref.per_anchor(labels, x)
    np.testing.assert_allclose(to_numpy(loss.call(labels, x)), losses, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX runs float64 only with jax_enable_x64")
@pytest.mark.parametrize("distance", DISTANCE_NAMES[:5])
def test_float64_is_computed_in_float64(distance):
    """Every step stays in float64, the normalisation of cosine / euclidean_norm included
    (Keras 3.15's torch ``maximum(float64, scalar)`` returns float32)."""
    labels, x = batch("full")
    x = x.astype(np.float64)
    loss = TripletLoss(distance=distance, margin=0.5, dtype="float64")
    value = to_numpy(loss(labels, x))
    assert value.dtype == np.float64
    want = ref.loss_value(labels, x, distance_name=distance, margin=0.5)
    # float32 anywhere would be off by ~1e-7 of the value; float64 by far less than 1e-10.
    np.testing.assert_allclose(value, want, rtol=1e-10)


def test_hand_worked_batch_hard():
    """Four points on a line, classes {0: 0, 1}, {1: 3, 5}, Euclidean, margin 1, hard/hard.

    anchor 0 (x=0): p*=1 (d=1), n*=3 (d=3): max(1 - 3 + 1, 0) = 0
    anchor 1 (x=1): p*=0 (d=1), n*=3 (d=2): max(1 - 2 + 1, 0) = 0
    anchor 3 (x=3): p*=5 (d=2), n*=1 (d=2): max(2 - 2 + 1, 0) = 1
    anchor 5 (x=5): p*=3 (d=2), n*=1 (d=4): max(2 - 4 + 1, 0) = 0
    mean over 4 valid anchors = 0.25
    """
    loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard")
    x = np.array([[0.0], [1.0], [3.0], [5.0]], "float32")
    np.testing.assert_allclose(to_numpy(loss([0, 0, 1, 1], x)), 0.25, rtol=1e-6)


def test_hand_worked_semi_hard_and_invalid_anchor():
    """Points 0, 2 (class 0), 1, 4 (class 1), 10 (class 2, alone), Euclidean, margin 1.

    anchor 0: p*=2 (d=2); negatives 1 (d=1), 4 (d=4), 10 (d=10); semi-hard: d > 2 -> n*=4:
              max(2 - 4 + 1, 0) = 0
    anchor 2: p*=0 (d=2); negatives 1 (d=1), 4 (d=2), 10 (d=8); d > 2 -> n*=10: 2 - 8 + 1 -> 0
    anchor 1: p*=4 (d=3); negatives 0 (d=1), 2 (d=1), 10 (d=9); d > 3 -> n*=10: 3 - 9 + 1 -> 0
    anchor 4: p*=1 (d=3); negatives 0 (d=4), 2 (d=2), 10 (d=6); d > 3 -> n*=0: 3 - 4 + 1 = 0
    anchor 10: no positive -> invalid, excluded.
    With margin 2 instead: anchors 0, 2, 1, 4 give 0, 0, 0, 1 -> mean 1/4 = 0.25.
    """
    x = np.array([[0.0], [2.0], [1.0], [4.0], [10.0]], "float32")
    labels = [0, 0, 1, 1, 2]
    loss = TripletLoss(distance="euclidean", reduction="none")
    np.testing.assert_allclose(to_numpy(loss(labels, x)), [0, 0, 0, 0, 0], atol=1e-6)
    loss2 = TripletLoss(distance="euclidean", margin=2.0)
    np.testing.assert_allclose(to_numpy(loss2(labels, x)), 0.25, rtol=1e-6)


def test_hand_worked_pn_and_priming():
    """Points 0, 2 (class 0) and 2.5, 9 (class 1), Euclidean, hard/hard.

    PN, anchor 0: d_ap = 2, n* = 2.5: d(a, n*) = 2.5, d(p*, n*) = 0.5 -> d_an = 0.5:
        max(2 - 0.5 + 1, 0) = 2.5
    Priming, anchor 0: d_ap^2 + exp(-10 d(a, n*)) = 4 + exp(-25)
    """
    x = np.array([[0.0], [2.0], [2.5], [9.0]], "float32")
    pn = PNLoss(distance="euclidean", negative_mining_strategy="hard", reduction="none")
    assert np.isclose(to_numpy(pn([0, 0, 1, 1], x))[0], 2.5)
    priming = PrimingLoss(distance="euclidean", reduction="none")
    assert np.isclose(to_numpy(priming([0, 0, 1, 1], x))[0], 4 + np.exp(-25.0))
