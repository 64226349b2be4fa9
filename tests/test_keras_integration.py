"""Config round trips, Keras serialization, model.fit, recompiling, saving and loading."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reference as ref
from backend import to_numpy
from triplet_tools import (
    PNLoss,
    PrimingLoss,
    TripletLoss,
    triplet_batch_hard_loss,
    triplet_batch_priming_loss,
    triplet_batch_semihard_loss,
)
from triplet_tools.layers import L2Embedding

LOSSES = [
    TripletLoss(),
    TripletLoss(
        distance="l1",
        positive_mining_strategy="easy",
        negative_mining_strategy="easy",
        margin=0.3,
        semi_margin=0.1,
        reduction="sum",
        name="t",
        block_size=16,
    ),
    PNLoss(soft_margin=True, distance="sql2", dtype="float32"),
    PrimingLoss(distance="cosine", reduction="none"),
]


def _data(n=64, dim=6, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(classes), n // classes)
    x = rng.normal(size=(n, dim)).astype("float32") + labels[:, None] * 0.1
    return x, labels


@pytest.mark.parametrize("loss", LOSSES, ids=lambda case: case.name)
def test_config_round_trip(loss):
    config = loss.get_config()
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in config.values())
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    x, labels = _data(16)
    np.testing.assert_allclose(to_numpy(restored(labels, x)), to_numpy(loss(labels, x)), rtol=1e-6)


def test_seed_functions_are_the_documented_losses():
    assert (
        triplet_batch_hard_loss(0.3, "cosine").get_config()
        == TripletLoss(distance="cosine", negative_mining_strategy="hard", margin=0.3).get_config()
    )
    assert (
        triplet_batch_semihard_loss(0.5, 0.1, "l2").get_config()
        == TripletLoss(distance="l2", margin=0.5, semi_margin=0.1).get_config()
    )
    assert triplet_batch_semihard_loss().get_config()["distance"] == "euclidean_norm"
    assert (
        triplet_batch_priming_loss("sql2").get_config() == PrimingLoss(distance="sql2").get_config()
    )


def _model(dim=6):
    return keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(16, activation="relu"), L2Embedding(4)]
    )


def test_fit_then_recompile_with_another_loss_keeps_training_the_same_weights():
    keras.utils.set_random_seed(0)
    x, labels = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.05), triplet_batch_priming_loss())
    first = model.fit(x, labels, batch_size=32, epochs=2, verbose=0, shuffle=False)
    weights = [w.copy() for w in model.get_weights()]
    model.compile(keras.optimizers.SGD(0.05), triplet_batch_semihard_loss(margin=0.5))
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    second = model.fit(x, labels, batch_size=32, epochs=3, verbose=0, shuffle=False)
    after = model.evaluate(x, labels, batch_size=64, verbose=0)
    assert np.isfinite(first.history["loss"]).all() and np.isfinite(second.history["loss"]).all()
    assert not all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    # evaluate() reports exactly the loss of the whole batch, computed by the reference.
    embeddings = to_numpy(model.predict(x, batch_size=64, verbose=0))
    np.testing.assert_allclose(
        after,
        ref.loss_value(labels, embeddings, distance_name="euclidean_norm", margin=0.5),
        rtol=1e-4,
    )


def test_fit_with_sample_weight_and_int64_labels():
    x, labels = _data()
    model = _model()
    model.compile("adam", PNLoss(distance="euclidean"))
    weights = np.linspace(0.1, 1.0, len(labels)).astype("float32")
    history = model.fit(
        x,
        labels.astype(np.int64) + 2**30,
        sample_weight=weights,
        batch_size=16,
        epochs=1,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"]).all()


def test_save_and_load_without_custom_objects(tmp_path):
    """Saving stores the loss by its registered name; a fresh process that imports
    triplet_tools reloads the model without custom_objects."""
    x, labels = _data()
    model = _model()
    model.compile("adam", PNLoss(distance="euclidean", margin=0.7, semi_margin=0.05))
    model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    expected_predictions = to_numpy(model.predict(x, verbose=0))
    expected_loss = model.evaluate(x, labels, batch_size=64, verbose=0)
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        import triplet_tools  # registers the losses and layers
        model = keras.models.load_model({str(path)!r})
        x = np.load({str(tmp_path / "x.npy")!r}); y = np.load({str(tmp_path / "y.npy")!r})
        print(json.dumps({{"loss": type(model.loss).__name__, "config": model.loss.get_config(),
                          "eval": float(model.evaluate(x, y, batch_size=64, verbose=0))}}))
        pred = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
        np.save({str(tmp_path / "pred.npy")!r}, pred)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=True,
    )
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loss"] == "PNLoss"
    assert result["config"]["margin"] == 0.7 and result["config"]["distance"] == "euclidean"
    np.testing.assert_allclose(np.load(tmp_path / "pred.npy"), expected_predictions, rtol=1e-6)
    np.testing.assert_allclose(result["eval"], expected_loss, rtol=1e-5)


def test_l2_embedding_layer():
    x, _ = _data(8)
    layer = L2Embedding(5, use_bias=False)
    y = to_numpy(layer(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    zero = to_numpy(layer(np.zeros((2, 6), "float32")))
    assert np.all(zero == 0.0)
    clone = L2Embedding.from_config(layer.get_config())
    assert clone.units == 5 and clone.use_bias is False
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, L2Embedding)


def test_l2_embedding_gradient_is_finite_at_zero():
    from backend import value_and_grad

    layer = L2Embedding(3, kernel_initializer="zeros")
    layer.build((None, 4))
    _, grad = value_and_grad(lambda t: keras.ops.sum(layer(t)), np.ones((2, 4), "float32"))
    assert np.all(np.isfinite(grad))


def test_l2_embedding_mixed_precision():
    layer = L2Embedding(4, dtype="mixed_float16")
    y = layer(np.full((3, 8), 300.0, "float32"))  # squared norms overflow float16
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(
        np.linalg.norm(to_numpy(y).astype("float32"), axis=1), 1.0, rtol=1e-2
    )
