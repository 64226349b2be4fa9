"""Every argument check of the library, with one rule and one form of message.

The rule: Python and NumPy integers are integers, ``bool`` is not (``True`` is not a block
size); numbers are finite ints or floats; a choice is a string from a fixed list. Every
message says what the argument must be and what was received, e.g.
``"block_size must be a positive int or None; received block_size=True."``.

Example:

>>> check_int(3, "block_size", minimum=1)
3
>>> check_int(True, "block_size", minimum=1)
Traceback (most recent call last):
    ...
ValueError: block_size must be a positive int; received block_size=True.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, Literal, TypeVar, overload

import numpy as np

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@overload
def check_int(
    value: Any, argument: str, *, minimum: int | None = ..., allow_none: Literal[False] = ...
) -> int: ...
@overload
def check_int(
    value: Any, argument: str, *, minimum: int | None = ..., allow_none: bool
) -> int | None: ...
def check_int(
    value: Any, argument: str, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as a Python int if it is an integer ``>= minimum`` (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        kind = (
            "a positive int"
            if minimum == 1
            else "an int" + ("" if minimum is None else f" >= {minimum}")
        )
        none = " or None" if allow_none else ""
        raise ValueError(f"{argument} must be {kind}{none}; received {argument}={value!r}.")
    return int(value)


def check_bool(value: Any, argument: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (NumPy bools included)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{argument} must be True or False; received {argument}={value!r}.")
    return bool(value)


def check_number(
    value: Any, argument: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    """``value`` as a float if it is a finite number (``>= minimum``, or ``> 0``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{argument} must be a number; received {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be finite; received {argument}={value!r}.")
    # value is finite here, so <= 0 is exactly not > 0 (numbers.Real declares no __gt__).
    if positive and value <= 0:
        raise ValueError(f"{argument} must be > 0; received {argument}={value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{argument} must be >= {minimum:g}; received {argument}={value!r}.")
    return float(value)


def check_choice(value: Any, allowed: Sequence[T], argument: str) -> T:
    """``value`` if it is one of ``allowed``, else a ValueError naming both."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"Invalid {argument}: received {value!r}; allowed values are "
            f"{', '.join(repr(a) for a in allowed)}."
        )
    return value  # type: ignore[return-value]


def check_string(value: Any, argument: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ValueError(f"{argument} must be a string; received {value!r}.")
    return value


def as_label_vector(
    labels: Any, size: int | None = None, argument: str = "labels", rows: str = "the inputs"
) -> np.ndarray:
    """``labels`` as a 1-D NumPy array: ``(N,)`` stays, ``(N, 1)`` becomes ``(N,)``.

    Args:
        labels: array-like (NumPy array, list); convert backend tensors to NumPy first.
        size: the required length ``N``, or ``None`` for any length.
        argument: the argument's name, for the message.
        rows: what ``size`` counts, for the message (e.g. ``"x"``).

    Returns:
        The ``(N,)`` array (a view of ``labels`` where possible).

    Raises:
        ValueError: for any other shape, naming the expected and the received one.

    Example:

    >>> as_label_vector([[3], [1], [3]]).tolist()
    [3, 1, 3]
    >>> as_label_vector([0, 1], size=3, argument="y", rows="x")
    Traceback (most recent call last):
        ...
    ValueError: y must have shape (3,) to match x; received shape (2,).
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or (size is not None and len(array) != size):
        expected = f"({size},) to match {rows}" if size is not None else "(N,) or (N, 1)"
        raise ValueError(f"{argument} must have shape {expected}; received shape {array.shape}.")
    return array


#: The one message for labels that are not class ids (the losses give the same).
CLASS_IDS_MESSAGE = (
    "class ids must be integers; map string labels to ids first, e.g. with "
    "numpy.unique(..., return_inverse=True)"
)


def check_class_ids(labels: np.ndarray, argument: str = "y") -> np.ndarray:
    """``labels`` (a NumPy array) if it holds class ids: integers, bools, or whole finite floats.

    Strings and objects are refused with :data:`CLASS_IDS_MESSAGE`; floats that are not whole
    numbers (``0.2``) or not finite (NaN, inf) are refused naming the first of them.

    Example:

    >>> check_class_ids(np.array([1.0, 2.0, 1.0])).tolist()
    [1.0, 2.0, 1.0]
    >>> check_class_ids(np.array([0.2, 0.7]))  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
        ...
    ValueError: y must hold whole-number class ids; received 2 non-integral or non-finite values,
    e.g. 0.2 at index 0.
    """
    kind = labels.dtype.kind
    if kind in "iub":
        return labels
    if kind != "f":
        raise ValueError(f"{argument}: {CLASS_IDS_MESSAGE}; received dtype {labels.dtype}.")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{argument} must hold whole-number class ids; received {int(np.count_nonzero(bad))} "
            f"non-integral or non-finite values, e.g. {labels[first].item()!r} at index {first}."
        )
    return labels
