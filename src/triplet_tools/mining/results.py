"""What scoring returns per anchor: :class:`AnchorTriplets`, and the block loops' outputs
derived from its fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from triplet_tools._ops import ops
from triplet_tools.mining.prepare import nan_if_not_finite


class AnchorTriplets(NamedTuple):
    """Per-anchor results of a loss's scoring (the pair engine's and the per-anchor
    kernel's), each of shape ``(B,)``.

    Attributes:
        loss: ``L_a``, the anchor's summed unit losses (0 for invalid anchors; NaN in an
            embedding stays NaN).
        valid: bool, the anchor has a positive and a negative.
        positive_distance: ``d_ap`` with gradient (the strategy ``"all"`` and the pair-based
            losses: the mean over the anchor's positives, a statistic without gradient).
        negative_distance: ``d_an`` with gradient (for ``PNLoss``, ``min(d(a,n*), d(p*,n*))``;
            the strategy ``"all"`` and the pair-based losses: the mean over the anchor's
            negatives, without gradient).
        count: ``c_a``, the anchor's counted units (the divisor's share).
        active: the anchor's units with a non-zero loss.
        carrier: ``None``, or a scalar 0 whose gradient is that of ``sum_a w_a L_a`` for the
            weights the pipeline was given; ``loss`` then holds values only (the pair
            engine's ``Mode.PRODUCTS``).
    """

    loss: Any
    valid: Any
    positive_distance: Any
    negative_distance: Any
    count: Any = None
    active: Any = None
    carrier: Any = None


#: The per-anchor outputs of a block loop: every field of :class:`AnchorTriplets` but the
#: carrier, as floats.
OUTPUTS = AnchorTriplets._fields[:-1]


def outputs_of(scores, anchors):
    """The per-anchor outputs of a block (:data:`OUTPUTS`, in order), floats (a loop's
    outputs), NaN reaching the loss of an anchor whose features are not finite."""
    dtype = scores.loss.dtype
    found = scores._asdict()
    found["loss"] = scores.loss + nan_if_not_finite(anchors)
    return tuple(ops.cast(found[name], dtype) for name in OUTPUTS)


def triplets_from(outputs, carrier=None):
    found = dict(zip(OUTPUTS, outputs))
    found["valid"] = found["valid"] > 0
    return AnchorTriplets(**found, carrier=carrier)
