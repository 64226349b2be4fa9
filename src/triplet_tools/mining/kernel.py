"""The per-anchor kernel in ``keras.ops``: one positive and one negative per anchor.

Written for XLA (TensorFlow, JAX): every step is an elementwise select or a row reduction
over a block's scores, which XLA fuses into a few passes. The choices are those of
:mod:`triplet_tools.mining.rules` (``picks_farthest``, ``semi_hard_negative``), with
:func:`arg_extreme` as their search. Eager PyTorch uses ``torch_kernel`` instead; both are
held to the same brute-force reference.
"""

from triplet_tools._ops import ops
from triplet_tools.mining.rules import picks_farthest, semi_hard_negative, semi_hard_threshold

_INF = float("inf")


def arg_extreme(values, largest):
    """Along the last axis: ``(max or min value, its first index)``; masked entries hold
    -inf or +inf.

    XLA's CPU argmax is a slow variadic reduction; a value reduction followed by a float-min
    over column numbers runs vectorised and lands on the same (first) index.
    """
    best = ops.max(values, axis=-1) if largest else ops.min(values, axis=-1)
    num_columns = ops.shape(values)[-1]
    columns = ops.arange(num_columns, dtype=values.dtype)
    past_end = ops.cast(num_columns, values.dtype)
    hits = ops.where(ops.equal(values, best[..., None]), columns, past_end)
    first = ops.min(hits, axis=-1)
    # No hit only when the row holds NaN; any in-range index will do, NaN reaches the loss.
    return best, ops.cast(ops.where(first < past_end, first, 0), "int32")


def mine_block(
    anchors, anchor_labels, anchor_positions, references, reference_labels, reference_mask, rules
):
    """Mines one block of anchors against all references (see ``mining.rules``); returns
    ``(positive, negative, valid)``, each ``(n,)``."""
    distance = rules.distance
    scores = distance.mining_scores(anchors, references)
    reference_index = ops.arange(ops.shape(references)[0], dtype="int32")
    same = ops.equal(anchor_labels[:, None], reference_labels[None, :])
    not_self = ops.not_equal(anchor_positions[:, None], reference_index[None, :])
    positive_mask = ops.logical_and(same, not_self)
    if reference_mask is not None:
        # A masked-out reference is neither positive nor negative: treat it as "same".
        positive_mask = ops.logical_and(positive_mask, reference_mask[None, :])
        same = ops.logical_or(same, ops.logical_not(reference_mask)[None, :])

    farthest_positive = picks_farthest("positive", rules.positive)
    fill = -_INF if farthest_positive else _INF
    positive_score, positive = arg_extreme(
        ops.where(positive_mask, scores, fill), largest=farthest_positive
    )
    has_positive = ops.not_equal(positive_score, fill)

    if rules.negative == "hard":
        negative_score, negative = arg_extreme(ops.where(same, _INF, scores), largest=False)
        return positive, negative, ops.logical_and(has_positive, negative_score < _INF)

    negative_scores = ops.where(same, -_INF, scores)
    farthest_score, negative = arg_extreme(negative_scores, largest=True)
    valid = ops.logical_and(has_positive, farthest_score > -_INF)
    if rules.negative == "easy":
        return positive, negative, valid

    threshold = semi_hard_threshold(distance, positive_score, anchors, rules.semi_margin)
    # Compared as the excess s - t over 0 (same order as the scores; non-negatives stay
    # -inf): the selection eager torch makes in place, tie for tie.
    excess = negative_scores - threshold[:, None]
    negative = semi_hard_negative(excess, 0.0, negative, arg_extreme)
    return positive, negative, valid
