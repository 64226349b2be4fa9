"""Per-row searches, scatters and positive slots for hand-derived row functions.

What the closed-form row functions (the strategy-``"all"`` triplet rows, lifted structure,
the eager-torch softmax rows) use to visit an anchor's positives one *slot* at a time and
to pull single units back, instead of passes over the whole ``(n, M)`` block.
"""

from __future__ import annotations

from triplet_tools._ops import ops
from triplet_tools.mining.blocks import count_loop, eager_torch
from triplet_tools.pair_rows import PairBlock

_INF = float("inf")


def pull_back_units(block, columns, slopes, distances, gradients):
    """Adds the gradient of ``sum_i slopes_i d(a_i, r_{columns_i})`` (one unit per anchor
    of the block, weighted by ``block.weights``) to ``gradients = (anchor (n, D),
    reference (M, D))``: two gathered rows per unit instead of a pass over the row."""
    slopes = slopes * block.weights
    gathered = ops.take(block.references, columns, axis=0)
    to_anchor, to_reference = block.form.paired_gradients(
        slopes, block.anchors, gathered, distances
    )
    anchor_gradient, reference_gradient = gradients
    return anchor_gradient + to_anchor, add_rows(reference_gradient, columns, to_reference)


def add_rows(target, rows, values):
    """``target[rows[i]] += values[i]`` for every ``i`` (a scatter; repeated rows add up)."""
    rows = ops.cast(rows, "int32")
    if in_place_torch(target):
        target.index_add_(0, rows.long(), values)
        return target
    return ops.scatter_update(target, rows[:, None], values, reduction="add")


def arg_where(values, mask, largest):
    """Index of the largest (or smallest) value among ``mask`` along the last axis."""
    fill = -_INF if largest else _INF
    return arg_extreme(ops.where(mask, values, fill), largest)[1]


def arg_extreme(values, largest):
    """``(extreme, first index of it)`` along the last axis, by the fastest path: CPU
    ``argmin`` / ``argmax`` are not vectorised (neither XLA's variadic reduction nor eager
    torch's), so 2-D rows take the two-pass search of the per-anchor kernels. PNLoss's
    ``(n, M, M)`` candidates keep ``argmin`` / ``argmax`` (and no extreme: ``None``)."""
    if len(values.shape) != 2:
        index = ops.argmax(values, axis=-1) if largest else ops.argmin(values, axis=-1)
        return None, index
    if in_place_torch(values):
        from triplet_tools.mining import torch_kernel

        return torch_kernel.arg_extreme(values, largest)
    from triplet_tools.mining import kernel

    return kernel.arg_extreme(values, largest)


def take_at(values, columns):
    """``values[i, columns[i]]`` for every row ``i``: ``(n,)``."""
    return ops.take_along_axis(values, ops.cast(columns, "int32")[:, None], axis=1)[:, 0]


def add_at(weights, columns, values):
    """``weights[i, columns[i]] += values[i]`` for every row ``i`` (a scatter, not a pass)."""
    rows = ops.arange(ops.shape(weights)[0], dtype="int32")
    if in_place_torch(weights):
        weights.index_put_((rows.long(), columns.long()), values, accumulate=True)
        return weights
    indices = ops.stack([rows, ops.cast(columns, "int32")], axis=1)
    return ops.scatter_update(weights, indices, values, reduction="add")


def in_place_torch(x):
    """Eager torch, a tensor without gradient: a scatter can write in place."""
    return eager_torch() and not x.requires_grad


def positive_slots(block: PairBlock, counted, valid):
    """The positives of each anchor, one *slot* at a time: slot ``k`` is the ``k``-th
    reference of the anchor's class in ``block.reference_order``, present when ``counted``
    holds it (so the anchor itself and masked references are skipped).

    Returns:
        ``(slots, slot)``: the number of slots of the block (its largest class among the
        ``valid`` anchors), and ``slot(k) -> ((n,) int32 column, (n,) present as 0 / 1)``.
    """
    slots = ops.max(ops.where(valid, block.same_count, 0))
    last = ops.shape(block.reference_order)[0] - 1

    def slot(k):
        column = ops.take(block.reference_order, ops.minimum(block.same_start + k, last))
        present = ops.logical_and(k < block.same_count, take_at(counted, column))
        return column, ops.cast(present, block.distances.dtype)

    return slots, slot


def over_slots(step, slots, state, bound):
    """``state = step(k, *state)`` for ``k < slots``, in a loop of at most ``bound`` steps
    (a bound XLA needs for the gradient of a loop inside a loop, on TensorFlow)."""
    count_loop()
    return ops.while_loop(
        lambda k, *_: k < slots,
        lambda k, *carry: (k + 1, *step(k, *carry)),
        (ops.convert_to_tensor(0, "int32"), *state),
        maximum_iterations=bound,
    )[1:]
