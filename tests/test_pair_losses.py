"""The pair-based losses (SPEC, last part): ``MultiSimilarityLoss``, ``CircleLoss``,
``SoftNearestNeighborLoss`` and ``triplet_tools.tfa.LiftedStructLoss``, against the NumPy
brute-force reference (reference_pairs.py, checked against TF Similarity 0.17.1, tfa 0.23,
pytorch-metric-learning 2.9.0 and keras.losses.circle by tests/peers/), hand-worked
batches and Keras' own circle loss."""

import math

import keras
import numpy as np
import pytest

import reference_pairs as rp
from backend import (
    BACKEND,
    COMPILE_IDS,
    COMPILE_MODES,
    compiled_value_and_grad,
    to_numpy,
    value_and_grad,
)
from pair_support import GRAD_TOL, VALUE_TOL, batch, save_and_reload
from triplet_tools import PNLoss, TripletLoss
from triplet_tools import losses as losses_module
from triplet_tools.distances import Distance
from triplet_tools.losses import (
    CircleLoss,
    MultiSimilarityLoss,
    SoftNearestNeighborLoss,
)
from triplet_tools.tfa import LiftedStructLoss, TripletHardLoss, TripletSemiHardLoss

#: class, reference kind, the loss's own default distance.
LOSSES = {
    "multi_similarity": (MultiSimilarityLoss, "cosine"),
    "circle": (CircleLoss, "cosine"),
    "soft_nearest_neighbor": (SoftNearestNeighborLoss, "squared_euclidean"),
    "lifted_struct": (LiftedStructLoss, "euclidean"),
}

CASES = [
    ("multi_similarity", {}),
    (
        "multi_similarity",
        {
            "distance": "euclidean",
            "alpha": 1.5,
            "beta": 10.0,
            "epsilon": 0.5,
            "lmda": 1.0,
            "center": 2.0,
        },
    ),
    ("circle", {}),
    ("circle", {"distance": "euclidean_norm", "gamma": 16.0, "margin": 0.25}),
    ("soft_nearest_neighbor", {}),
    ("soft_nearest_neighbor", {"distance": "cosine", "temperature": 0.3}),
    ("lifted_struct", {}),
    ("lifted_struct", {"margin": 0.5}),
]
CASE_IDS = [
    "ms",
    "ms-euclidean",
    "circle",
    "circle-euclidean_norm",
    "snn",
    "snn-cosine",
    "lifted",
    "lifted-margin",
]
DEFAULT_CASES = [case for case in CASES if not case[1]]
DEFAULT_IDS = list(LOSSES)


def make(kind, kwargs, **extra):
    return LOSSES[kind][0](**kwargs, **extra)


def reference_kwargs(kind, kwargs):
    """The reference's names: ``distance`` -> ``distance_name``, the rest as they are."""
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "distance"}
    ref_kwargs["distance_name"] = kwargs.get("distance", LOSSES[kind][1])
    return ref_kwargs


def expected(kind, kwargs, labels, x, **reduce_kwargs):
    return rp.pair_loss(kind, labels, x, **reference_kwargs(kind, kwargs), **reduce_kwargs)


def expected_gradient(kind, kwargs, labels, x, **reduce_kwargs):
    return rp.pair_gradient(kind, labels, x, **reference_kwargs(kind, kwargs), **reduce_kwargs)


# --- against the reference ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
@pytest.mark.parametrize("kind,kwargs", CASES, ids=CASE_IDS)
def test_matches_reference_value_and_gradient(kind, kwargs, batch_kind, engine_mode):
    """Eager, in both modes of the pair engine; the circle loss's gradient holds alpha
    fixed (stop_gradient)."""
    labels, x = batch(batch_kind)
    loss = make(kind, kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, expected(kind, kwargs, labels, x), **VALUE_TOL)
    np.testing.assert_allclose(grad, expected_gradient(kind, kwargs, labels, x), **GRAD_TOL)


def test_the_uneven_batch_has_invalid_anchors_for_every_loss():
    """Guards the data: the two singletons are invalid everywhere; multi-similarity also
    drops an anchor whose kept sets P'(a) / N'(a) come out empty, for some case."""
    labels, x = batch("uneven")
    for kind, kwargs in CASES:
        _, counts = rp.PAIR_LOSSES[kind](labels, x, **reference_kwargs(kind, kwargs))
        assert np.count_nonzero(counts == 0) >= 2, (kind, kwargs)
    counts = [
        rp.multi_similarity_per_anchor(labels, x, **reference_kwargs(kind, kwargs))[1]
        for kind, kwargs in CASES
        if kind == "multi_similarity"
    ]
    assert any(np.count_nonzero(c == 0) > 2 for c in counts)


@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_compiled_matches_reference(kind, kwargs, engine_mode):
    """Compiled with row blocks of 4 (13 rows: a ragged last block), in both modes."""
    labels, x = batch("uneven")
    loss = make(kind, kwargs, block_size=4)
    value, grad = compiled_value_and_grad(lambda t: loss(labels, t), x)
    np.testing.assert_allclose(value, expected(kind, kwargs, labels, x), **VALUE_TOL)
    np.testing.assert_allclose(grad, expected_gradient(kind, kwargs, labels, x), **GRAD_TOL)


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_recomputed_blocks_match_reference(kind, kwargs, compile_it, recomputed_blocks):
    """Blocks recomputed in the backward pass (large batches) keep the value and gradient."""
    labels, x = batch("uneven")
    # A tensor made outside the compiled function: captured by it, not a constant.
    label_tensor = keras.ops.convert_to_tensor(labels)
    loss = make(kind, kwargs, block_size=4)
    run = compiled_value_and_grad if compile_it else value_and_grad
    value, grad = run(lambda t: loss(label_tensor, t), x)
    assert recomputed_blocks
    np.testing.assert_allclose(value, expected(kind, kwargs, labels, x), **VALUE_TOL)
    np.testing.assert_allclose(grad, expected_gradient(kind, kwargs, labels, x), **GRAD_TOL)


@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_blocked_matches_unblocked(kind, kwargs):
    """block_size=4 on 13 rows: a ragged last block (compiled: test_compiled_...)."""
    labels, x = batch("uneven")
    blocked, whole = make(kind, kwargs, block_size=4), make(kind, kwargs)
    value, grad = value_and_grad(lambda t: blocked(labels, t), x)
    whole_value, whole_grad = value_and_grad(lambda t: whole(labels, t), x)
    np.testing.assert_allclose(value, whole_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(value, expected(kind, kwargs, labels, x), **VALUE_TOL)


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "mean", "mean_with_sample_weight", "sum", "none", None]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_reductions_and_sample_weight(reduction, weighted):
    """Invalid anchors give 0 and are left out of the average; "none" gives (B,) values
    w_a L_a; the lifted structure counts c_i = |P(i)| units per anchor."""
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32") if weighted else None
    failures = []
    for kind, kwargs in DEFAULT_CASES:
        got = to_numpy(make(kind, kwargs, reduction=reduction)(labels, x, sample_weight=weights))
        want = expected(kind, kwargs, labels, x, sample_weight=weights, reduction=reduction)
        if reduction in ("none", None) and got.shape != (len(labels),):
            failures.append((kind, "shape", got.shape))
        elif not np.allclose(got, want, **VALUE_TOL):
            failures.append((kind, got, want))
    assert not failures, failures


def test_weighted_gradient(engine_mode):
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32")
    for kind, kwargs in DEFAULT_CASES:
        loss = make(kind, kwargs, reduction="mean_with_sample_weight")
        _, grad = value_and_grad(lambda t, loss=loss: loss(labels, t, sample_weight=weights), x)
        want = expected_gradient(
            kind, kwargs, labels, x, sample_weight=weights, reduction="mean_with_sample_weight"
        )
        np.testing.assert_allclose(grad, want, **GRAD_TOL)


# --- hand-worked batches -------------------------------------------------------------------------


def test_hand_worked_lifted_struct():
    """Points 0, 1 (class 0) and 4 (class 1, alone: invalid), Euclidean, margin 4.

    J_01 = log(exp(4 - d(0, 4)) + exp(4 - d(1, 4))) + d(0, 1) = log(e^0 + e^1) + 1
         = 1 + log(1 + e) = 2.31326;  J_10 is the same.
    L_0 = L_1 = J^2 / 2 = 2.67559, c_0 = c_1 = 1; anchor 4: L = c = 0.
    default: (L_0 + L_1) / (c_0 + c_1) = (1 + log(1 + e))^2 / 2.
    """
    x = np.array([[0.0], [1.0], [4.0]], "float32")
    labels = np.array([0, 0, 1])
    j = 1 + math.log(1 + math.e)
    np.testing.assert_allclose(
        to_numpy(LiftedStructLoss(margin=4.0)(labels, x)), j * j / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(LiftedStructLoss(margin=4.0, reduction="none")(labels, x)),
        [j * j / 2, j * j / 2, 0.0],
        rtol=1e-6,
        atol=1e-7,
    )


def test_hand_worked_soft_nearest_neighbor():
    """Points 0, 1 (class 0), 3 (class 1), squared Euclidean, T = 1.

    anchor 0: positives {1} at 1, everyone else at 1, 9: -log(e^-1 / (e^-1 + e^-9))
              = log(1 + e^-8)
    anchor 1: positives {0} at 1, others at 1, 4: log(1 + e^-3)
    anchor 3: no positive: invalid. Mean over the two valid anchors.
    """
    x = np.array([[0.0], [1.0], [3.0]], "float32")
    labels = np.array([0, 0, 1])
    want = (math.log1p(math.exp(-8)) + math.log1p(math.exp(-3))) / 2
    np.testing.assert_allclose(to_numpy(SoftNearestNeighborLoss()(labels, x)), want, rtol=1e-5)


def test_soft_nearest_neighbor_has_no_epsilon():
    """Points (0, 0), (3, 0) (class 0), (0.1, 0), (3.1, 0) (class 1), squared Euclidean,
    T = 0.05. Anchor (0, 0): its positive at d = 9, the negatives at 0.01 and 9.61:
    l = logsumexp(-180, -0.2, -192.2) - (-180) = 179.8 + log(1 + e^-179.8 + e^-192) = 179.8;
    each anchor is the same by symmetry. TF Similarity's -log(1e-9 + e^-l) would stop at
    20.72."""
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.1, 0.0], [3.1, 0.0]], "float32")
    loss = SoftNearestNeighborLoss(temperature=0.05, reduction="none")
    np.testing.assert_allclose(to_numpy(loss([0, 0, 1, 1], x)), [179.8] * 4, rtol=1e-4)


def test_hand_worked_multi_similarity_drops_easy_anchors():
    """Points 0, 0.1 (class 0), 5, 5.1 (class 1), Euclidean, epsilon 0.1. For anchor 0 the
    nearest negative is at 5, so P'(0) = {d > 4.9} holds no positive (its one is at 0.1):
    every anchor is like that, none is valid, and the loss is exactly 0 with zero gradient.
    With epsilon 4.95: P'(0) = {d > 0.05} = {0.1}, N'(0) = {d < 5.05} = {5}; with lmda 0.5 and
    center 1, s = d - 0.5: l_0 = (1/2) log(1 + e^{2(-0.4)}) + (1/40) log(1 + e^{-40(4.5)}).
    """
    x = np.array([[0.0], [0.1], [5.0], [5.1]], "float32")
    labels = np.array([0, 0, 1, 1])
    easy = MultiSimilarityLoss(distance="euclidean")
    value, grad = value_and_grad(lambda t: easy(labels, t), x)
    assert value == 0.0 and np.all(grad == 0.0)
    loose = MultiSimilarityLoss(distance="euclidean", epsilon=4.95, reduction="none")
    l0 = 0.5 * math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-180.0)) / 40
    np.testing.assert_allclose(to_numpy(loose(labels, x))[0], l0, rtol=1e-5)


def test_circle_values_equal_keras_circle():
    """SPEC: values equal keras.losses.circle on L2-normalised embeddings (cosine)."""
    labels, x = batch("full")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    keras_values = to_numpy(keras.losses.circle(labels, unit, gamma=80.0, margin=0.4))
    ours = to_numpy(CircleLoss(reduction="none")(labels, x))
    np.testing.assert_allclose(ours, keras_values, rtol=1e-4, atol=1e-4)


def test_circle_gradient_holds_alpha_fixed():
    """Keras differentiates through alpha, SPEC (the paper, pytorch-metric-learning) does
    not: the two gradients differ on this batch, and ours is the alpha-fixed one."""
    labels, x = batch("full")
    _, grad = value_and_grad(lambda t: CircleLoss()(labels, t), x)
    free = rp.numerical_gradient(
        lambda d: rp.reduce(*rp.circle_per_anchor(labels, None, distances=d)), x, "cosine"
    )
    held = rp.pair_gradient("circle", labels, x, distance_name="cosine")
    assert not np.allclose(free, held, **GRAD_TOL)
    np.testing.assert_allclose(grad, held, **GRAD_TOL)


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3, 4, 5], [7, 7, 7, 7, 7, 7], []],
    ids=["no-positives", "one-class", "empty"],
)
@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_no_valid_anchor_gives_exact_zero_and_zero_gradient(kind, kwargs, labels):
    x = np.random.default_rng(0).normal(size=(len(labels), 4)).astype("float32")
    loss = make(kind, kwargs)
    value, grad = value_and_grad(lambda t: loss(np.array(labels, "int64"), t), x)
    assert value == 0.0
    assert grad.shape == x.shape and np.all(grad == 0.0)
    none = to_numpy(make(kind, kwargs, reduction="none")(np.array(labels, "int64"), x))
    assert none.shape == (len(labels),) and np.all(none == 0.0)


EXTREME = [
    ("circle", {"gamma": 256.0}, 1.0),
    ("multi_similarity", {"beta": 100.0}, 1.0),
    ("multi_similarity", {"alpha": 50.0, "beta": 100.0, "epsilon": 1.0}, 1.0),
    ("soft_nearest_neighbor", {"temperature": 0.01}, 1.0),
    ("multi_similarity", {"distance": "euclidean"}, 1e3),
    ("circle", {"distance": "euclidean"}, 1e3),
    ("soft_nearest_neighbor", {"distance": "euclidean"}, 1e3),
    ("lifted_struct", {}, 1e3),
]
EXTREME_IDS = [
    "circle-gamma256",
    "ms-beta100",
    "ms-alpha50-beta100",
    "snn-T0.01",
    "ms-euclidean-1e3",
    "circle-euclidean-1e3",
    "snn-euclidean-1e3",
    "lifted-1e3",
]


@pytest.mark.parametrize("kind,kwargs,scale", EXTREME, ids=EXTREME_IDS)
def test_numerically_safe(kind, kwargs, scale):
    """Large scales, large exponents, small temperatures: log-sum-exps stabilised per row,
    so values match the float64 reference and gradients are finite. Embeddings scaled by
    1e3 under the Euclidean distance give distances of order 1e3."""
    labels, x = batch("full")
    x = (x * scale).astype("float32")
    loss = make(kind, kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, expected(kind, kwargs, labels, x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_duplicates_and_zero_vectors(kind, kwargs):
    """Duplicates within and across classes and zero rows: distances of exactly 0 (and,
    for cosine, the zero vector at distance 1 from everything). Values equal the
    reference; gradients are finite."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 3)).astype("float32")
    zeros = np.zeros((2, 3), "float32")
    x = np.concatenate([base[:1], base[:1], base[1:2], base[1:2], base[2:], zeros])
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    loss = make(kind, kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    ref_kwargs = reference_kwargs(kind, kwargs)
    if kind in ("multi_similarity", "lifted_struct"):
        ref_kwargs["tie_tol"] = None
    want = rp.pair_loss(kind, labels, x, **ref_kwargs)
    # loose: a distance of exactly 0 may come out as sqrt(rounding) ~ 3e-4 in float32
    np.testing.assert_allclose(value, want, rtol=1e-3, atol=1e-3)
    _, grad = value_and_grad(lambda t: loss([0, 0, 1, 1], t), np.zeros((4, 3), "float32"))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("row", [0, 12], ids=["valid-anchor", "invalid-anchor"])
@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_nan_reaches_the_loss(kind, kwargs, row):
    labels, x = batch("uneven")
    x = x.copy()
    if row:  # a row whose label is unique: an invalid anchor, left out of the average
        row = int(np.flatnonzero(np.bincount(labels)[labels] == 1)[0])
    x[row, 1] = np.nan
    for reduction in ("sum_over_batch_size", "sum"):
        assert np.isnan(to_numpy(make(kind, kwargs, reduction=reduction)(labels, x)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind,kwargs", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_half_precision_is_computed_in_float32(kind, kwargs, dtype):
    labels, x32 = batch("full")
    x = keras.ops.cast(x32, dtype)
    rounded = to_numpy(keras.ops.cast(x, "float32"))
    value, grad = value_and_grad(lambda t: make(kind, kwargs)(labels, t), x)
    np.testing.assert_allclose(
        np.float32(value), expected(kind, kwargs, labels, rounded), rtol=1e-4, atol=1e-4
    )
    assert np.all(np.isfinite(grad.astype("float32")))


#: Every loss on the pair engine, with a distance of each product form: (id, factory).
ENGINE_LOSSES = [
    ("batch-all", lambda: TripletLoss(
        distance="euclidean", positive_mining_strategy="all", negative_mining_strategy="all")),
    ("tfa-semihard", lambda: TripletSemiHardLoss(margin=0.5)),
    ("ms", lambda: MultiSimilarityLoss()),
    ("circle", lambda: CircleLoss(distance="euclidean_norm", gamma=16.0)),
    ("snn", lambda: SoftNearestNeighborLoss()),
    ("lifted", lambda: LiftedStructLoss()),
]  # fmt: skip
ENGINE_IDS = [name for name, _ in ENGINE_LOSSES]


@pytest.mark.skipif(BACKEND == "jax", reason="JAX runs float64 only with jax_enable_x64")
@pytest.mark.parametrize("make_loss", [m for _, m in ENGINE_LOSSES], ids=ENGINE_IDS)
def test_float64_gradient_is_computed_in_float64(make_loss, monkeypatch):
    """The products mode's gradient (its products included: Keras 3.15's torch ``matmul``
    computes float64 in float32) equals the linearized mode's autodiff in float64, far
    closer than float32 could (~1e-7)."""
    from conftest import only_linearized

    labels, x = batch("uneven")
    x = x.astype("float64")
    weights = np.linspace(0.2, 2.0, len(labels))
    gradients = []
    for products in (True, False):
        if not products:
            only_linearized(monkeypatch)
        loss = make_loss()
        value, grad = value_and_grad(lambda t, loss=loss: loss(labels, t, sample_weight=weights), x)
        assert grad.dtype == np.float64
        gradients.append(grad)
    assert np.abs(gradients[1]).max() > 1e-3
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make_loss", [m for _, m in ENGINE_LOSSES], ids=ENGINE_IDS)
def test_anchor_triplets_give_the_mean_distances(make_loss):
    """Called directly (no MiningStatistics), ``anchor_triplets`` reports each valid anchor's
    mean distance to its positives and to its negatives (multi-similarity's valid anchors
    are those with a mined pair on both sides: a subset)."""
    labels, x = batch("uneven")
    loss = make_loss()
    triplets = loss.anchor_triplets(labels, x)
    d = np.asarray(rp.distance_matrix(loss.distance.name, x))
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    valid = to_numpy(triplets.valid)
    assert valid.sum() >= 8 and not np.any(valid & ~(positive.any(1) & (~same).any(1)))
    for got, mask in ((triplets.positive_distance, positive), (triplets.negative_distance, ~same)):
        want = (d * mask).sum(1) / np.maximum(mask.sum(1), 1)
        np.testing.assert_allclose(to_numpy(got)[valid], want[valid], **VALUE_TOL)


class _Chebyshev(Distance):
    """A user-defined distance: max |a - b| (on a line, the Euclidean distance)."""

    name = "chebyshev_pair_test"

    def pairwise(self, x, y):
        return keras.ops.max(keras.ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)

    def paired(self, x, y):
        return keras.ops.max(keras.ops.abs(x - y), axis=-1)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_custom_distance(kind):
    labels, x = batch("uneven")
    line = x[:, :1]
    got = to_numpy(make(kind, {"distance": _Chebyshev()})(labels, line))
    np.testing.assert_allclose(
        got, expected(kind, {"distance": "euclidean"}, labels, line), **VALUE_TOL
    )


# --- configuration -------------------------------------------------------------------------------


BAD_ARGUMENTS = [
    ("multi_similarity", "alpha", 0.0),
    ("multi_similarity", "alpha", -1.0),
    ("multi_similarity", "beta", 0.0),
    ("multi_similarity", "epsilon", -0.1),
    ("circle", "gamma", 0.0),
    ("circle", "gamma", -80.0),
    ("circle", "margin", -0.4),
    ("soft_nearest_neighbor", "temperature", 0.0),
    ("soft_nearest_neighbor", "temperature", -1.0),
    ("lifted_struct", "margin", -1.0),
]


@pytest.mark.parametrize("kind,argument,value", BAD_ARGUMENTS)
def test_bad_argument_names_what_was_received(kind, argument, value):
    with pytest.raises(ValueError) as info:
        LOSSES[kind][0](**{argument: value})
    message = str(info.value)
    assert argument in message and repr(value).rstrip("0").rstrip(".") in message


def test_zero_epsilon_and_zero_margin_are_allowed():
    MultiSimilarityLoss(epsilon=0.0)
    CircleLoss(margin=0.0)
    LiftedStructLoss(margin=0.0)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_bad_distance(kind):
    with pytest.raises(ValueError, match="Unknown distance"):
        LOSSES[kind][0](distance="hamming")


def test_importable_from_the_package():
    import triplet_tools

    for name in ("MultiSimilarityLoss", "CircleLoss", "SoftNearestNeighborLoss"):
        assert getattr(triplet_tools, name) is getattr(losses_module, name)


def test_defaults_in_config():
    assert {
        k: MultiSimilarityLoss().get_config()[k]
        for k in ("distance", "alpha", "beta", "epsilon", "lmda", "center")
    } == {
        "distance": "cosine",
        "alpha": 2.0,
        "beta": 40.0,
        "epsilon": 0.1,
        "lmda": 0.5,
        "center": 1.0,
    }
    assert {k: CircleLoss().get_config()[k] for k in ("distance", "gamma", "margin")} == {
        "distance": "cosine",
        "gamma": 80.0,
        "margin": 0.4,
    }
    assert {k: SoftNearestNeighborLoss().get_config()[k] for k in ("distance", "temperature")} == {
        "distance": "squared_euclidean",
        "temperature": 1.0,
    }
    assert LiftedStructLoss().get_config()["margin"] == 1.0


@pytest.mark.parametrize("kind,kwargs", CASES, ids=CASE_IDS)
def test_config_round_trip(kind, kwargs):
    loss = make(kind, kwargs, reduction="sum", name=f"my_{kind}")
    config = loss.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in config.values())
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    labels, x = batch("uneven")
    np.testing.assert_allclose(to_numpy(restored(labels, x)), to_numpy(loss(labels, x)), rtol=1e-6)


def test_save_and_load_without_custom_objects(tmp_path):
    """Every loss of SPEC's last part, reloaded in a fresh process that imports only
    ``triplet_tools`` (so importing the package registers them all, tfa's included)."""
    losses = [
        MultiSimilarityLoss(alpha=1.5),
        CircleLoss(gamma=32.0),
        SoftNearestNeighborLoss(temperature=0.5),
        LiftedStructLoss(margin=0.8),
        TripletLoss(
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            average="active",
            distance="euclidean",
            margin=0.7,
        ),
        PNLoss(positive_mining_strategy="all", negative_mining_strategy="semi-hard"),
        TripletSemiHardLoss(margin=0.4, distance_metric="angular"),
        TripletHardLoss(margin=0.2, soft=True),
    ]
    reloaded, expected_values = save_and_reload(tmp_path, losses, fresh_process=True)
    for loss, got, want in zip(losses, reloaded, expected_values):
        assert got["class"] == type(loss).__name__
        assert got["config"] == loss.get_config()
        np.testing.assert_allclose(got["value"], want, rtol=1e-5)
