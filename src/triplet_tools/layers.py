"""Layers for embedding models."""

import keras
from keras import ops

from triplet_tools.distances import l2_normalize


@keras.saving.register_keras_serializable(package="triplet_tools")
class L2Embedding(keras.layers.Dense):
    """A dense projection followed by L2 normalisation, safe at the zero vector.

    ```
    z = activation(x @ kernel + bias)
    y = z / max(||z||, 1e-6)          (the zero vector stays zero, with a finite gradient)
    ```

    The norm is computed in at least float32, so the layer is stable under mixed precision;
    the output has the layer's compute dtype.

    Args:
        units: embedding width ``D``.
        **kwargs: any ``keras.layers.Dense`` argument (``activation``, ``use_bias``,
            ``kernel_initializer``, ``dtype``, ``name``, ...).

    Input shape: ``(..., input_dim)``. Output shape: ``(..., units)``, rows of unit norm.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> layer = L2Embedding(8)
    >>> y = layer(np.random.default_rng(0).normal(size=(4, 16)).astype("float32"))
    >>> np.allclose(np.linalg.norm(ops.convert_to_numpy(y), axis=1), 1.0, atol=1e-5)
    True

    Reference: the ``MetricEmbedding`` layer of TensorFlow Similarity, which this replaces.
    """

    def call(self, inputs):
        projected = super().call(inputs)
        wide = "float64" if self.compute_dtype == "float64" else "float32"
        return ops.cast(l2_normalize(ops.cast(projected, wide)), self.compute_dtype)
