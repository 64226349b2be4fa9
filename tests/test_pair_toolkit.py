"""The pair engine as a toolkit: a loss written as a value-only row function, and the
built-in losses' hand-derived slopes against the engine's autodiff of their rows.

References: an independent NumPy brute force written here from the definition (the
contrastive loss) and ``reference_pairs.py`` (the built-in losses), gradients by central
differences in float64.
"""

import keras
import numpy as np
import pytest

import reference_pairs as rp
from backend import (
    COMPILE_IDS,
    COMPILE_MODES,
    compiled_value_and_grad,
    to_numpy,
    value_and_grad,
)
from pair_support import GRAD_TOL, VALUE_TOL, batch
from triplet_tools import (
    CircleLoss,
    MultiSimilarityLoss,
    SoftNearestNeighborLoss,
    SupConLoss,
)
from triplet_tools.losses import LiftedStructLoss, PairLoss

# --- a new loss in a few lines -------------------------------------------------------------


class Contrastive(PairLoss):
    """``l_a = sum_P d^2 + sum_N max(margin - d, 0)^2`` (Hadsell et al. 2006), as a row."""

    parameters = ("margin",)

    def __init__(self, margin=1.0, distance="euclidean", name="contrastive", **kwargs):
        self.margin = margin
        super().__init__(distance, name, **kwargs)

    def row(self, block):
        d = block.distances
        pull = keras.ops.where(block.positive, keras.ops.square(d), 0)
        push = keras.ops.where(block.negative, keras.ops.square(keras.ops.relu(self.margin - d)), 0)
        return keras.ops.sum(pull + push, axis=1)


def contrastive_reference(labels, embeddings=None, margin=1.0, distances=None):
    """Per-anchor ``(l_a, c_a)`` over the batch, one pair at a time (``distances``: a
    precomputed matrix, for the numerical gradient)."""
    d = rp.distance_matrix("euclidean", embeddings) if distances is None else distances
    totals, counts = [], []
    for a in range(len(labels)):
        pos, neg = rp.positives_and_negatives(list(labels), a)
        if not pos or not neg:
            totals.append(0.0)
            counts.append(0.0)
            continue
        total = sum(d[a][p] ** 2 for p in pos)
        total += sum(max(margin - d[a][n], 0.0) ** 2 for n in neg)
        totals.append(total)
        counts.append(1.0)
    return totals, counts


def contrastive_expected(labels, x, margin=1.0, **reduce_kwargs):
    value = rp.reduce(*contrastive_reference(labels, x, margin), **reduce_kwargs)

    def fn(d):
        return rp.reduce(
            *contrastive_reference(labels, distances=d, margin=margin), **reduce_kwargs
        )

    return value, rp.numerical_gradient(fn, x, "euclidean")


@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
def test_row_function_loss_matches_reference(batch_kind, engine_mode):
    labels, x = batch(batch_kind)
    x = x * 0.4  # some negatives inside the margin, some outside
    loss = Contrastive(margin=1.0)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    expected_value, expected_grad = contrastive_expected(labels, x)
    np.testing.assert_allclose(value, expected_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, expected_grad, **GRAD_TOL)
    assert np.abs(expected_grad).max() > 1e-2


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
def test_row_function_loss_compiled_weighted_and_blocked(compile_it, engine_mode):
    labels, x = batch("uneven")
    x = x * 0.4
    weights = np.linspace(0.5, 2.0, len(labels)).astype("float32")
    loss = Contrastive(margin=0.9, block_size=3, reduction="sum")
    step = compiled_value_and_grad if compile_it else value_and_grad
    value, grad = step(lambda t: loss(labels, t, sample_weight=weights), x)
    expected_value, expected_grad = contrastive_expected(
        labels, x, 0.9, sample_weight=weights, reduction="sum"
    )
    np.testing.assert_allclose(value, expected_value, **VALUE_TOL)
    np.testing.assert_allclose(grad, expected_grad, **GRAD_TOL)


def test_row_function_loss_per_anchor_values():
    labels, x = batch("uneven")
    loss = Contrastive(reduction="none")
    totals, _ = contrastive_reference(labels, x)
    np.testing.assert_allclose(to_numpy(loss(labels, x)), totals, **VALUE_TOL)


def test_row_function_loss_trains():
    """Two Gaussian classes in 4-D, a linear embedding: the loss falls in 30 steps."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 16)
    x = (rng.normal(size=(64, 4)) + 1.5 * np.eye(4)[labels]).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(0.01), Contrastive(margin=2.0))
    history = model.fit(x, labels, batch_size=64, epochs=30, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history


def test_row_function_loss_saves_and_loads(tmp_path):
    keras.saving.register_keras_serializable(package="tests")(Contrastive)
    loss = Contrastive(margin=0.7)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model.compile("adam", loss)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras").loss
    assert isinstance(reloaded, Contrastive) and reloaded.margin == 0.7
    labels, x = batch("full")
    np.testing.assert_allclose(to_numpy(reloaded(labels, x)), to_numpy(loss(labels, x)))


def test_a_loss_without_row_says_so():
    class Empty(PairLoss):
        pass

    labels, x = batch("full")
    with pytest.raises(NotImplementedError, match="Empty must define row"):
        Empty("euclidean", "empty")(labels, x)


# --- the hand-derived slopes equal the autodiff of the rows --------------------------------

CLOSED_FORMS = [
    ("multi_similarity", MultiSimilarityLoss, {"distance": "euclidean", "epsilon": 0.5}),
    ("circle", CircleLoss, {"distance": "cosine", "gamma": 4.0, "margin": 0.25}),
    (
        "soft_nearest_neighbor",
        SoftNearestNeighborLoss,
        {"distance": "squared_euclidean", "temperature": 0.5},
    ),
    ("lifted_struct", LiftedStructLoss, {"distance": "euclidean", "margin": 1.0}),
]


@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
@pytest.mark.parametrize("kind,cls,kwargs", CLOSED_FORMS, ids=[c[0] for c in CLOSED_FORMS])
def test_autodiff_row_matches_reference_and_closed_form(kind, cls, kwargs, batch_kind, engine_mode):
    labels, x = batch(batch_kind)
    weights = np.linspace(0.5, 2.0, len(labels)).astype("float32")
    results = []
    for closed_form in (True, False):
        loss = cls(**kwargs)
        loss.closed_form = closed_form
        results.append(value_and_grad(lambda t, f=loss: f(labels, t, sample_weight=weights), x))
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "distance"}
    ref_kwargs.update(distance_name=kwargs["distance"], sample_weight=weights)
    expected = rp.pair_loss(kind, labels, x, **ref_kwargs)
    expected_grad = rp.pair_gradient(kind, labels, x, **ref_kwargs)
    for value, grad in results:
        np.testing.assert_allclose(value, expected, **VALUE_TOL)
        np.testing.assert_allclose(grad, expected_grad, **GRAD_TOL)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_supcon_autodiff_row_matches_closed_form(engine_mode):
    labels, x = batch("uneven")
    results = []
    for closed_form in (True, False):
        loss = SupConLoss(temperature=0.5)
        loss.closed_form = closed_form
        results.append(value_and_grad(lambda t, f=loss: f(labels, t), x))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    assert np.abs(results[0][1]).max() > 1e-2


@pytest.mark.parametrize("kind,cls,kwargs", CLOSED_FORMS, ids=[c[0] for c in CLOSED_FORMS])
def test_autodiff_row_in_blocks_matches_reference(kind, cls, kwargs):
    """Blocks of 3 anchors against all 13 references: the rows see their own block only."""
    labels, x = batch("uneven")
    loss = cls(**kwargs, block_size=3)
    loss.closed_form = False
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "distance"}
    ref_kwargs.update(distance_name=kwargs["distance"])
    np.testing.assert_allclose(value, rp.pair_loss(kind, labels, x, **ref_kwargs), **VALUE_TOL)
    expected_grad = rp.pair_gradient(kind, labels, x, **ref_kwargs)
    np.testing.assert_allclose(grad, expected_grad, **GRAD_TOL)


@pytest.mark.parametrize("kind,cls,kwargs", CLOSED_FORMS, ids=[c[0] for c in CLOSED_FORMS])
def test_autodiff_row_against_other_references_matches_closed_form(kind, cls, kwargs):
    """Anchors against another set of references (as a memory gives them): no symmetry
    between anchors and references to lean on."""
    labels, x = batch("uneven")
    ref_labels, refs = batch("full")
    results = []
    for closed_form in (True, False):
        loss = cls(**kwargs, block_size=4)
        loss.closed_form = closed_form

        def total(t, f=loss):
            triplets = f.anchor_triplets(labels, t, references=refs, reference_labels=ref_labels)
            return keras.ops.sum(triplets.loss * keras.ops.arange(1.0, len(labels) + 1.0))

        results.append(value_and_grad(total, x))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    assert np.abs(results[0][1]).max() > 1e-3
