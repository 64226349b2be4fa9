"""Distances against SPEC's definitions, their mining hooks, and their gradients."""

import numpy as np
import pytest
from keras import ops

import reference as ref
from backend import compiled_value_and_grad, to_numpy, value_and_grad
from triplet_tools import TripletLoss, distances
from triplet_tools.distances import DISTANCE_NAMES, Distance


def _pair_matrix(name, x, y):
    return np.array([[ref.distance(name, a, b) for b in y] for a in x])


@pytest.mark.parametrize("name", DISTANCE_NAMES)
def test_pairwise_and_paired_match_definition(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=(7, 4)).astype("float32")
    x[0] = 0.0  # the zero vector is part of the contract
    d = distances.get(name)
    want = _pair_matrix(name, x, y)
    np.testing.assert_allclose(to_numpy(d.pairwise(x, y)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(d.paired(x, y[:5])), np.diag(want[:, :5]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", DISTANCE_NAMES)
def test_mining_scores_order_rows_like_the_distance(name):
    """Scores need only increase with the distance along each row; the conversions map a
    score back to its distance and a distance (even a negative one) to the score scale."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=(9, 3)).astype("float32")
    d = distances.get(name)
    a, r = d.mining_features(ops.convert_to_tensor(x)), d.mining_features(ops.convert_to_tensor(y))
    scores = to_numpy(d.mining_scores(a, r))
    exact = _pair_matrix(name, x, y)
    np.testing.assert_array_equal(np.argsort(scores, axis=1), np.argsort(exact, axis=1))
    for j in range(y.shape[0]):
        back = to_numpy(d.score_to_distance(ops.convert_to_tensor(scores[:, j]), a))
        np.testing.assert_allclose(back, exact[:, j], rtol=1e-4, atol=1e-5)
        forth = to_numpy(
            d.distance_to_score(ops.convert_to_tensor(exact[:, j].astype("float32")), a)
        )
        np.testing.assert_allclose(forth, scores[:, j], rtol=1e-4, atol=1e-5)
    below = to_numpy(d.distance_to_score(ops.full((6,), -0.5, "float32"), a))
    assert np.all(below[:, None] < scores)


@pytest.mark.parametrize("name", DISTANCE_NAMES)
def test_finite_gradient_at_zero_distance_and_zero_vector(name):
    d = distances.get(name)
    x = np.array([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], "float32")
    for y in (ops.convert_to_tensor(x), ops.zeros_like(x)):
        value, grad = value_and_grad(lambda t: ops.sum(d.paired(t, y)), x)
        assert np.all(np.isfinite(grad)), (name, grad)


def test_l2_normalize_is_safe_at_zero():
    value, grad = value_and_grad(
        lambda t: ops.sum(distances.l2_normalize(t)), np.zeros((2, 3), "float32")
    )
    assert value == 0.0 and np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "run", [value_and_grad, compiled_value_and_grad], ids=["eager", "compiled"]
)
def test_l2_normalize_gradient_matches_the_formula(run):
    """d/dx of sum(g * x / max(||x||, 1e-6)), against the closed form in float64: a plain
    row, the zero row (g / 1e-6), a row of 1e30 (no overflow) and a tiny row under the floor.
    """
    x = np.array(
        [[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [3e30, -4e30, 1e30], [1e-8, 2e-8, 0.0]], "float32"
    )
    g = np.array([[0.3, -1.0, 2.0], [1.0, 2.0, 3.0], [-0.5, 0.25, 1.0], [2.0, -1.0, 0.5]])
    weights = ops.convert_to_tensor(g.astype("float32"))
    _, grad = run(lambda t: ops.sum(distances.l2_normalize(t) * weights), x)
    x64 = x.astype("float64")
    norm = np.linalg.norm(x64, axis=1, keepdims=True)
    floored = norm < 1e-6
    y = x64 / np.maximum(norm, 1e-6)
    projection = np.where(floored, 0.0, np.sum(g * y, axis=1, keepdims=True))
    want = (g - y * projection) / np.maximum(norm, 1e-6)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-36)


def test_names_aliases_and_errors():
    assert distances.get("L2").name == "euclidean"
    assert distances.get("sql2").name == "squared_euclidean"
    assert distances.get("l1").name == "manhattan"
    instance = distances.Cosine()
    assert distances.get(instance) is instance
    with pytest.raises(ValueError, match="Unknown distance: 'hamming'.*euclidean_norm.*l1"):
        distances.get("hamming")
    with pytest.raises(ValueError, match="Unknown distance"):
        TripletLoss(distance=3)


class Chebyshev(Distance):
    name = "chebyshev"

    def pairwise(self, x, y):
        return ops.max(ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)

    def paired(self, x, y):
        return ops.max(ops.abs(x - y), axis=-1)


def test_user_defined_distance_in_a_loss():
    """A distance with only pairwise/paired mines on the exact distance; checked by a
    brute-force loop over every anchor here."""
    rng = np.random.default_rng(2)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3])
    x = rng.normal(size=(9, 3)).astype("float32")
    cheb = lambda a, b: np.max(np.abs(a - b))  # noqa: E731
    want = []
    for i in range(9):
        pos = [cheb(x[i], x[j]) for j in range(9) if labels[j] == labels[i] and j != i]
        neg = [cheb(x[i], x[j]) for j in range(9) if labels[j] != labels[i]]
        want.append(max(max(pos) - min(neg) + 1.0, 0.0))
    loss = TripletLoss(distance=Chebyshev(), negative_mining_strategy="hard", reduction="none")
    np.testing.assert_allclose(to_numpy(loss(labels, x)), want, rtol=1e-6)


def test_a_subclass_that_redefines_the_distance_drops_the_product_form():
    """The pair engine's closed-form gradient describes the built-in ``pairwise_features``;
    a subclass that redefines the distance must not inherit it, one that only renames
    keeps it."""

    class Doubled(distances.Euclidean):
        def pairwise(self, x, y):
            return 2 * super().pairwise(x, y)

    class Renamed(distances.Euclidean):
        name = "renamed"

    assert Doubled().product_form is None
    assert Renamed().product_form == distances.Euclidean().product_form
    assert distances.get("manhattan").product_form is None
    assert Chebyshev().product_form is None
    for name in ("euclidean_norm", "euclidean", "squared_euclidean", "cosine"):
        assert distances.get(name).product_form is not None, name
