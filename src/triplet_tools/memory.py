"""Cross-batch memory (XBM): earlier batches' embeddings as extra references for mining.

Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020. A small batch holds
few negatives per anchor; a memory of the last ``size`` embeddings (stored without gradient)
lets every anchor also mine among them, at the cost of comparing against slightly stale
embeddings. It helps most when the batch is small compared to the number of classes, and
after the embedding has stabilised (a warm-up of a few epochs without memory is common).

How it fits Keras: the memory is a pass-through layer at the end of your model, so its
state lives in the model's non-trainable variables (carried by ``jax.jit`` training steps,
saved with the model); the loss is told about it and, during training, mines against
``batch + memory`` and then records the batch::

    memory = CrossBatchMemory(size=4096)
    model = keras.Sequential([..., L2Embedding(64), memory])
    model.compile("adam", TripletLoss(memory=memory))

During evaluation and prediction the memory is used but not written. A loss is bound to
one layer object: after ``keras.models.load_model`` the deserialised loss binds, when it is
built, to the memory layer of that name that was created last (the one ``load_model`` has
just built), so two models loaded from one file each keep their own memory.
"""

import weakref
from typing import Any

import keras
from keras import ops

from triplet_tools._inputs import backend_has_int64
from triplet_tools._validation import check_int

# Layers by name, so a deserialised loss can find the memory of the model loaded with it.
_LAYERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


@keras.saving.register_keras_serializable(package="triplet_tools")
class CrossBatchMemory(keras.layers.Layer):
    """Keeps the last ``size`` embeddings and labels seen in training; returns its input.

    ```
    references(batch) = [batch embeddings ; stored embeddings]      (stored: no gradient)
    after a training step: stored <- last `size` rows of [stored ; batch]   (a ring buffer)
    ```

    Slots not yet written are never chosen by the miner. With ``size=0`` the loss is the
    plain in-batch loss.

    Args:
        size: how many embeddings to keep (``M >= 0``).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Input shape: ``(B, D)`` embeddings; output: the same tensor.

    Example:

    >>> import numpy as np, keras
    >>> from triplet_tools.losses import TripletLoss
    >>> memory = CrossBatchMemory(size=32)
    >>> model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), memory])
    >>> model.compile("sgd", TripletLoss(memory=memory))
    >>> x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    >>> _ = model.fit(x, np.arange(32) % 4, batch_size=8, epochs=1, verbose=0)
    >>> int(memory.filled.value)
    32
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = check_int(size, "size", minimum=0)
        _LAYERS[self.name] = self

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"CrossBatchMemory expects embeddings of shape (batch, dim); received "
                f"input shape {tuple(input_shape)}."
            )
        self.embeddings = self.add_weight(
            shape=(self.size, input_shape[-1]),
            initializer="zeros",
            trainable=False,
            name="embeddings",
            dtype="float32",
        )
        # Class ids as wide as the backend holds them (int32 on JAX without x64, where
        # the losses refuse larger ids), so a stored id never wraps.
        label_dtype = "int64" if backend_has_int64() else "int32"
        self.labels = self.add_weight(
            shape=(self.size,),
            initializer="zeros",
            trainable=False,
            name="labels",
            dtype=label_dtype,
        )
        # Next slot to write, and how many slots hold data (at most `size`).
        self.position = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="position", dtype="int32"
        )
        self.filled = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="filled", dtype="int32"
        )
        # 1 while the model runs in training mode: only training batches are recorded.
        self.recording = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="recording", dtype="int32"
        )
        # The contents as the last loss call saw them, before it recorded its batch, so
        # that MiningStatistics (which Keras runs after the loss) mines what the loss mined.
        self.previous_embeddings = self.add_weight(
            shape=(self.size, input_shape[-1]),
            initializer="zeros",
            trainable=False,
            name="previous_embeddings",
            dtype="float32",
        )
        self.previous_labels = self.add_weight(
            shape=(self.size,),
            initializer="zeros",
            trainable=False,
            name="previous_labels",
            dtype=label_dtype,
        )
        self.previous_filled = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="previous_filled", dtype="int32"
        )

    def call(self, inputs, training=None):
        self.recording.assign(ops.cast(bool(training), "int32"))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def contents(self, before_last_record=False):
        """``(embeddings (M, D), labels (M,), written (M,) bool)`` as stored now, or (with
        ``before_last_record``) as the last :meth:`record` found them."""
        if before_last_record:
            embeddings, labels, filled = (
                self.previous_embeddings,
                self.previous_labels,
                self.previous_filled,
            )
        else:
            embeddings, labels, filled = self.embeddings, self.labels, self.filled
        written = ops.arange(self.size, dtype="int32") < filled.value
        return embeddings.value, labels.value, written

    def record(self, embeddings, labels):
        """Writes a batch into the ring buffer (only while ``recording``); no gradient."""
        if self.size == 0:
            return
        self.previous_embeddings.assign(self.embeddings.value)
        self.previous_labels.assign(self.labels.value)
        self.previous_filled.assign(self.filled.value)
        embeddings = ops.stop_gradient(ops.cast(embeddings, "float32"))[-self.size :]
        labels = ops.cast(labels, self.labels.dtype)[-self.size :]
        rows = embeddings.shape[0] if embeddings.shape[0] is not None else ops.shape(embeddings)[0]
        slots = (self.position.value + ops.arange(rows, dtype="int32")) % self.size
        on = ops.cast(self.recording.value, "bool")
        updated = ops.scatter_update(self.embeddings.value, slots[:, None], embeddings)
        self.embeddings.assign(ops.where(on, updated, self.embeddings.value))
        updated = ops.scatter_update(self.labels.value, slots[:, None], labels)
        self.labels.assign(ops.where(on, updated, self.labels.value))
        self.position.assign(
            ops.where(on, (self.position.value + rows) % self.size, self.position.value)
        )
        self.filled.assign(
            ops.where(on, ops.minimum(self.filled.value + rows, self.size), self.filled.value)
        )

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def check_memory(memory):
    """Validates a loss's ``memory`` argument: ``None``, a layer, or a layer name."""
    if memory is None or isinstance(memory, (CrossBatchMemory, str)):
        return memory
    raise ValueError(
        "memory must be a triplet_tools.memory.CrossBatchMemory layer of the model, its "
        f"name, or None; received {memory!r}."
    )


def memory_name(memory):
    return memory if isinstance(memory, str) else memory.name


def lookup(memory):
    """The layer itself, or the :class:`CrossBatchMemory` of that name created last, or
    ``None`` when no such layer exists (yet)."""
    if memory is None or isinstance(memory, CrossBatchMemory):
        return memory
    return _LAYERS.get(memory)


def resolve(memory):
    """The built :class:`CrossBatchMemory` for a layer or a layer name (after loading a model)."""
    layer = lookup(memory)
    if layer is None:
        raise ValueError(
            f"No CrossBatchMemory layer named {memory!r} exists; build or load the model "
            "that contains it before computing the loss."
        )
    if not layer.built:
        raise ValueError(
            f"The CrossBatchMemory layer {layer.name!r} is not built: it must be part of the "
            "model, after the embedding layer."
        )
    return layer
