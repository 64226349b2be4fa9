"""Pair-level mining (SPEC, "Every pair, every triplet"): ``positive_mining_strategy="all"``,
``negative_mining_strategy="all"``, ``average``, the per-anchor ``L_a`` / ``c_a`` reductions
and ``triplet_batch_all_loss``, against the NumPy brute-force reference (reference_pairs.py)
and hand-worked batches.

The random batches hold continuous data, so ties have probability 0; the reference refuses
any decision within 1e-5 of a tie (see reference_pairs.py), so the seeds below are ones on
which float32 and float64 must take the same decisions.
"""

import itertools

import keras
import numpy as np
import pytest

import reference_pairs as rp
from backend import (
    BACKEND,
    COMPILE_IDS,
    COMPILE_MODES,
    compiled,
    compiled_value_and_grad,
    to_numpy,
    value_and_grad,
)
from pair_support import GRAD_TOL, VALUE_TOL, batch, save_and_reload
from triplet_tools import PNLoss, PrimingLoss, TripletLoss, triplet_batch_all_loss
from triplet_tools import losses as losses_module

DISTANCES = ("euclidean_norm", "euclidean", "squared_euclidean", "cosine", "manhattan")
KINDS = {"triplet": TripletLoss, "pn": PNLoss}


def configurations():
    """(kind, library kwargs, reference kwargs): every combination SPEC's last part adds.

    Each of the six strategy pairs that involve "all", for both losses, hinge and soft,
    ``average`` "valid" and "active"; and the per-anchor strategy pairs with
    ``average="active"`` (hinge; with the soft margin "active" is "valid", covered above).
    The distance cycles through the five so that every one meets several strategies.
    """
    combos = []
    for kind, positive, negative in itertools.product(
        KINDS, rp.POSITIVE_STRATEGIES, rp.NEGATIVE_STRATEGIES
    ):
        if "all" in (positive, negative):
            for soft, average in itertools.product((False, True), ("valid", "active")):
                combos.append((kind, positive, negative, soft, average))
        else:
            combos.append((kind, positive, negative, False, "active"))
    for i, (kind, positive, negative, soft, average) in enumerate(combos):
        distance = DISTANCES[i % len(DISTANCES)]
        yield (
            kind,
            (
                {
                    "distance": distance,
                    "positive_mining_strategy": positive,
                    "negative_mining_strategy": negative,
                    "soft_margin": soft,
                    "average": average,
                }
            ),
            (
                {
                    "loss": kind,
                    "distance_name": distance,
                    "positive": positive,
                    "negative": negative,
                    "soft_margin": soft,
                    "average": average,
                }
            ),
        )


CONFIGURATIONS = list(configurations())

#: A few configurations that stand for the new engine in the slower tests.
BATCH_ALL = (
    "triplet",
    {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "all",
        "average": "active",
    },
)
TFA_SEMI_HARD = (
    "triplet",
    {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "semi-hard",
    },
)
REPRESENTATIVE = [
    BATCH_ALL,
    TFA_SEMI_HARD,
    (
        "triplet",
        {
            "distance": "cosine",
            "positive_mining_strategy": "hard",
            "negative_mining_strategy": "all",
            "average": "active",
        },
    ),
    (
        "pn",
        {
            "distance": "squared_euclidean",
            "positive_mining_strategy": "all",
            "negative_mining_strategy": "hard",
            "soft_margin": True,
        },
    ),
    (
        "pn",
        {
            "distance": "euclidean_norm",
            "positive_mining_strategy": "all",
            "negative_mining_strategy": "all",
            "average": "valid",
        },
    ),
]
REPRESENTATIVE_IDS = [
    "batch-all",
    "tfa-semi-hard",
    "hard-all-active",
    "pn-all-hard-soft",
    "pn-all-all",
]


def reference_kwargs(kind, kwargs):
    """The reference's names for a library configuration."""
    return {
        "loss": kind,
        "distance_name": kwargs.get("distance", "cosine"),
        "positive": kwargs.get("positive_mining_strategy", "hard"),
        "negative": kwargs.get("negative_mining_strategy", "semi-hard"),
        "soft_margin": kwargs.get("soft_margin", False),
        "margin": kwargs.get("margin", 1.0),
        "semi_margin": kwargs.get("semi_margin", 0.0),
        "average": kwargs.get("average", "valid"),
    }


# --- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
def test_every_combination_matches_reference_value_and_gradient(batch_kind, engine_mode):
    """Eager value and gradient of every new combination against the reference and its
    central differences, in both modes of the pair engine."""
    labels, x = batch(batch_kind)
    failures = []
    for kind, kwargs, ref_kwargs in CONFIGURATIONS:
        loss = KINDS[kind](**kwargs)
        value, grad = value_and_grad(lambda t, loss=loss: loss(labels, t), x)
        want = rp.triplet_loss(labels, x, **ref_kwargs)
        want_grad = rp.triplet_gradient(labels, x, **ref_kwargs)
        if not np.isclose(value, want, **VALUE_TOL):
            failures.append((kind, kwargs, "value", float(value), want))
        if not np.allclose(grad, want_grad, **GRAD_TOL):
            failures.append((kind, kwargs, "grad", float(np.abs(grad - want_grad).max())))
    assert not failures, failures


def test_the_batches_exercise_what_they_claim():
    """Guards the test data: the uneven batch has invalid anchors, "active" counts fewer
    units than "valid", and the semi-hard fallback happens for some positive pair."""
    labels, x = batch("uneven")
    rows = rp.triplet_units(labels, x, distance_name="euclidean", positive="all", negative="all")
    assert sum(not valid for valid, _ in rows) == 2
    _, active = rp.triplet_per_anchor(
        labels, x, distance_name="euclidean", positive="all", negative="all", average="active"
    )
    _, valid = rp.triplet_per_anchor(
        labels, x, distance_name="euclidean", positive="all", negative="all", average="valid"
    )
    assert 0 < active.sum() < valid.sum()
    # some positive pair has no negative beyond it (semi-hard falls back to the farthest)
    d = rp.distance_matrix("euclidean", x)
    assert any(
        all(d[a][n] <= d[a][p] for n in range(len(labels)) if labels[n] != labels[a])
        for a in range(len(labels))
        for p in range(len(labels))
        if p != a and labels[p] == labels[a]
    )
    # the class of 6 gives 6 * 5 ordered positive pairs, each with 7 negatives
    assert valid.sum() == 6 * 5 * 7 + 3 * 2 * 10 + 2 * 1 * 11


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "mean", "mean_with_sample_weight", "sum", "none", None]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_reductions_and_sample_weight(reduction, weighted):
    """SPEC: default sum w L / max(sum c, 1) (unweighted count); mean_with_sample_weight
    sum w L / sum w c; sum: sum w L; none: the (B,) vector w L. "mean" is the default
    (the library documents it so). Invalid anchors have L = c = 0."""
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32") if weighted else None
    failures = []
    for kind, kwargs in REPRESENTATIVE:
        loss = KINDS[kind](reduction=reduction, **kwargs)
        got = to_numpy(loss(labels, x, sample_weight=weights))
        want = rp.triplet_loss(
            labels, x, sample_weight=weights, reduction=reduction, **reference_kwargs(kind, kwargs)
        )
        if np.shape(got) != np.shape(want) or not np.allclose(got, want, **VALUE_TOL):
            failures.append((kwargs, got, want))
    assert not failures, failures


def test_default_reduction_divides_by_counted_units_not_anchors():
    """Batch-all on the uneven batch: L summed over anchors, divided by the number of active
    units (not by B, not by the valid anchors); mean_with_sample_weight with unit weights
    is the same number."""
    labels, x = batch("uneven")
    kind, kwargs = BATCH_ALL
    totals, counts = rp.triplet_per_anchor(labels, x, **reference_kwargs(kind, kwargs))
    want = totals.sum() / counts.sum()
    assert not np.isclose(want, totals.sum() / len(labels))
    assert not np.isclose(want, totals.sum() / np.count_nonzero(counts))
    np.testing.assert_allclose(to_numpy(TripletLoss(**kwargs)(labels, x)), want, **VALUE_TOL)
    ones = np.ones(len(labels), "float32")
    weighted = TripletLoss(reduction="mean_with_sample_weight", **kwargs)
    np.testing.assert_allclose(to_numpy(weighted(labels, x, sample_weight=ones)), want, **VALUE_TOL)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight", "sum"])
def test_weighted_gradient(reduction, engine_mode):
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32")
    for kind, kwargs in (BATCH_ALL, TFA_SEMI_HARD):
        loss = KINDS[kind](reduction=reduction, **kwargs)
        value, grad = value_and_grad(lambda t, loss=loss: loss(labels, t, sample_weight=weights), x)
        ref_kwargs = {
            **reference_kwargs(kind, kwargs),
            "sample_weight": weights,
            "reduction": reduction,
        }
        np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
        np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


@pytest.mark.parametrize("semi_margin", [-0.3, 0.4])
@pytest.mark.parametrize("kind", list(KINDS))
def test_semi_margin_per_positive_pair(kind, semi_margin):
    """Positive "all" + semi-hard: each pair's own threshold d(a, p) + semi_margin."""
    labels, x = batch("uneven")
    kwargs = {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "semi-hard",
        "semi_margin": semi_margin,
        "margin": 0.5,
    }
    loss = KINDS[kind](reduction="none", **kwargs)
    want = rp.triplet_loss(labels, x, reduction="none", **reference_kwargs(kind, kwargs))
    np.testing.assert_allclose(to_numpy(loss(labels, x)), want, **VALUE_TOL)


@pytest.mark.parametrize("block_size", [1, 4])
@pytest.mark.parametrize("kind,kwargs", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_blocked_matches_unblocked(kind, kwargs, block_size):
    """Row blocks smaller than the batch (1 row; 4 rows, leaving a ragged last block) give
    the unblocked value and gradient, and both match the reference."""
    labels, x = batch("uneven")
    blocked = KINDS[kind](block_size=block_size, **kwargs)
    whole = KINDS[kind](**kwargs)
    value, grad = value_and_grad(lambda t: blocked(labels, t), x)
    whole_value, whole_grad = value_and_grad(lambda t: whole(labels, t), x)
    np.testing.assert_allclose(value, whole_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-4, atol=1e-6)
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


COMPILED = [(kind, kwargs, None) for kind, kwargs in REPRESENTATIVE] + [
    (*BATCH_ALL, 4),
    (*TFA_SEMI_HARD, 4),
]
COMPILED_IDS = REPRESENTATIVE_IDS + ["batch-all-blocked", "tfa-semi-hard-blocked"]


@pytest.mark.parametrize("kind,kwargs,block_size", COMPILED, ids=COMPILED_IDS)
def test_compiled_matches_reference(kind, kwargs, block_size, engine_mode):
    """Value and gradient inside tf.function(jit_compile=True) / jax.jit (eager on torch),
    unblocked and with row blocks of 4, in both modes of the pair engine."""
    labels, x = batch("uneven")
    extra = {} if block_size is None else {"block_size": block_size}
    loss = KINDS[kind](**kwargs, **extra)
    value, grad = compiled_value_and_grad(lambda t: loss(labels, t), x)
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
@pytest.mark.parametrize("kind,kwargs", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_recomputed_blocks_match_reference(kind, kwargs, compile_it, recomputed_blocks):
    """Blocks recomputed in the backward pass (large batches) give the reference's value and
    gradient, with ragged row blocks of 4."""
    labels, x = batch("uneven")
    # A tensor made outside the compiled function: captured by it, not a constant.
    label_tensor = keras.ops.convert_to_tensor(labels)
    loss = KINDS[kind](block_size=4, **kwargs)
    run = compiled_value_and_grad if compile_it else value_and_grad
    value, grad = run(lambda t: loss(label_tensor, t), x)
    assert recomputed_blocks
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


def test_recomputed_blocks_return_freed_memory_on_eager_torch(recomputed_blocks, monkeypatch):
    """Eager torch trims glibc's heap before a recomputed block once resident memory has
    grown by ``TRIM_GROWTH`` (here: always), in the forward pass and in the recomputation;
    no other backend calls it. Without it the freed ``n x M`` blocks piled up past 24 GB at
    B = 65,536."""
    from triplet_tools.mining import heap

    trims = []
    monkeypatch.setattr(heap._heap(), "trim", trims.append)
    monkeypatch.setattr(heap, "TRIM_GROWTH", 0)
    labels, x = batch("uneven")
    kind, kwargs = BATCH_ALL
    value, grad = value_and_grad(lambda t: TripletLoss(block_size=4, **kwargs)(labels, t), x)
    blocks = -(-len(labels) // 4)
    assert len(trims) == (2 * blocks if BACKEND == "torch" else 0)
    assert all(pad == 0 for pad in trims)
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


def test_compiled_reduction_none():
    labels, x = batch("full")
    kind, kwargs = TFA_SEMI_HARD
    loss = TripletLoss(reduction="none", **kwargs)
    got = to_numpy(compiled(lambda t: loss(labels, t))(x))
    want = rp.triplet_loss(labels, x, reduction="none", **reference_kwargs(kind, kwargs))
    np.testing.assert_allclose(got, want, **VALUE_TOL)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is PyTorch's compiler")
def test_torch_compile_batch_all():
    import torch

    labels, x = batch("uneven")
    kind, kwargs = BATCH_ALL
    loss = torch.compile(TripletLoss(**kwargs))
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


# --- hand-worked batches -------------------------------------------------------------------------


def test_hand_worked_tfa_semi_hard():
    """Points 0, 1, 3 (class 0) and 2.2, 7 (class 1), Euclidean, margin 2, positive "all",
    negative "semi-hard": every positive pair with its own semi-hard negative.

    anchor 0:   p=1 (d=1): negatives at d 2.2, 7; d > 1 -> n=2.2: 1 - 2.2 + 2 = 0.8
                p=3 (d=3): d > 3 -> n=7 (d=7): 3 - 7 + 2 < 0 -> 0
    anchor 1:   p=0 (d=1): negatives at d 1.2, 6; d > 1 -> n=2.2 (d=1.2): 1 - 1.2 + 2 = 1.8
                p=3 (d=2): d > 2 -> n=7 (d=6): 2 - 6 + 2 < 0 -> 0
    anchor 3:   p=0 (d=3): negatives at d 0.8, 4; d > 3 -> n=7 (d=4): 3 - 4 + 2 = 1
                p=1 (d=2): d > 2 -> n=7 (d=4): 2 - 4 + 2 = 0
    anchor 2.2: p=7 (d=4.8): negatives at d 2.2, 1.2, 0.8: none beyond 4.8 -> the farthest,
                x=0 (d=2.2): 4.8 - 2.2 + 2 = 4.6
    anchor 7:   p=2.2 (d=4.8): negatives at d 7, 6, 4; d > 4.8 -> n=1 (d=6): 4.8 - 6 + 2 = 0.8
    per anchor L = [0.8, 1.8, 1, 4.6, 0.8]; 8 positive pairs: mean 9 / 8 = 1.125.

    The per-anchor strategy (hard positive) differs at anchor 1: p*=3 (d=2), n=7 (d=6) -> 0.
    """
    x = np.array([[0.0], [1.0], [3.0], [2.2], [7.0]], "float32")
    labels = np.array([0, 0, 0, 1, 1])
    kwargs = {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "semi-hard",
        "margin": 2.0,
    }
    per_anchor = to_numpy(TripletLoss(reduction="none", **kwargs)(labels, x))
    np.testing.assert_allclose(per_anchor, [0.8, 1.8, 1.0, 4.6, 0.8], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(TripletLoss(**kwargs)(labels, x)), 1.125, rtol=1e-6)
    per_anchor_hard = TripletLoss(distance="euclidean", margin=2.0, reduction="none")
    assert np.isclose(to_numpy(per_anchor_hard(labels, x))[1], 0.0, atol=1e-6)


def test_hand_worked_batch_all():
    """Points 0, 1 (class 0) and 1.5, 4 (class 1), Euclidean, margin 1, every triplet.

    a=0:   p=1 (d=1):   n=1.5 (d=1.5): 1 - 1.5 + 1 = 0.5;   n=4 (d=4): 1 - 4 + 1 < 0 -> 0
    a=1:   p=0 (d=1):   n=1.5 (d=0.5): 1 - 0.5 + 1 = 1.5;   n=4 (d=3): 1 - 3 + 1 < 0 -> 0
    a=1.5: p=4 (d=2.5): n=0 (d=1.5): 2.5 - 1.5 + 1 = 2;    n=1 (d=0.5): 2.5 - 0.5 + 1 = 3
    a=4:   p=1.5 (d=2.5): n=0 (d=4): 2.5 - 4 + 1 < 0 -> 0;  n=1 (d=3): 2.5 - 3 + 1 = 0.5
    L = [0.5, 1.5, 5, 0.5], sum 7.5; 5 of the 8 triplets are active:
    average="active" (batch-all) 7.5 / 5 = 1.5; average="valid" 7.5 / 8 = 0.9375.
    """
    x = np.array([[0.0], [1.0], [1.5], [4.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(
        to_numpy(triplet_batch_all_loss(1.0, "euclidean")(labels, x)), 1.5, rtol=1e-6
    )
    every = {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "all",
    }
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="valid", **every)(labels, x)), 0.9375, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="active", reduction="none", **every)(labels, x)),
        [0.5, 1.5, 5.0, 0.5],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="active", reduction="sum", **every)(labels, x)), 7.5, rtol=1e-6
    )


def test_hand_worked_active_average_of_a_per_anchor_strategy():
    """Same points, hard/hard, margin 1 (c_a in {0, 1}):
    a=0: d_ap=1, d_an=1.5 -> 0.5;  a=1: 1 - 0.5 + 1 = 1.5;  a=1.5: 2.5 - 0.5 + 1 = 3;
    a=4: 2.5 - 3 + 1 = 0.5. All four active -> 5.5 / 4. With margin 0.4: -0.1 -> 0, 0.9, 2.4,
    -0.1 -> 0: "active" 3.3 / 2, "valid" 3.3 / 4.
    """
    x = np.array([[0.0], [1.0], [1.5], [4.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    hard = {"distance": "euclidean", "negative_mining_strategy": "hard"}
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="active", **hard)(labels, x)), 5.5 / 4, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="active", margin=0.4, **hard)(labels, x)), 3.3 / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(TripletLoss(average="valid", margin=0.4, **hard)(labels, x)), 3.3 / 4, rtol=1e-6
    )


def test_hand_worked_pn_batch_all():
    """Points 0, 2 (class 0), 2.5, 9 (class 1), Euclidean, margin 1, PN, every triplet,
    d_an = min(d(a, n), d(p, n)).

    a=0,   p=2:   n=2.5: min(2.5, 0.5) = 0.5 -> 2 - 0.5 + 1 = 2.5;  n=9: min(9, 7) = 7 -> 0
    a=2,   p=0:   n=2.5: min(0.5, 2.5) = 0.5 -> 2.5;                 n=9: min(7, 9) -> 0
    a=2.5, p=9:   n=0: min(2.5, 9) = 2.5 -> 6.5 - 2.5 + 1 = 5;       n=2: min(0.5, 7) -> 7
    a=9,   p=2.5: n=0: min(9, 2.5) = 2.5 -> 5;                       n=2: min(7, 0.5) -> 7
    sum 29 over 6 active of 8: "active" 29 / 6, "valid" 29 / 8.
    """
    x = np.array([[0.0], [2.0], [2.5], [9.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    every = {
        "distance": "euclidean",
        "positive_mining_strategy": "all",
        "negative_mining_strategy": "all",
    }
    np.testing.assert_allclose(
        to_numpy(PNLoss(average="active", **every)(labels, x)), 29 / 6, rtol=1e-6
    )
    np.testing.assert_allclose(to_numpy(PNLoss(**every)(labels, x)), 29 / 8, rtol=1e-6)


# --- edge cases ----------------------------------------------------------------------------------


NEW_LOSSES = [BATCH_ALL, TFA_SEMI_HARD, REPRESENTATIVE[3], REPRESENTATIVE[4]]
NEW_IDS = ["batch-all", "tfa-semi-hard", "pn-all-hard-soft", "pn-all-all"]


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3, 4, 5], [7, 7, 7, 7, 7, 7], []],
    ids=["no-positives", "one-class", "empty"],
)
@pytest.mark.parametrize("kind,kwargs", NEW_LOSSES, ids=NEW_IDS)
def test_no_valid_anchor_gives_exact_zero_and_zero_gradient(labels, kind, kwargs):
    x = np.random.default_rng(0).normal(size=(len(labels), 4)).astype("float32")
    for average in ("valid", "active"):
        loss = KINDS[kind](**{**kwargs, "average": average})
        value, grad = value_and_grad(lambda t, loss=loss: loss(np.array(labels, "int64"), t), x)
        assert value == 0.0
        assert grad.shape == x.shape and np.all(grad == 0.0)


def test_no_active_unit_gives_exact_zero():
    """Batch-all on well separated classes: every unit is inactive, so the "active" count
    is 0 and the default reduction gives 0 / max(0, 1) = 0, never NaN."""
    x = np.array([[0.0], [0.1], [10.0], [10.1]], "float32")
    loss = triplet_batch_all_loss(1.0, "euclidean")
    value, grad = value_and_grad(lambda t: loss([0, 0, 1, 1], t), x)
    assert value == 0.0 and np.all(grad == 0.0)
    loss = TripletLoss(reduction="mean_with_sample_weight", **BATCH_ALL[1])
    assert to_numpy(loss([0, 0, 1, 1], x, sample_weight=np.ones(4, "float32"))) == 0.0


@pytest.mark.parametrize("kind,kwargs", NEW_LOSSES, ids=NEW_IDS)
def test_duplicates_and_zero_vectors(kind, kwargs):
    """Exact duplicates within and across classes, and zero rows: distances of exactly 0
    and ties. With negative "all" or "semi-hard" + ties only the choice among equal
    distances is free; we compare where the value is tie-independent (negative "all") and
    otherwise require finite values and gradients."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 3)).astype("float32")
    zeros = np.zeros((2, 3), "float32")
    x = np.concatenate([base[:1], base[:1], base[1:2], base[1:2], base[2:], zeros])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    loss = KINDS[kind](**kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if kwargs["negative_mining_strategy"] == "all" and kwargs.get("average") != "active":
        want = rp.triplet_loss(labels, x, tie_tol=None, **reference_kwargs(kind, kwargs))
        # loose: a distance of exactly 0 may come out as sqrt(rounding) ~ 3e-4 in float32
        np.testing.assert_allclose(value, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("row", [0, 6], ids=["valid-anchor", "invalid-anchor"])
def test_nan_and_inf_propagate(bad, row):
    labels = np.array([0, 0, 1, 1, 2, 2, 9])
    x = np.random.default_rng(9).normal(size=(7, 3)).astype("float32")
    x[row, 1] = bad
    for kind, kwargs in NEW_LOSSES:
        for reduction in ("sum_over_batch_size", "sum"):
            assert np.isnan(to_numpy(KINDS[kind](reduction=reduction, **kwargs)(labels, x))), kwargs


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_batch_all(dtype):
    """Computed in float32: the value of the rounded inputs, finite gradients."""
    labels, x32 = batch("full")
    x = keras.ops.cast(x32, dtype)
    rounded = to_numpy(keras.ops.cast(x, "float32"))
    kind, kwargs = BATCH_ALL
    value, grad = value_and_grad(lambda t: TripletLoss(**kwargs)(labels, t), x)
    want = rp.triplet_loss(labels, rounded, **reference_kwargs(kind, kwargs))
    np.testing.assert_allclose(np.float32(value), want, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(grad.astype("float32")))


def test_labels_above_2_pow_24_stay_distinct():
    labels = np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1, 2**31 - 1, 2**31 - 1], np.int64)
    x = np.random.default_rng(5).normal(size=(6, 3)).astype("float32")
    kind, kwargs = TFA_SEMI_HARD
    want = rp.triplet_loss(labels, x, **reference_kwargs(kind, kwargs))
    merged = rp.triplet_loss(labels.astype(np.float32), x, **reference_kwargs(kind, kwargs))
    assert not np.isclose(want, merged)
    np.testing.assert_allclose(to_numpy(TripletLoss(**kwargs)(labels, x)), want, **VALUE_TOL)


# --- configuration -------------------------------------------------------------------------------


def test_average_bad_value_names_the_two():
    for cls in (TripletLoss, PNLoss):
        with pytest.raises(ValueError) as info:
            cls(average="mean")
        message = str(info.value)
        assert "average" in message and "'mean'" in message
        assert "valid" in message and "active" in message


@pytest.mark.parametrize("argument", ["positive_mining_strategy", "negative_mining_strategy"])
def test_bad_strategy_lists_all(argument):
    with pytest.raises(ValueError) as info:
        TripletLoss(**{argument: "every"})
    assert "'every'" in str(info.value) and "all" in str(info.value)


def test_priming_keeps_hard_hard():
    """SPEC: PrimingLoss keeps hard / hard; it has no strategy arguments to set to "all"."""
    with pytest.raises((TypeError, ValueError)):
        PrimingLoss(positive_mining_strategy="all")
    with pytest.raises((TypeError, ValueError)):
        PrimingLoss(negative_mining_strategy="all")


def test_batch_all_is_the_documented_triplet_loss():
    assert losses_module.triplet_batch_all_loss is triplet_batch_all_loss
    assert (
        triplet_batch_all_loss(0.3, "l2").get_config()
        == TripletLoss(
            distance="l2",
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            margin=0.3,
            average="active",
        ).get_config()
    )
    assert triplet_batch_all_loss().get_config()["distance"] == "euclidean_norm"
    assert triplet_batch_all_loss().get_config()["margin"] == 1.0


CONFIG_LOSSES = [
    TripletLoss(
        positive_mining_strategy="all",
        negative_mining_strategy="all",
        average="active",
        distance="l1",
        margin=0.3,
        reduction="sum",
        block_size=3,
    ),
    PNLoss(
        positive_mining_strategy="all",
        negative_mining_strategy="semi-hard",
        semi_margin=0.1,
        soft_margin=True,
        average="valid",
        name="pn_all",
    ),
    triplet_batch_all_loss(0.5, "cosine"),
]


@pytest.mark.parametrize("loss", CONFIG_LOSSES, ids=["triplet", "pn", "batch-all"])
def test_config_round_trip(loss):
    config = loss.get_config()
    assert config["average"] in ("valid", "active")
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in config.values())
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    labels, x = batch("uneven")
    np.testing.assert_allclose(to_numpy(restored(labels, x)), to_numpy(loss(labels, x)), rtol=1e-6)


def test_default_average_is_valid():
    assert TripletLoss().get_config()["average"] == "valid"
    assert PNLoss().get_config()["average"] == "valid"


def test_save_and_load_without_custom_objects(tmp_path):
    """In this process (test_pair_losses reloads every new loss in a fresh one)."""
    losses = [
        TripletLoss(
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            average="active",
            distance="euclidean",
            margin=0.7,
        ),
        PNLoss(positive_mining_strategy="all", negative_mining_strategy="hard", average="active"),
    ]
    reloaded, expected = save_and_reload(tmp_path, losses)
    for loss, got, want in zip(losses, reloaded, expected):
        assert got["class"] == type(loss).__name__
        assert got["config"] == loss.get_config()
        np.testing.assert_allclose(got["value"], want, rtol=1e-5)


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_sorted_search_finds_each_class_like_numpy(compile_it, size):
    # Duplicates, values below, between and above the sorted ones, both sides.
    from triplet_tools.mining.prepare import sorted_search

    rng = np.random.default_rng(size)
    sorted_values = np.sort(rng.integers(-5, 6, size)).astype("int32")
    values = np.arange(-7, 9, dtype="int32")
    for side in ("left", "right"):
        search = lambda s, v, side=side: sorted_search(s, v, side=side)  # noqa: E731
        found = (compiled(search) if compile_it else search)(
            keras.ops.convert_to_tensor(sorted_values), keras.ops.convert_to_tensor(values)
        )
        np.testing.assert_array_equal(
            to_numpy(found), np.searchsorted(sorted_values, values, side=side), err_msg=side
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA lowering of searchsorted")
def test_pair_engine_under_xla_holds_no_batch_by_references_search():
    # XLA lowers TensorFlow's LowerBound / UpperBound to a B x M comparison matrix (2 GB of
    # int32 at B = 16,384); under XLA the pair engine searches the sorted labels itself.
    import tensorflow as tf

    y, x = batch("uneven")

    def op_types(loss, jit_compile):
        step = tf.function(lambda x, y: loss(y, x), jit_compile=jit_compile)
        graph = step.get_concrete_function(tf.constant(x), tf.constant(y)).graph
        return {op.type for op in graph.get_operations()} | {
            op.type for f in graph._functions.values() for op in f.graph.get_operations()
        }

    summed = triplet_batch_all_loss(margin=0.2)
    searches = {"LowerBound", "UpperBound"}
    assert not searches & op_types(summed, jit_compile=True)
    # In a plain graph the products mode runs as an inner XLA function as well; the
    # linearized mode (reduction="none") keeps TensorFlow's own kernel, a binary search.
    assert not searches & op_types(summed, jit_compile=False)
    per_anchor = TripletLoss(**{**BATCH_ALL[1], "reduction": "none"})
    assert searches <= op_types(per_anchor, jit_compile=False)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graph mode without XLA")
def test_plain_tensorflow_graph_runs_the_pair_engine_under_xla():
    """In ``tf.function`` without ``jit_compile`` (``tf_keras``' ``model.fit``), the products
    mode runs as one XLA-compiled inner function, with the reference's value and gradient."""
    import tensorflow as tf

    labels, x = batch("uneven")
    kind, kwargs = TFA_SEMI_HARD
    loss = TripletLoss(block_size=4, **kwargs)

    @tf.function
    def step(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = loss(labels, t)
        return value, tape.gradient(value, t)

    calls = step.get_concrete_function(tf.constant(x)).graph.get_operations()
    assert any(
        op.type.endswith("PartitionedCall")
        and "_XlaMustCompile" in op.node_def.attr
        and op.get_attr("_XlaMustCompile")
        for op in calls
    ), sorted({op.type for op in calls})
    value, grad = (to_numpy(t) for t in step(tf.constant(x)))
    ref_kwargs = reference_kwargs(kind, kwargs)
    np.testing.assert_allclose(value, rp.triplet_loss(labels, x, **ref_kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rp.triplet_gradient(labels, x, **ref_kwargs), **GRAD_TOL)


def test_reductions_take_the_products_mode_and_none_the_linearized(monkeypatch):
    """The reductions hand the engine the anchors' weights (products mode: no ``n x M``
    block is differentiated); ``reduction="none"`` and a distance without a product form
    keep each anchor's own gradient (linearized)."""
    from triplet_tools.mining import engine

    taken = []

    def spy(name):
        original = getattr(engine, name)

        def spied(*args, **kwargs):
            taken.append(name)
            return original(*args, **kwargs)

        return spied

    for name in ("_score_products", "_score_linearized"):
        monkeypatch.setattr(engine, name, spy(name))
    labels, x = batch("full")
    kwargs = BATCH_ALL[1]
    TripletLoss(**kwargs)(labels, x)
    TripletLoss(reduction="none", **kwargs)(labels, x)
    TripletLoss(**{**kwargs, "distance": "manhattan"})(labels, x)
    assert taken == ["_score_products", "_score_linearized", "_score_linearized"]
