"""Data for the demo: scikit-learn's bundled digits, or the user's ``.npz`` / ``.csv`` file.

File formats (``triplet-tools demo --data FILE``):

* ``.npz``: arrays ``x`` of shape ``(N, D)`` (numeric features) and ``y`` of shape ``(N,)``
  (class labels: integers or strings), e.g. ``np.savez("mine.npz", x=x, y=y)``.
* ``.csv``: comma-separated UTF-8 (a byte-order mark, as Excel's "CSV UTF-8" writes, is
  fine) with a header row; the one column named ``label`` (or the one given by
  ``label_column``) holds the class labels, every other column is a numeric feature. Features
  must fit in float32 (about +-3.4e38).

Labels are mapped to ``0 .. C-1`` in sorted order; :attr:`Dataset.class_names` keeps the
originals.
"""

import contextlib
import csv
import os
import zipfile
from typing import NamedTuple

import numpy as np

from triplet_tools._validation import as_label_vector


class DataError(ValueError):
    """Bad input data; its message is one line meant for the user."""


class Dataset(NamedTuple):
    """Features ``x`` ``(N, D)`` float32, labels ``y`` ``(N,)`` int in ``0 .. C-1``, names."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple
    description: str


def load_digits():
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no download).

    Example:

    >>> digits = load_digits()
    >>> digits.x.shape, digits.class_names[:3]
    ((1797, 64), (0, 1, 2))
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # the demo extra is missing
        raise DataError(
            "the demo needs scikit-learn and matplotlib: pip install 'triplet-tools[demo]'"
        ) from error
    digits = sklearn_digits()
    return _dataset(digits.data, digits.target, "scikit-learn digits (8x8 pixels, 0-16)")


def load_file(path, label_column="label"):
    """Loads a ``.npz`` or ``.csv`` file (see the module docstring) as a :class:`Dataset`.

    Args:
        path: the file; its extension (``.npz`` or ``.csv``) picks the format.
        label_column: the header name of a ``.csv`` file's label column (default ``"label"``).

    Raises:
        DataError: a missing or unreadable file (or a folder), a missing array or column, a
            label column named twice, wrong shapes, non-numeric or non-finite features or
            ones that overflow float32, or fewer than two classes.

    Example:

    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "mine.npz")
    >>> np.savez(path, x=np.zeros((4, 2)), y=np.array(["b", "a", "b", "a"]))
    >>> data = load_file(path)
    >>> data.x.shape, data.y.tolist(), data.class_names
    ((4, 2), [1, 0, 1, 0], ('a', 'b'))
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; --data takes a .npz or .csv file")
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        x, y = _read_npz(path)
    elif extension == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise DataError(
            f"{path}: unsupported file type {extension or '(none)'!r}; "
            "use .npz (arrays x and y) or .csv (a header row and a "
            f"{label_column!r} column)"
        )
    return _dataset(x, y, os.path.basename(path), source=path)


def holdout_split(labels, fraction=0.3, seed=0):
    """Boolean mask of the held-out rows: ``round(fraction * n)`` random rows of every class.

    Example:

    >>> import numpy as np
    >>> mask = holdout_split(np.repeat([0, 1], 10), 0.3, seed=0)
    >>> int(mask[:10].sum()), int(mask[10:].sum())
    (3, 3)
    """
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out[members[: int(round(fraction * len(members)))]] = True
    return held_out


def _read_npz(path):
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz archive (write one with numpy.savez(path, x=x, y=y))")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in ("x", "y") if name not in arrays.files]
            if missing:
                raise DataError(
                    f"{path}: no array named {' or '.join(map(repr, missing))} "
                    f"(found: {', '.join(arrays.files) or 'none'})"
                )
            return arrays["x"], arrays["y"]
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read it as .npz ({_first_line(error)})") from error


def _read_csv(path, label_column):
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read it as .csv ({_first_line(error)})") from error
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = [name.strip() for name in rows[0]]
    if label_column not in header:
        raise DataError(
            f"{path}: no column named {label_column!r} in the header row "
            f"(found: {', '.join(header)})"
        )
    named = [column + 1 for column, name in enumerate(header) if name == label_column]
    if len(named) > 1:
        raise DataError(
            f"{path}: the header names {label_column!r} {len(named)} times "
            f"(columns {', '.join(map(str, named))}); name the label column once"
        )
    label_index = header.index(label_column)
    features, labels, overflowing = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        labels.append(row[label_index].strip())
        values = []
        for column, field in enumerate(row):
            if column == label_index:
                continue
            try:
                values.append(float(field))
            except ValueError:
                raise DataError(
                    f"{path}, line {line}, column {header[column]!r}: "
                    f"non-numeric feature {field.strip()!r}"
                ) from None
            if _FLOAT32_MAX < abs(values[-1]) < np.inf:
                overflowing.append(f"line {line} column {header[column]!r} = {field.strip()}")
        features.append(values)
    if overflowing:
        raise DataError(_overflow_message(path, overflowing))
    return np.array(features, np.float64).reshape(len(features), len(header) - 1), np.array(labels)


def _dataset(x, y, description, source="data"):
    x, y = np.asarray(x), np.asarray(y)
    with contextlib.suppress(ValueError):  # reported with x's shape below
        y = as_label_vector(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or x.shape[1] == 0:
        raise DataError(
            f"{source}: x must be (N, D) with D >= 1 and y (N,); received x of "
            f"shape {x.shape} and y of shape {y.shape}"
        )
    if x.dtype.kind not in "fiub":
        raise DataError(f"{source}: x must hold numbers; received dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{source}: x contains NaN or infinite values")
    too_large = np.abs(x) > _FLOAT32_MAX
    if np.any(too_large):
        rows, columns = np.nonzero(too_large)
        raise DataError(
            _overflow_message(source, [f"x[{r}, {c}] = {x[r, c]:g}" for r, c in zip(rows, columns)])
        )
    if y.dtype.kind not in "iuUSb" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(
            f"{source}: y must hold class labels (integers or strings); received dtype {y.dtype}"
        )
    names, codes = np.unique(y, return_inverse=True)
    if len(names) < 2:
        raise DataError(f"{source}: too few classes: found {len(names)}, need at least 2")
    return Dataset(x.astype(np.float32), codes.astype(np.int32), tuple(names.tolist()), description)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _overflow_message(source, cells, shown=3):
    more = f" and {len(cells) - shown} more" if len(cells) > shown else ""
    return (
        f"{source}: {len(cells)} values overflow float32 (largest {_FLOAT32_MAX:.4g}), "
        f"which the model computes in: {', '.join(cells[:shown])}{more}"
    )


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
