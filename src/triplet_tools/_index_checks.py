"""The input checks of :class:`~triplet_tools.index.EmbeddingIndex`: each a one-line
``ValueError`` naming what was received."""

from numbers import Integral

import numpy as np
from keras import ops

from triplet_tools._validation import as_label_vector


def as_rows(x, argument, dim, allow_empty=False):
    array = np.asarray(ops.convert_to_numpy(x) if ops.is_tensor(x) else x)
    if array.ndim != 2 or (array.shape[0] == 0 and not allow_empty) or array.shape[1] == 0:
        raise ValueError(
            f"{argument} must be a non-empty (N, D) array; received shape {array.shape}."
        )
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{argument} must have width {dim}, the index's; received shape {array.shape}."
        )
    try:
        array = array.astype(np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{argument} must be numeric; received dtype {array.dtype}.") from None
    bad = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
    if len(bad):
        raise ValueError(
            f"{argument} must be finite; received {len(bad)} rows with NaN or infinity "
            f"(rows {show(bad)})."
        )
    return array


def as_labels(labels, count, existing):
    array = as_label_vector(
        ops.convert_to_numpy(labels) if ops.is_tensor(labels) else labels,
        count,
        "labels",
        "the rows",
    )
    if array.dtype.kind in "OSU":
        if not all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in array.tolist()):
            raise ValueError("labels must all be integers or all strings; received a mix.")
        array = array.astype(str)
    elif array.dtype.kind in "iub":
        array = array.astype(np.int64)
    elif array.dtype.kind == "f" and np.all(np.isfinite(array)):
        array = array.astype(np.float64)
    else:
        raise ValueError(
            f"labels must be integers, strings or finite floats; received dtype {array.dtype}."
        )
    if existing is not None and (array.dtype.kind == "U") != (existing.dtype.kind == "U"):
        raise ValueError(
            f"labels must be of the index's kind ({existing.dtype}); received {array.dtype}."
        )
    return array


def as_ids(ids, argument):
    array = np.asarray(ops.convert_to_numpy(ids) if ops.is_tensor(ids) else ids)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(
            f"{argument} must be a 1-D array of integers; received dtype {array.dtype} "
            f"and shape {array.shape}."
        )
    if array.dtype == np.uint64 and np.any(array > np.iinfo(np.int64).max):
        raise ValueError(f"{argument} must fit int64; received {show(array)}.")
    return array.astype(np.int64)


def check_unknown(unknown, labels):
    if labels.dtype.kind == "U":
        ok = isinstance(unknown, str)
        kind = "a string (e.g. 'unknown')"
    else:
        integral = isinstance(unknown, Integral) and not isinstance(unknown, bool)
        ok = integral or (labels.dtype.kind == "f" and isinstance(unknown, float))
        kind = "an integer (e.g. -1)" if labels.dtype.kind != "f" else "a number"
    if not ok:
        raise ValueError(
            f"unknown must be {kind} for labels of dtype {labels.dtype}; received {unknown!r}."
        )


def show(values, limit=5):
    values = np.asarray(values).tolist()
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")
