"""The losses in legacy tf_keras (Keras 2) model.fit, where TF Similarity and tfa users are.

Run with TF_USE_LEGACY_KERAS=1 KERAS_BACKEND=tensorflow (the Makefile's legacy leg).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import reference as ref
from triplet_tools import PNLoss, TripletLoss, triplet_batch_hard_loss
from triplet_tools.legacy import TFKerasLoss, to_tf_keras

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover - wrong leg
    raise RuntimeError("tests/legacy must run with TF_USE_LEGACY_KERAS=1")

import tf_keras  # noqa: E402

assert tf.keras.Sequential is tf_keras.Sequential


def _data():
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(8), 8)
    return rng.normal(size=(64, 6)).astype("float32") + labels[:, None] * 0.2, labels


def _model():
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(16, activation="relu", input_shape=(6,)), tf.keras.layers.Dense(4)]
    )


@pytest.mark.parametrize("wrap", [False, True])
def test_fit_and_evaluate_match_the_reference(wrap):
    x, labels = _data()
    loss = PNLoss(distance="euclidean", margin=0.5)
    model = _model()
    model.compile(tf.keras.optimizers.SGD(0.01), to_tf_keras(loss) if wrap else loss)
    history = model.fit(x, labels, batch_size=32, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    embeddings = model.predict(x, batch_size=64, verbose=0)
    want = ref.loss_value(labels, embeddings, loss="pn", distance_name="euclidean", margin=0.5)
    np.testing.assert_allclose(model.evaluate(x, labels, batch_size=64, verbose=0), want, rtol=1e-4)


def test_sample_weight_goes_per_anchor_through_the_adapter():
    x, labels = _data()
    model = _model()
    model.compile("sgd", to_tf_keras(TripletLoss(distance="euclidean_norm")), weighted_metrics=[])
    weights = np.linspace(0.1, 1.0, len(labels)).astype("float32")
    embeddings = model.predict(x, batch_size=64, verbose=0)
    losses, valid = ref.per_anchor(labels, embeddings, distance_name="euclidean_norm")
    got = model.evaluate(x, labels, sample_weight=weights, batch_size=64, verbose=0)
    np.testing.assert_allclose(got, ref.reduce(losses, valid, weights), rtol=1e-4)


def test_adapter_save_and_load(tmp_path):
    x, labels = _data()
    model = _model()
    model.compile("adam", to_tf_keras(triplet_batch_hard_loss(margin=0.3)))
    model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "legacy.keras")
    model.save(path)
    restored = tf.keras.models.load_model(path)
    assert isinstance(restored.loss, TFKerasLoss)
    assert restored.loss.loss.get_config()["margin"] == 0.3
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        restored.evaluate(x, labels, batch_size=64, verbose=0),
        model.evaluate(x, labels, batch_size=64, verbose=0),
        rtol=1e-5,
    )
