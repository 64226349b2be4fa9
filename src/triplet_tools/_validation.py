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
from typing import Any, TypeVar

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(value: Any, argument: str, *, minimum: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as a Python int if it is an integer ``>= minimum`` (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        kind = ("a positive int" if minimum == 1 else
                "an int" + ("" if minimum is None else f" >= {minimum}"))
        none = " or None" if allow_none else ""
        raise ValueError(f"{argument} must be {kind}{none}; received {argument}={value!r}.")
    return int(value)


def check_bool(value: Any, argument: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (NumPy bools included)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{argument} must be True or False; received {argument}={value!r}.")
    return bool(value)


def check_number(value: Any, argument: str, *, minimum: float | None = None,
                 positive: bool = False) -> float:
    """``value`` as a float if it is a finite number (``>= minimum``, or ``> 0``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{argument} must be a number; received {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be finite; received {argument}={value!r}.")
    if positive and not value > 0:
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
