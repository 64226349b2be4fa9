"""The input checks of the evaluation: embeddings, labels, groups, cut-offs and model inputs.

Shared by :func:`~triplet_tools.evaluation.retrieval_metrics`,
:func:`~triplet_tools.evaluation.verification_metrics` and the metrics callbacks; every
message names the argument, what was received and what is allowed.
"""

from numbers import Integral

import numpy as np
from keras import ops

from triplet_tools._validation import as_label_vector, check_int


def check_groups(query_groups, ref_groups, queries, references):
    """The group arrays as vectors of the right lengths, or ``(None, None)``."""
    if references is None:
        if ref_groups is not None:
            raise ValueError(
                "ref_groups needs ref_embeddings (leave-one-out takes query_groups alone); "
                f"received ref_groups={describe(ref_groups)} and ref_embeddings=None."
            )
    elif (query_groups is None) != (ref_groups is None):
        raise ValueError(
            "With a reference set, query_groups and ref_groups must be given together; "
            f"received query_groups={describe(query_groups)} and "
            f"ref_groups={describe(ref_groups)}."
        )
    if query_groups is None:
        return None, None
    query_groups = as_labels(query_groups, len(queries), "query_groups", "embeddings")
    if references is not None:
        ref_groups = as_labels(ref_groups, len(references), "ref_groups", "ref_embeddings")
    return query_groups, ref_groups


def check_cutoffs(k):
    """Returns the sorted distinct cut-offs of ``k`` (an int or ints >= 1), else ValueError."""
    try:
        values = (k,) if isinstance(k, Integral) else tuple(k)
        if not values:
            raise ValueError
        return tuple(sorted({check_int(c, "k", minimum=1) for c in values}))
    except (TypeError, ValueError):
        raise ValueError(
            f"k must be a positive int or a non-empty sequence of positive ints; received {k!r}."
        ) from None


def check_sets(embeddings, labels, ref_embeddings, ref_labels):
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError(
            "ref_embeddings and ref_labels must be given together; received "
            f"ref_embeddings={describe(ref_embeddings)} and ref_labels={describe(ref_labels)}."
        )
    queries = as_embeddings(embeddings, "embeddings")
    query_labels = as_labels(labels, len(queries), "labels", "embeddings")
    if ref_embeddings is None:
        return queries, query_labels, None, None
    references = as_embeddings(ref_embeddings, "ref_embeddings")
    reference_labels = as_labels(ref_labels, len(references), "ref_labels", "ref_embeddings")
    if references.shape[1] != queries.shape[1]:
        raise ValueError(
            "embeddings and ref_embeddings must have the same width; received shapes "
            f"{queries.shape} and {references.shape}."
        )
    if references.dtype != queries.dtype:
        references, queries = references.astype(np.float64), queries.astype(np.float64)
    return queries, query_labels, references, reference_labels


def as_embeddings(x, argument):
    array = np.asarray(ops.convert_to_numpy(x) if is_tensor(x) else x)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(
            f"{argument} must be a non-empty (N, D) array; received shape {array.shape}."
        )
    if not is_numeric(array.dtype):
        raise ValueError(f"{argument} must be numeric; received dtype {array.dtype}.")
    array = array.astype(np.float64 if array.dtype == np.float64 else np.float32)
    check_finite(array, argument, "")
    return array


def is_numeric(dtype):
    """NumPy's numbers, and the float types NumPy does not know (bfloat16, float8: ml_dtypes,
    which JAX, TensorFlow and Keras use, registers them as unstructured ``V`` dtypes)."""
    if dtype.kind in "fiub":
        return True
    if dtype.kind != "V" or dtype.names is not None:
        return False
    try:
        np.zeros(1, dtype).astype(np.float32)
    except (TypeError, ValueError):
        return False
    return True


def as_labels(y, size, argument, rows):
    array = as_label_vector(ops.convert_to_numpy(y) if is_tensor(y) else y, size, argument, rows)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{argument} contain {bad} NaN or infinite values; class labels must "
            "be finite (a NaN label belongs to no class)."
        )
    return array


def check_finite(array, what, hint):
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        hint = f" {hint}" if hint else ""
        raise ValueError(f"{what} contain {bad} NaN or infinite values{hint}.")


def count_inputs(x, argument):
    """The number of samples in model inputs ``x`` (an array, a tensor or a dict of them),
    after checking that every float input is finite: a NaN input gives a NaN embedding, and
    the error is clearer now than after the first epoch."""
    arrays = (
        list(x.values())
        if isinstance(x, dict)
        else list(x)
        if isinstance(x, (list, tuple))
        else [x]
    )
    if not arrays or any(a is None or not hasattr(a, "shape") or len(a.shape) == 0 for a in arrays):
        raise ValueError(
            f"{argument} must be model inputs: an array or tensor of shape (N, ...) "
            f"or a dict of them; received {describe_inputs(x)}."
        )
    sizes = {int(a.shape[0]) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(
            f"{argument}: every input must have the same number of rows; received "
            f"{describe_inputs(x)}."
        )
    for array in arrays:
        array = np.asarray(ops.convert_to_numpy(array) if is_tensor(array) else array)
        if array.dtype.kind == "f" or (array.dtype.kind == "V" and is_numeric(array.dtype)):
            check_finite(
                array.astype(np.float32, copy=False) if array.dtype.kind == "V" else array,
                argument,
                "(the model would embed them as NaN)",
            )
    return sizes.pop()


def describe_inputs(x):
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {describe_inputs(v)}" for k, v in x.items()) + "}"
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else f"{type(x).__name__} {x!r:.60}"


def is_tensor(x):
    return not isinstance(x, (np.ndarray, list, tuple)) and ops.is_tensor(x)


def describe(x):
    return "None" if x is None else f"an array of shape {np.shape(x)}"
