"""The in-batch softmax losses (SPEC, "In-batch softmax losses at any batch size"):
``SupConLoss`` and ``InfoNCELoss``, against the NumPy float64 brute force of
reference_softmax.py (itself checked against pytorch-metric-learning 2.9 and
sentence-transformers by tests/peers/), on every backend, reduction and engine mode."""

import keras
import numpy as np
import pytest

import reference_softmax as rs
from backend import (
    BACKEND,
    COMPILE_IDS,
    COMPILE_MODES,
    compiled_value_and_grad,
    to_numpy,
    value_and_grad,
)
from pair_support import GRAD_TOL, VALUE_TOL, batch, save_and_reload
from triplet_tools.losses import InfoNCELoss, SupConLoss

REDUCTIONS = ["sum_over_batch_size", "mean", "mean_with_sample_weight", "sum", "none", None]

SUPCON_CASES = [{}, {"distance": "euclidean", "temperature": 0.5}]
SUPCON_IDS = ["cosine", "euclidean"]


def supcon_reference_kwargs(kwargs):
    return {
        "temperature": kwargs.get("temperature", 0.1),
        "distance_name": kwargs.get("distance", "cosine"),
    }


# --- SupConLoss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_kind", ["full", "uneven"])
@pytest.mark.parametrize("kwargs", SUPCON_CASES, ids=SUPCON_IDS)
def test_supcon_matches_reference(kwargs, batch_kind, engine_mode):
    labels, x = batch(batch_kind)
    loss = SupConLoss(**kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    ref = supcon_reference_kwargs(kwargs)
    np.testing.assert_allclose(value, rs.supcon_loss(labels, x, **ref), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.supcon_gradient(labels, x, **ref), **GRAD_TOL)


@pytest.mark.parametrize("kwargs", SUPCON_CASES, ids=SUPCON_IDS)
def test_supcon_compiled_matches_reference(kwargs, engine_mode):
    """Row blocks of 4 over 13 rows: a ragged last block."""
    labels, x = batch("uneven")
    loss = SupConLoss(block_size=4, **kwargs)
    value, grad = compiled_value_and_grad(lambda t: loss(labels, t), x)
    ref = supcon_reference_kwargs(kwargs)
    np.testing.assert_allclose(value, rs.supcon_loss(labels, x, **ref), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.supcon_gradient(labels, x, **ref), **GRAD_TOL)


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
def test_supcon_recomputed_blocks(compile_it, recomputed_blocks):
    labels, x = batch("uneven")
    label_tensor = keras.ops.convert_to_tensor(labels)
    loss = SupConLoss(block_size=4)
    run = compiled_value_and_grad if compile_it else value_and_grad
    value, grad = run(lambda t: loss(label_tensor, t), x)
    assert recomputed_blocks
    np.testing.assert_allclose(value, rs.supcon_loss(labels, x), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.supcon_gradient(labels, x), **GRAD_TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_supcon_reductions_and_sample_weight(reduction, weighted):
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32") if weighted else None
    got = to_numpy(SupConLoss(reduction=reduction)(labels, x, sample_weight=weights))
    want = rs.supcon_loss(labels, x, sample_weight=weights, reduction=reduction)
    if reduction in ("none", None):
        assert got.shape == (len(labels),)
    np.testing.assert_allclose(got, want, **VALUE_TOL)


def test_supcon_weighted_gradient(engine_mode):
    labels, x = batch("uneven")
    weights = np.linspace(0.2, 2.0, len(labels)).astype("float32")
    loss = SupConLoss(reduction="mean_with_sample_weight")
    _, grad = value_and_grad(lambda t: loss(labels, t, sample_weight=weights), x)
    want = rs.supcon_gradient(labels, x, sample_weight=weights, reduction="mean_with_sample_weight")
    np.testing.assert_allclose(grad, want, **GRAD_TOL)


def test_supcon_hand_worked():
    """Points 0, 1 (class 0), 3 (class 1), Euclidean, T = 1.

    anchor 0: P = {1} at 1, others at 1, 3: 1 + log(e^-1 + e^-3) = log(1 + e^-2)
    anchor 1: P = {0} at 1, others at 1, 2: log(1 + e^-1); anchor 3: invalid.
    """
    x = np.array([[0.0], [1.0], [3.0]], "float32")
    want = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0)), 0.0]
    got = to_numpy(SupConLoss(1.0, "euclidean", reduction="none")([0, 0, 1], x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7, 7, 7, 7], []], ids=["none", "one", "empty"])
def test_supcon_no_valid_anchor_gives_zero(labels):
    x = np.random.default_rng(0).normal(size=(len(labels), 3)).astype("float32")
    value, grad = value_and_grad(lambda t: SupConLoss()(np.array(labels, "int64"), t), x)
    assert value == 0.0 and np.all(grad == 0.0)


def test_supcon_small_temperature_is_finite():
    labels, x = batch("full")
    loss = SupConLoss(temperature=0.005)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    want = rs.supcon_loss(labels, x, temperature=0.005)
    np.testing.assert_allclose(value, want, rtol=1e-3)


# --- InfoNCELoss ---------------------------------------------------------------------------------


def pairs_batch(rows=5, hard=2, dim=3, seed=21):
    """``(B, 2 + h, D)`` embeddings and ``(B,)`` labels with repeated classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2 + hard, dim)).astype("float32")
    labels = np.arange(rows) % 3
    return x, labels


INFONCE_CASES = [
    ({}, 0),
    ({}, 2),
    ({"symmetric": True}, 1),
    ({"exclude_same_label": True}, 2),
    ({"exclude_same_label": True, "symmetric": True}, 1),
    ({"distance": "euclidean", "temperature": 0.7, "symmetric": True}, 2),
    ({"distance": "squared_euclidean", "temperature": 2.0, "exclude_same_label": True}, 0),
]
INFONCE_IDS = ["h0", "h2", "symmetric", "exclude", "exclude-symmetric", "euclidean", "sqeuclidean"]


def infonce_reference_kwargs(kwargs):
    ref = {k: v for k, v in kwargs.items() if k != "distance"}
    ref["distance_name"] = kwargs.get("distance", "cosine")
    ref.setdefault("temperature", 0.05)
    return ref


@pytest.mark.parametrize("kwargs,hard", INFONCE_CASES, ids=INFONCE_IDS)
def test_infonce_matches_reference(kwargs, hard, engine_mode):
    x, labels = pairs_batch(hard=hard)
    if "temperature" not in kwargs:
        kwargs = {**kwargs, "temperature": 0.5}  # gradients of order 1 for the tolerances
    loss = InfoNCELoss(**kwargs)
    value, grad = value_and_grad(lambda t: loss(labels, t), x)
    ref = infonce_reference_kwargs(kwargs)
    np.testing.assert_allclose(value, rs.infonce_loss(x, labels, **ref), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.infonce_gradient(x, labels, **ref), **GRAD_TOL)


def test_infonce_exclusion_changes_the_value():
    """Guards the data: the exclusion removes candidates on this batch."""
    x, labels = pairs_batch()
    plain = rs.infonce_loss(x, labels, temperature=0.5)
    excluded = rs.infonce_loss(x, labels, temperature=0.5, exclude_same_label=True)
    assert not np.isclose(plain, excluded, rtol=1e-3)


@pytest.mark.parametrize("kwargs", [{}, {"symmetric": True, "exclude_same_label": True}])
def test_infonce_compiled_matches_reference(kwargs, engine_mode):
    x, labels = pairs_batch(rows=7)
    loss = InfoNCELoss(temperature=0.5, block_size=2, **kwargs)
    label_tensor = keras.ops.convert_to_tensor(labels)
    value, grad = compiled_value_and_grad(lambda t: loss(label_tensor, t), x)
    ref = {"temperature": 0.5, **kwargs}
    np.testing.assert_allclose(value, rs.infonce_loss(x, labels, **ref), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.infonce_gradient(x, labels, **ref), **GRAD_TOL)


@pytest.mark.parametrize("compile_it", COMPILE_MODES, ids=COMPILE_IDS)
def test_infonce_recomputed_blocks(compile_it, recomputed_blocks):
    x, labels = pairs_batch(rows=7)
    label_tensor = keras.ops.convert_to_tensor(labels)
    kwargs = {"temperature": 0.5, "symmetric": True, "exclude_same_label": True}
    loss = InfoNCELoss(block_size=2, **kwargs)
    run = compiled_value_and_grad if compile_it else value_and_grad
    value, grad = run(lambda t: loss(label_tensor, t), x)
    assert recomputed_blocks
    np.testing.assert_allclose(value, rs.infonce_loss(x, labels, **kwargs), **VALUE_TOL)
    np.testing.assert_allclose(grad, rs.infonce_gradient(x, labels, **kwargs), **GRAD_TOL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_infonce_reductions_and_sample_weight(reduction, weighted):
    """Every query counts once: the default divides by B."""
    x, labels = pairs_batch()
    weights = np.linspace(0.2, 2.0, len(x)).astype("float32") if weighted else None
    loss = InfoNCELoss(symmetric=True, reduction=reduction)
    got = to_numpy(loss(None, x, sample_weight=weights))
    want = rs.infonce_loss(x, sample_weight=weights, reduction=reduction, symmetric=True)
    if reduction in ("none", None):
        assert got.shape == (len(x),)
    np.testing.assert_allclose(got, want, **VALUE_TOL)


def test_infonce_weighted_gradient(engine_mode):
    x, labels = pairs_batch()
    weights = np.linspace(0.2, 2.0, len(x)).astype("float32")
    kwargs = {"temperature": 0.5, "symmetric": True, "exclude_same_label": True}
    loss = InfoNCELoss(reduction="mean_with_sample_weight", **kwargs)
    _, grad = value_and_grad(lambda t: loss(labels, t, sample_weight=weights), x)
    want = rs.infonce_gradient(
        x, labels, sample_weight=weights, reduction="mean_with_sample_weight", **kwargs
    )
    np.testing.assert_allclose(grad, want, **GRAD_TOL)


def test_infonce_ignores_y_true_without_exclusion():
    x, _ = pairs_batch()
    loss = InfoNCELoss()
    values = [to_numpy(loss(y, x)) for y in (None, np.zeros((5, 7)), "anything")]
    np.testing.assert_allclose(values[1:], [values[0]] * 2, rtol=1e-6)


def test_infonce_single_pair_is_zero():
    """One query, one document, no other candidate: l = d/T - d/T = 0."""
    x = np.array([[[1.0, 0.0], [0.6, 0.8]]], "float32")
    value, grad = value_and_grad(lambda t: InfoNCELoss()(None, t), x)
    assert value == 0.0 and np.all(grad == 0.0)


def test_infonce_empty_batch_is_zero():
    assert float(to_numpy(InfoNCELoss()(None, np.zeros((0, 3, 2), "float32")))) == 0.0


@pytest.mark.parametrize(
    "shape", [(4, 3), (4, 1, 3), (4, 2, 0), (2, 4, 2, 3)], ids=["2d", "one-column", "no-dim", "4d"]
)
def test_infonce_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"y_pred must be \(batch_size, 2 \+ h, dim\)"):
        InfoNCELoss()(None, np.zeros(shape, "float32"))


def test_infonce_exclusion_needs_labels_of_the_batch():
    x, labels = pairs_batch()
    loss = InfoNCELoss(exclude_same_label=True)
    with pytest.raises(ValueError, match="needs y_true"):
        loss(None, x)
    with pytest.raises(ValueError, match=r"y_true.shape=\(4,\)"):
        loss(labels[:4], x)


@pytest.mark.parametrize("cls", [SupConLoss, InfoNCELoss])
@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_bad_temperature(cls, temperature):
    with pytest.raises(
        ValueError, match=f"temperature must be > 0; received temperature={temperature}"
    ):
        cls(temperature=temperature)


def test_infonce_takes_no_memory():
    with pytest.raises(ValueError, match="takes no memory"):
        InfoNCELoss(memory="memory")


# --- configuration, saving, training ------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        SupConLoss(temperature=0.2, distance="euclidean", reduction="sum", name="sc"),
        InfoNCELoss(temperature=0.1, symmetric=True, exclude_same_label=True, block_size=8),
    ],
    ids=["supcon", "infonce"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in config.values())
    assert type(loss).from_config(config).get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config


def test_defaults_in_config():
    assert {k: SupConLoss().get_config()[k] for k in ("temperature", "distance")} == {
        "temperature": 0.1,
        "distance": "cosine",
    }
    config = InfoNCELoss().get_config()
    assert {
        k: config[k] for k in ("temperature", "distance", "symmetric", "exclude_same_label")
    } == {
        "temperature": 0.05,
        "distance": "cosine",
        "symmetric": False,
        "exclude_same_label": False,
    }
    assert "memory" not in config and "positive_mining_strategy" not in config


def test_supcon_save_and_load_without_custom_objects(tmp_path):
    loss = SupConLoss(temperature=0.3)
    reloaded, expected_values = save_and_reload(tmp_path, [loss], fresh_process=True)
    assert reloaded[0]["class"] == "SupConLoss"
    assert reloaded[0]["config"] == loss.get_config()
    np.testing.assert_allclose(reloaded[0]["value"], expected_values[0], rtol=1e-5)


def two_tower_model(features=6, dim=4, hard=1):
    """The two-tower model of docs/losses.md: one encoder (shared weights) for the queries
    ``(B, F)`` and the documents ``(B, 1 + h, F)`` (positive first), output ``(B, 2 + h, D)``."""
    hidden = keras.layers.Dense(16, activation="relu")
    head = keras.layers.Dense(dim)
    query = keras.Input((features,), name="query")
    documents = keras.Input((1 + hard, features), name="documents")
    queries = keras.ops.expand_dims(head(hidden(query)), 1)
    outputs = keras.layers.Concatenate(axis=1)([queries, head(hidden(documents))])
    return keras.Model({"query": query, "documents": documents}, outputs)


def two_tower_data(rows=32, features=6, hard=1, seed=3):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(rows, features)).astype("float32")
    positive = query + 0.1 * rng.normal(size=query.shape).astype("float32")
    negatives = rng.normal(size=(rows, hard, features)).astype("float32")
    return {"query": query, "documents": np.concatenate([positive[:, None], negatives], 1)}


def test_two_tower_fit_without_targets_and_reload(tmp_path):
    """``model.fit(x)`` with no targets trains (the loss falls), the towers share weights,
    and the saved model reloads with its loss and no custom_objects."""
    keras.utils.set_random_seed(0)
    model = two_tower_model()
    model.compile(keras.optimizers.Adam(0.01), InfoNCELoss(temperature=0.1, symmetric=True))
    x = two_tower_data()
    assert len(model.trainable_weights) == 4
    history = model.fit(x, batch_size=8, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0]
    path = tmp_path / "two_tower.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.loss, InfoNCELoss)
    assert reloaded.loss.get_config() == model.loss.get_config()
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(
        to_numpy(reloaded.loss(None, out)), to_numpy(model.loss(None, out)), rtol=1e-6
    )
    assert np.isfinite(model.evaluate(x, verbose=0))


@pytest.mark.skipif(BACKEND != "torch", reason="a plain PyTorch training loop")
def test_plain_torch_loop_with_infonce():
    import torch

    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.01)
    loss_fn = InfoNCELoss(temperature=0.1)
    x = two_tower_data(hard=2)
    query = torch.as_tensor(x["query"])
    documents = torch.as_tensor(x["documents"])
    losses = []
    for _ in range(20):
        embeddings = torch.cat([encoder(query)[:, None], encoder(documents)], dim=1)
        loss = loss_fn(None, embeddings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
