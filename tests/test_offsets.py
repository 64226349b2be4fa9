"""Issue 23, item 2: distances that lose no digits to an offset the embeddings share.

Every Euclidean-family loss depends on ``a - r`` only, so embeddings ``x + c`` (a bias, a
ReLU output) must give the loss and gradient of ``x``. The reference is the float64 NumPy
brute force (``reference_pairs``) at ``x32 - c`` computed exactly in float64: the float32
inputs as given, with the offset removed without rounding. What float32 may lose is then
its rounding of distances of order 1 (about 1e-7 relative per distance, summed over a
dozen rows): values are held to 1e-5 relative and gradients to 1e-4. Before the fix, at
offset 1000 the losses were off by 1e-2 and at 1e4 by 0.2-0.7 (``||a||^2 + ||r||^2 - 2 a.r``
in float32), and per-anchor mining chose the wrong indices.
"""

import functools

import numpy as np
import pytest

import reference_pairs as R
from backend import BACKEND, compiled_value_and_grad, to_numpy, value_and_grad
from triplet_tools import (
    MultiSimilarityLoss,
    PNLoss,
    SoftNearestNeighborLoss,
    TripletLoss,
    tfa,
    triplet_batch_all_loss,
)
from triplet_tools.distances import get

OFFSETS = [0.0, 10.0, 100.0, 1e3, 1e4]
VALUE_RTOL = 1e-5
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-5}

LABELS = np.tile(np.arange(4), 3)
SPREAD = np.random.default_rng(11).normal(size=(12, 4))

TRIPLET = {"distance_name": "euclidean"}
#: name -> (the loss, the reference's (L_a, c_a), the reference gradient's keywords)
CASES = {
    "batch-all": (
        lambda: triplet_batch_all_loss(metric="euclidean"),
        dict(TRIPLET, positive="all", negative="all", average="active"),
    ),
    "tfa-semi-hard": (
        lambda: tfa.TripletSemiHardLoss(),
        dict(TRIPLET, positive="all", negative="semi-hard"),
    ),
    "pn-all": (
        lambda: PNLoss(
            distance="euclidean", positive_mining_strategy="all", negative_mining_strategy="all"
        ),
        dict(TRIPLET, positive="all", negative="all", loss="pn"),
    ),
    "per-anchor-hard-sql2": (
        lambda: TripletLoss(distance="squared_euclidean", negative_mining_strategy="hard"),
        {"distance_name": "squared_euclidean", "positive": "hard", "negative": "hard"},
    ),
    "lifted-struct": (lambda: tfa.LiftedStructLoss(), ("lifted_struct", "euclidean")),
    "multi-similarity": (
        lambda: MultiSimilarityLoss(distance="euclidean"),
        ("multi_similarity", "euclidean"),
    ),
    "soft-nn": (
        lambda: SoftNearestNeighborLoss(distance="squared_euclidean"),
        ("soft_nearest_neighbor", "squared_euclidean"),
    ),
}


def _embeddings(offset):
    """``(float32 embeddings x + offset, the same values minus the offset in float64)``."""
    x32 = (SPREAD + offset).astype("float32")
    return x32, x32.astype("float64") - offset


@functools.cache
def _reference(name, offset):
    """``(per-anchor (L_a, c_a), reduced value, gradient)`` in float64."""
    _, exact = _embeddings(offset)
    spec = CASES[name][1]
    if isinstance(spec, tuple):
        kind, distance_name = spec
        per_anchor = R.PAIR_LOSSES[kind](LABELS, exact, distance_name=distance_name)
        gradient = R.pair_gradient(kind, LABELS, exact, distance_name=distance_name)
    else:
        per_anchor = R.triplet_per_anchor(LABELS, exact, **spec)
        gradient = R.triplet_gradient(LABELS, exact, **spec)
    return per_anchor, R.reduce(*per_anchor), gradient


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("name", list(CASES))
def test_offset_costs_no_digits(name, offset, engine_mode):
    x32, _ = _embeddings(offset)
    _, want, want_gradient = _reference(name, offset)
    loss = CASES[name][0]()
    value, gradient = value_and_grad(lambda x: loss(LABELS, x), x32)
    assert abs(float(value) - want) <= VALUE_RTOL * abs(want), (float(value), want)
    np.testing.assert_allclose(gradient, want_gradient, **GRAD_TOL)


@pytest.mark.skipif(BACKEND == "torch", reason="eager on torch: the test above")
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_offset_costs_no_digits(name, engine_mode):
    """Under XLA too: a compiler must not move anchors and references by differently
    rounded origins (a fused multiply-add in one of two copies of the mean's division put
    them 3e-4 apart at offset 1e4, off by 1.5e-4 in the gradient)."""
    x32, _ = _embeddings(1e4)
    _, want, want_gradient = _reference(name, 1e4)
    loss = CASES[name][0]()
    value, gradient = compiled_value_and_grad(lambda x: loss(LABELS, x), x32)
    assert abs(float(value) - want) <= VALUE_RTOL * abs(want), (float(value), want)
    np.testing.assert_allclose(gradient, want_gradient, **GRAD_TOL)


@pytest.mark.parametrize("offset", [1e3, 1e4])
@pytest.mark.parametrize("name", ["batch-all", "pn-all", "lifted-struct", "soft-nn"])
def test_offset_with_explicit_masked_references(name, offset):
    """References given apart from the anchors (a cross-batch memory, the global batch):
    the batch itself, plus empty memory slots at the origin that the mask leaves out (they
    must not pull the common origin away from the rows)."""
    x32, _ = _embeddings(offset)
    (totals, _), _, _ = _reference(name, offset)
    empty = np.zeros((5, x32.shape[1]), "float32")
    loss = CASES[name][0]()
    triplets = loss.anchor_triplets(
        LABELS,
        x32,
        references=np.concatenate([x32, empty]),
        reference_labels=np.concatenate([LABELS, np.zeros(5, LABELS.dtype)]),
        anchor_positions=np.arange(len(LABELS), dtype="int32"),
        reference_mask=np.arange(len(LABELS) + 5) < len(LABELS),
    )
    np.testing.assert_allclose(to_numpy(triplets.loss), totals, rtol=VALUE_RTOL, atol=1e-6)


@pytest.mark.parametrize("offset", [1e3, 1e4])
@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "euclidean_norm"])
def test_pairwise_under_an_offset(name, offset):
    """``Distance.pairwise`` (retrieval metrics rank with it) under a common offset, against
    float64; a non-finite row stays out of the origin and NaN only in its own entries."""
    x32, _ = _embeddings(offset)
    # Other rows than x's: at distance 0, sqrt turns the product form's 1e-7 into 3e-4
    # at any offset (0 included).
    y32 = (np.random.default_rng(12).normal(size=(9, 4)) + offset).astype("float32")
    y32[0] = np.nan
    got = to_numpy(get(name).pairwise(x32, y32))
    # As given, offset included: euclidean_norm is not translation-invariant.
    x64, y64 = x32.astype("float64"), y32.astype("float64")
    want = np.array([[R.distance(name, a, b) for b in y64] for a in x64])
    assert np.isnan(got[:, 0]).all()
    # euclidean_norm: the normalised rows themselves are rounded to 6e-8.
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-6)
