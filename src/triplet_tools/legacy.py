"""Using the losses in legacy ``tf_keras`` (Keras 2) models.

TensorFlow Similarity and tensorflow-addons users train ``tf_keras`` models
(``TF_USE_LEGACY_KERAS=1``). Every triplet_tools loss can be passed to a ``tf_keras``
``model.compile`` directly; ``tf_keras`` then wraps it as a plain function and applies
``sample_weight`` itself, by scaling the already-reduced loss. :func:`to_tf_keras` returns a
real ``tf_keras`` loss instead, which hands ``sample_weight`` to the triplet loss so that
weights apply per anchor exactly as SPEC defines, and which ``tf_keras`` can save and reload.

Run with ``KERAS_BACKEND=tensorflow`` (the default) and ``pip install triplet-tools[legacy]``.
"""

import keras
import tf_keras

_REDUCTIONS = {"sum": "sum", "none": "none", None: "none"}


@tf_keras.saving.register_keras_serializable(package="triplet_tools")
class TFKerasLoss(tf_keras.losses.Loss):
    """A ``tf_keras.losses.Loss`` that delegates to a triplet_tools loss.

    ```
    TFKerasLoss(loss)(y_true, y_pred, sample_weight) == loss(y_true, y_pred, sample_weight)
    ```

    Args:
        loss: a triplet_tools loss (``TripletLoss``, ``PNLoss``, ``PrimingLoss``, or one of
            the three seed functions' results), or its ``keras.losses.serialize`` dict.
        name: defaults to the wrapped loss's name.

    Example:

    >>> import numpy as np
    >>> from triplet_tools import triplet_batch_semihard_loss
    >>> legacy_loss = to_tf_keras(triplet_batch_semihard_loss(margin=0.5))
    >>> model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(6,))])
    >>> model.compile("adam", legacy_loss)
    >>> x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    >>> _ = model.fit(x, np.repeat(np.arange(4), 4), epochs=1, verbose=0)
    """

    def __init__(self, loss, name=None, **kwargs):
        if isinstance(loss, dict):
            loss = keras.losses.deserialize(loss)
        reduction = _REDUCTIONS.get(loss.reduction, "sum_over_batch_size")
        kwargs.pop("reduction", None)
        super().__init__(reduction=reduction, name=name or loss.name, **kwargs)
        self.loss = loss

    def __call__(self, y_true, y_pred, sample_weight=None):
        return self.loss(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true, y_pred):
        return self.loss.call(y_true, y_pred)

    def get_config(self):
        return {"loss": keras.losses.serialize(self.loss), "name": self.name}


def to_tf_keras(loss):
    """Wraps a triplet_tools loss as a ``tf_keras.losses.Loss`` (see :class:`TFKerasLoss`).

    Example:

    >>> from triplet_tools import PNLoss
    >>> to_tf_keras(PNLoss()).name
    'PNLoss'
    """
    return TFKerasLoss(loss)
