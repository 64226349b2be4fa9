"""Row functions of the pair engine for ``TripletLoss`` and ``PNLoss`` with a strategy ``"all"``.

```
P_u(a) = P(a) (positive "all"), or {p*} (hard / easy)
N_u(a, p) = N(a) (negative "all"), {n*} (hard / easy), or semi-hard for that pair:
           nearest of {n in N(a) : d(a, n) > d(a, p) + semi_margin}, else farthest of N(a)
l_u = max(d_ap - d_an + margin, 0)   or   softplus(d_ap - d_an)
      d_an = d(a, n), or min(d(a, n), d(p, n)) for PNLoss
L_a = sum_u l_u      c_a = #units (average "valid") or #{u : l_u > 0} ("active")
```

The choices are those of :mod:`triplet_tools.mining.rules` (``picks_farthest`` for hard /
easy, ``semi_hard_negative`` for each pair's semi-hard negative). Each returns a
:class:`~triplet_tools.pair_rows.RowScores` with ``W_aj = dL_a / dd(a, j)`` in closed
form (see :mod:`triplet_tools.mining.engine`).
"""

from __future__ import annotations

from triplet_tools._ops import ops, row_sum
from triplet_tools.mining.rules import picks_farthest, semi_hard_negative
from triplet_tools.mining.slots import (
    add_at,
    arg_extreme,
    arg_where,
    in_place_torch,
    over_slots,
    positive_slots,
    pull_back_units,
    take_at,
)
from triplet_tools.pair_rows import PairBlock, row_scores

_INF = float("inf")


def _one_hot(index, width):
    return ops.one_hot(index, width) > 0


def _unit(gap, margin, soft):
    """``(l, dl/dgap)`` of units with ``gap = d_ap - d_an``."""
    if soft:
        return ops.softplus(gap), ops.sigmoid(gap)
    shifted = gap + margin
    return ops.relu(shifted), ops.cast(shifted > 0, gap.dtype)


def triplet_slots(
    block: PairBlock,
    *,
    positive: str,
    negative: str,
    semi_margin: float,
    margin: float,
    soft: bool,
    average: str,
):
    """``TripletLoss`` with a strategy ``"all"``, one positive *slot* at a time.

    Slot ``k`` is the ``k``-th reference of the anchor's class in ``block.reference_order``,
    skipped unless it is a positive (one slot for a hard / easy positive); the loop runs as
    many steps as the block's largest class has references. A slot finds its positive's
    distance by a gather, then scores that positive's units against the whole row in one
    pass (every negative), or finds its one negative (hard, easy, or semi-hard from this
    pair's own distance). Every negative makes the slope a dense ``(n, M)`` row (hinge:
    active units in which ``j`` is the positive minus those in which it is the negative;
    soft: the same with ``sigmoid`` weights); one negative per slot makes two units per
    anchor, which the products mode pulls back as gathered rows
    (:func:`~triplet_tools.pair_rows.pull_back_units`).

    Args:
        block: the :class:`~triplet_tools.pair_rows.PairBlock`.
        positive, negative, semi_margin: the mining rules.
        margin: the hinge margin.
        soft: the soft margin (every valid unit counts as active).
        average: ``"valid"`` or ``"active"``.

    Returns:
        A :class:`~triplet_tools.pair_rows.RowScores`.
    """
    fixed = block.distances
    dtype = fixed.dtype
    width = ops.shape(fixed)[1]
    has_positive = ops.any(block.positive, axis=1)
    valid = ops.logical_and(has_positive, ops.any(block.negative, axis=1))
    valid_f = ops.cast(valid, dtype)

    if positive == "all":
        counted = ops.logical_and(block.positive, valid[:, None])
        slots, slot = positive_slots(block, counted, valid)
    else:
        chosen = arg_where(fixed, block.positive, largest=picks_farthest("positive", positive))
        counted = ops.logical_and(_one_hot(chosen, width), valid[:, None])
        slots = 1

        def slot(k):
            return ops.cast(chosen, "int32"), valid_f

    fixed_negative = scratch = None
    if negative in ("hard", "easy"):
        fixed_negative = arg_where(
            fixed, block.negative, largest=picks_farthest("negative", negative)
        )
    else:
        # Every column that is not a negative sits at +inf: never within a margin of a
        # positive, and never the nearest beyond one.
        far = ops.where(block.negative, fixed, _INF)
        if negative == "semi-hard":
            farthest = arg_where(fixed, block.negative, largest=True)
        elif not soft:
            scratch = _scratch(far, 1)

    # One negative per unit, pulled back as gathered rows in the products mode; otherwise
    # every slope lands in the dense (n, M) row.
    gathered = block.form is not None and negative != "all"
    extra: tuple
    if gathered:
        extra = (ops.zeros_like(block.anchors), ops.zeros_like(block.references))

        def add_unit(extra, column, slope, distance):
            return pull_back_units(block, column, slope, distance, extra)

    else:
        extra = (ops.zeros_like(fixed),)

        def add_unit(extra, column, slope, distance):
            return (add_at(extra[0], column, slope),)

    negatives = row_sum(ops.cast(block.negative, dtype)) if negative == "all" else None

    def step(k, total, units, active, *extra):
        column, present = slot(k)
        d_ap = take_at(fixed, column)
        if negative == "all":
            (weights,) = extra
            # An absent slot reaches no column: -inf - d is -inf everywhere.
            reach = ops.where(present > 0, d_ap if soft else d_ap + margin, -_INF)
            units = units + negatives * present
            if soft:
                gap = reach[:, None] - far
                total = total + row_sum(ops.softplus(gap))
                slope = ops.sigmoid(gap)
                pushed = row_sum(slope)
                active = active + negatives * present  # every soft unit is active
                weights = weights - slope
            else:  # a unit is active iff its slope is 1
                pushed, weights = _hinge_row(far, reach, weights, scratch)
                # The hinges' sum: reach * pushed here, minus sum_j count_j d_aj after
                # the loop (see below), so a slot makes one pass instead of three.
                total = total + ops.where(present > 0, reach, 0) * pushed
                active = active + pushed
            return total, units, active, add_at(weights, column, pushed)
        if fixed_negative is None:  # semi-hard, from this positive's own distance
            threshold = (d_ap + semi_margin)[:, None]
            negative_column = semi_hard_negative(far, threshold, farthest, arg_extreme)
        else:
            negative_column = fixed_negative
        negative_column = ops.cast(negative_column, "int32")
        d_an = take_at(fixed, negative_column)
        value, slope = _unit(d_ap - d_an, margin, soft)
        value, slope = value * present, slope * present
        extra = add_unit(extra, column, slope, d_ap)
        extra = add_unit(extra, negative_column, -slope, d_an)
        return (total + value, units + present, active + ops.cast(value > 0, dtype), *extra)

    zeros = ops.zeros_like(valid_f)
    state = (zeros, zeros, zeros, *extra)
    if positive != "all":  # one slot, known while tracing
        total, units, active, *extra = step(0, *state)
    else:
        total, units, active, *extra = over_slots(step, slots, state, fixed.shape[1])
    if negative == "all" and not soft:
        # sum_u relu(reach_u - d_an) = sum_k reach_k pushed_k - sum_j count_j d_aj, with
        # count_j = -weights_j on the negatives: the slots added the first term.
        total = total - row_sum(ops.where(block.negative, extra[0] * -fixed, 0))
    count = units if (average == "valid" or soft) else active
    if gathered:
        anchor_gradient, reference_gradient = extra
        return row_scores(
            block,
            total,
            count,
            valid,
            active,
            counted,
            anchor_gradient=anchor_gradient,
            reference_gradient=reference_gradient,
        )
    return row_scores(block, total, count, valid, active, counted, slopes=extra[0])


def triplet_units(
    block: PairBlock,
    *,
    positive: str,
    negative: str,
    semi_margin: float,
    margin: float,
    soft: bool,
    average: str,
):
    """``PNLoss`` with a strategy ``"all"``: every unit ``(a, p, n)`` as an ``n x M x M``
    candidate, with ``d_an = min(d(a, n), d(p, n))``.

    ``block.context`` holds the ``(M, M)`` distances among the references (with gradient,
    in the linearized mode, the only one this row function runs in): the slopes of the
    units that take ``d(p, n)`` reach them through the returned loss, those that take
    ``d(a, n)`` through the dense slopes.

    Args and returns as for :func:`triplet_slots`.
    """
    fixed = block.distances
    dtype = fixed.dtype
    width = ops.shape(fixed)[1]
    (pair_distances,) = block.context
    fixed_pairs = ops.stop_gradient(pair_distances)
    has_positive = ops.any(block.positive, axis=1)
    valid = ops.logical_and(has_positive, ops.any(block.negative, axis=1))
    if positive == "all":
        positives = block.positive
    else:
        chosen = arg_where(fixed, block.positive, largest=picks_farthest("positive", positive))
        positives = ops.logical_and(_one_hot(chosen, width), has_positive[:, None])

    negatives_of_anchor = block.negative[:, None, :]
    if negative == "all":
        negatives = negatives_of_anchor
    elif negative in ("hard", "easy"):
        chosen = arg_where(fixed, block.negative, largest=picks_farthest("negative", negative))
        negatives = _one_hot(chosen, width)[:, None, :]
    else:  # semi-hard, for each unit's own positive: (n, 1, M) against (n, M, 1)
        far = ops.where(block.negative, fixed, _INF)[:, None, :]
        farthest = arg_where(fixed, block.negative, largest=True)
        # n x M x M candidates: rules.first_extreme (argmin), as slots.arg_extreme for 3-D.
        chosen = semi_hard_negative(far, (fixed + semi_margin)[:, :, None], farthest[:, None])
        negatives = _one_hot(chosen, width)

    units = ops.logical_and(ops.logical_and(positives[:, :, None], negatives), valid[:, None, None])
    units_f = ops.cast(units, dtype)
    from_anchor = fixed[:, None, :] <= fixed_pairs[None, :, :]  # which side d_an takes
    d_an = ops.minimum(fixed[:, None, :], fixed_pairs[None, :, :])
    values, slopes = _unit(fixed[:, :, None] - d_an, margin, soft)
    values, slopes = values * units_f, slopes * units_f
    total = ops.sum(values, axis=(1, 2))
    unit_count = ops.sum(units_f, axis=(1, 2))
    active = ops.sum(ops.cast(values > 0, dtype), axis=(1, 2))
    count = unit_count if (average == "valid" or soft) else active
    # Positive columns gain the slope, negative ones (seen from the anchor) lose it.
    anchor_slopes = ops.sum(slopes, axis=2) - ops.sum(ops.where(from_anchor, slopes, 0), axis=1)
    pair_slopes = ops.stop_gradient(ops.where(from_anchor, 0, -slopes))
    total = total + ops.sum(pair_slopes * (pair_distances - fixed_pairs)[None], axis=(1, 2))
    return row_scores(block, total, count, valid, active, positives, slopes=anchor_slopes)


def _scratch(like, count):
    """``count`` buffers shaped like ``like`` on eager torch without gradient, else ``None``."""
    if not in_place_torch(like):
        return None
    import torch

    return tuple(torch.empty_like(like) for _ in range(count))


def _hinge_row(far, reach, weights, scratch=None):
    """One positive per row against every column: ``(#{j : reach > far_j},
    weights - [reach > far])``.

    With ``scratch`` (eager torch) the pass writes into its ``(n, M)`` buffer and
    ``weights`` in place: a slot loop then allocates nothing of size ``n x M``.
    """
    if scratch is None:
        slope = ops.cast(reach[:, None] > far, far.dtype)
        return row_sum(slope), weights - slope
    import torch

    (slope,) = scratch
    torch.gt(reach[:, None], far, out=slope)
    weights.sub_(slope)
    return slope.sum(1), weights
