"""The reduction of every loss here: per-anchor sums ``L_a`` and counts ``c_a`` to one value.

```
"sum_over_batch_size", "mean"   sum_a w_a * L_a / max(sum_a c_a, 1)      (default)
"mean_with_sample_weight"       sum_a w_a * L_a / sum_a w_a * c_a        (0 when that is 0)
"sum"                           sum_a w_a * L_a
"none", None                    the (B,) vector w_a * L_a
```

``c_a`` is the number of counted units of anchor ``a``: 0 or 1 for the per-anchor strategies
(valid or not), the valid (or active) pairs or triplets for the strategy ``"all"``, 0 or 1
for the pair-based losses. ``w_a`` is ``sample_weight`` (1 without it). A batch with nothing
counted gives exactly 0 (or NaN, when an embedding holds NaN: it must reach the user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from triplet_tools._ops import ops

#: Accepted values of ``reduction``.
REDUCTIONS = ("sum_over_batch_size", "sum", "none", "mean", "mean_with_sample_weight")
_MEANS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def check_reduction(reduction: Any) -> Any:
    """``reduction`` if it is one of :data:`REDUCTIONS` or ``None``, else a ValueError."""
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(
            f"Invalid reduction: received {reduction!r}; allowed values are "
            f"{', '.join(repr(r) for r in REDUCTIONS)} or None."
        )
    return reduction


def reduce(
    losses: Any,
    counts: Any,
    sample_weight: Any = None,
    reduction: str | None = "sum_over_batch_size",
    *,
    sum_across: Callable | None = None,
    scale: float = 1.0,
    mean_scale: float = 1.0,
    carrier: Any = None,
) -> Any:
    """Reduces per-anchor ``L_a`` with counts ``c_a`` (see the module docstring).

    Args:
        losses: ``(B,)`` per-anchor sums ``L_a``.
        counts: ``(B,)`` per-anchor counts ``c_a`` (no gradient flows through them).
        sample_weight: ``(B,)`` weights ``w_a`` or ``None``.
        reduction: one of :data:`REDUCTIONS` or ``None``.
        sum_across: sums the divisor over replicas (global mining), or ``None``.
        scale: factor on every result but ``"none"``.
        mean_scale: extra factor on the mean reductions.
        carrier: ``None``, or a scalar 0 whose gradient is that of ``sum_a w_a L_a`` (then
            ``losses`` hold values only; not for ``"none"``).

    Returns:
        A scalar, or ``(B,)`` for ``"none"`` / ``None``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> L, c = np.array([3.0, 0.0, 1.0], "float32"), np.array([2.0, 0.0, 1.0], "float32")
    >>> float(reduce(L, c))                          # (3 + 0 + 1) / (2 + 0 + 1)
    1.3333333730697632
    >>> w = np.array([1.0, 5.0, 3.0], "float32")
    >>> float(reduce(L, c, w, "mean_with_sample_weight"))   # (3 + 3) / (2 + 3)
    1.2000000476837158
    >>> w = np.array([1.0, 5.0, -2.0], "float32")    # sum_a w_a c_a = 2 + 0 - 2 = 0
    >>> float(reduce(L, c, w, "mean_with_sample_weight"))
    0.0
    """
    losses = ops.convert_to_tensor(losses)
    counts = ops.cast(ops.convert_to_tensor(counts), losses.dtype)
    weighted = losses
    if sample_weight is not None:
        sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), losses.dtype)
        weighted = losses * sample_weight
    if reduction in (None, "none"):
        return weighted
    total = ops.sum(weighted)
    if carrier is not None:
        total = total + carrier
    if reduction == "sum":
        return total * scale if scale != 1 else total
    by_weight = reduction == "mean_with_sample_weight" and sample_weight is not None
    divisor = ops.sum(counts * sample_weight if by_weight else counts)
    divisor = ops.stop_gradient(divisor if sum_across is None else sum_across(divisor))
    factor = scale * mean_scale
    if by_weight:
        # sum_a w_a c_a = 0 gives 0: nothing counted, or signed weights that cancel while
        # sum_a w_a L_a does not. The product keeps NaN from a NaN embedding and has zero
        # gradient; the inner select keeps the unused quotient finite.
        empty = ops.equal(divisor, 0)
        inverse = 1 / ops.where(empty, ops.ones_like(divisor), divisor)
        loss = total * ops.where(empty, ops.zeros_like(divisor), inverse)
    else:
        # Nothing counted: total is an exact 0 (or NaN from a NaN embedding), divided by 1.
        loss = total / ops.maximum(divisor, 1)  # a count: 0 or at least 1
    return loss * factor if factor != 1 else loss
