"""Input conversion for every loss: class ids, embeddings and sample weights, checked once.

* Class ids are compared for equality only, so they never pass through a float dtype:
  integer ids keep their dtype (int64 stays int64 where the backend has it), float arrays
  holding whole numbers become integers, and everything else that can be checked on the
  host (NumPy arrays, lists, eager tensors) is refused with a ``ValueError``: strings,
  non-integral or non-finite floats, ids outside what the backend can hold. Float ids
  that arrive inside a traced function (``model.fit`` casts nothing, but a user's graph
  may) are compared as floats, never truncated.
* Embeddings must be ``(B, D)`` with ``D >= 1``; they are computed in at least float32.
* ``sample_weight`` must be ``(B,)`` or ``(B, 1)``.
"""

import keras
import numpy as np

from triplet_tools._ops import ops

STRING_LABELS_ERROR = (
    "class ids must be integers; map string labels to ids first, e.g. with "
    "numpy.unique(..., return_inverse=True)"
)
_INT32 = np.iinfo(np.int32)


def _is_backend_tensor(x):
    return not isinstance(x, (np.ndarray, np.generic, list, tuple, int, float))


def backend_has_int64():
    """Whether the backend keeps int64 tensors (JAX does only with ``jax_enable_x64``)."""
    dtype = ops.convert_to_tensor(np.zeros((1,), np.int64)).dtype
    return keras.backend.standardize_dtype(dtype) == "int64"


def _host_values(y_true):
    """``y_true`` as a NumPy array when its values need a check and can be read now.

    Host data is always checked. A backend tensor only when it holds floats (an integer
    tensor already holds valid ids) and is not being traced.
    """
    if not _is_backend_tensor(y_true):
        return np.asarray(y_true)
    dtype = str(getattr(y_true, "dtype", ""))
    if "string" in dtype:
        raise ValueError(f"{STRING_LABELS_ERROR}; received a tensor of dtype {dtype}.")
    if "float" not in dtype and "half" not in dtype and "double" not in dtype:
        return None
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if not tf.executing_eagerly():
                return None
        elif keras.backend.backend() == "jax":
            import jax

            if isinstance(y_true, jax.core.Tracer):
                return None
        elif keras.backend.backend() == "torch":
            import torch

            if torch.compiler.is_compiling():
                return None
        return np.asarray(keras.ops.convert_to_numpy(y_true))
    except Exception:  # a symbolic tensor of some other kind: leave it to the backend
        return None


def check_label_values(values):
    """Refuses class ids that cannot stand for classes; returns them as integers.

    Raises:
        ValueError: for strings or objects, non-finite or non-integral floats, and ids
            outside the range the backend holds (int32 without int64 support).
    """
    if values.dtype.kind in "OUSV":
        raise ValueError(f"{STRING_LABELS_ERROR}; received dtype {values.dtype}.")
    if values.dtype.kind == "b":
        return values.astype(np.int32)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"class ids must be finite; received {int(bad.sum())} NaN or infinite "
                f"value(s) in y_true (first at position {int(np.flatnonzero(bad.ravel())[0])})."
            )
        fractional = values != np.round(values)
        if fractional.any():
            first = values.ravel()[np.flatnonzero(fractional.ravel())[0]]
            raise ValueError(
                "class ids must be whole numbers; received a float y_true with "
                f"non-integral values (e.g. {first!r}), which would otherwise be truncated."
            )
        values = values.astype(np.int64)
    if values.dtype.kind in "iu" and values.size and not backend_has_int64():
        low, high = int(values.min()), int(values.max())
        if low < _INT32.min or high > _INT32.max:
            raise ValueError(
                f"class ids must lie in [{_INT32.min}, {_INT32.max}] on the "
                f"{keras.backend.backend()} backend without 64-bit integers; received ids "
                f"from {low} to {high}. Map them to 0..C-1 first (numpy.unique(..., "
                "return_inverse=True)), or enable jax_enable_x64."
            )
    return values


def prepare_labels(y_true):
    """Converts ``y_true`` to a backend tensor of class ids without going through a float dtype.

    Integer dtypes are kept (int64 stays int64 where the backend has it); host arrays are
    checked by :func:`check_label_values`. Float ids inside a traced function stay floats
    (compared for equality, never truncated).
    """
    values = _host_values(y_true)
    if values is not None:
        checked = check_label_values(values)
        if checked is not values or not _is_backend_tensor(y_true):
            y_true = checked
    labels = ops.convert_to_tensor(y_true)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if dtype == "bool":
        labels = ops.cast(labels, "int32")
    return labels


def validate_inputs(y_true, y_pred, compute_dtype=None):
    """Checks ranks, widths and batch sizes; returns ``(labels (B,), embeddings (B, D))``.

    Embeddings are cast to ``compute_dtype`` if given, else to at least float32
    (float16 / bfloat16 are computed in float32; float64 stays float64).

    Raises:
        ValueError: when ``y_pred`` is not ``(B, D)`` with ``D >= 1``, ``y_true`` is not
            ``(B,)`` or ``(B, 1)``, or the two batch sizes differ; the message names both
            shapes. Also for class ids that :func:`check_label_values` refuses.
    """
    labels = prepare_labels(y_true)
    embeddings = ops.convert_to_tensor(y_pred)
    shapes = (
        f"received y_true.shape={tuple(labels.shape)} and y_pred.shape={tuple(embeddings.shape)}"
    )
    if len(embeddings.shape) != 2:
        raise ValueError(f"y_pred must be embeddings of shape (batch_size, dim); {shapes}.")
    if embeddings.shape[1] == 0:
        raise ValueError(f"y_pred must have at least one feature (dim >= 1); {shapes}.")
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            f"y_true must be class ids of shape (batch_size,) or (batch_size, 1); {shapes}."
        )
    if (
        labels.shape[0] is not None
        and embeddings.shape[0] is not None
        and labels.shape[0] != embeddings.shape[0]
    ):
        raise ValueError(f"y_true and y_pred must have the same batch size; {shapes}.")
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if "float" not in dtype:
        raise ValueError(f"y_pred must be floating-point embeddings; received dtype {dtype}.")
    if compute_dtype is None:
        compute_dtype = "float64" if dtype == "float64" else "float32"
    if dtype != compute_dtype:
        embeddings = ops.cast(embeddings, compute_dtype)
    return labels, embeddings


def sample_weights(sample_weight, num_rows, dtype):
    """``sample_weight`` as a ``(B,)`` tensor of ``dtype``, or ``None``.

    Raises:
        ValueError: when it is not ``(B,)`` or ``(B, 1)`` for a batch of ``num_rows``; the
            message names both shapes.
    """
    if sample_weight is None:
        return None
    weights = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
    received = tuple(weights.shape)
    if len(weights.shape) == 2 and weights.shape[1] == 1:
        weights = ops.reshape(weights, (-1,))
    wrong_rank = len(weights.shape) != 1
    wrong_length = (
        not wrong_rank
        and weights.shape[0] is not None
        and num_rows is not None
        and weights.shape[0] != num_rows
    )
    if wrong_rank or wrong_length:
        raise ValueError(
            "sample_weight must have shape (batch_size,) or (batch_size, 1); received "
            f"sample_weight.shape={received} for a "
            f"batch of {num_rows} rows (y_pred.shape[0])."
        )
    return weights
