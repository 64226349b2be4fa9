"""What the pair engine does to its inputs before the blocks: non-finite rows out, the
Euclidean family measured from a common origin, each class found by a search.
"""

from __future__ import annotations

from triplet_tools._ops import ops
from triplet_tools.distances import common_origin, moved_to
from triplet_tools.mining.blocks import compiled_by_xla


def sorted_search(sorted_values, values, side):
    """``searchsorted(sorted_values, values, side)`` as int32, ``O(B log M)`` everywhere.

    ```
    left:  i = #{j : sorted_values[j] <  v}      right:  i = #{j : sorted_values[j] <= v}
    ```

    Under XLA, TensorFlow lowers ``searchsorted`` to a comparison of every value with every
    sorted value, a ``B x M`` int32 matrix per call (2 GB at B = 16,384); there it is a
    binary search of ``ceil(log2(M + 1))`` vectorised steps instead.

    Args:
        sorted_values: ``(M,)`` ascending.
        values: ``(B,)`` of the same dtype.
        side: ``"left"`` or ``"right"``.

    Returns:
        ``(B,)`` int32 insertion points.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> found = sorted_search(ops.convert_to_tensor(np.array([1, 3, 3, 7])),
    ...                       ops.convert_to_tensor(np.array([0, 3, 8])), side="right")
    >>> ops.convert_to_numpy(found).tolist()
    [0, 3, 4]
    """
    values = ops.convert_to_tensor(values)
    size = sorted_values.shape[0]
    if size is None or not compiled_by_xla():  # None off TensorFlow: its own search
        return ops.cast(ops.searchsorted(sorted_values, values, side=side), "int32")
    low = ops.zeros(ops.shape(values), "int32")
    high = ops.full(ops.shape(values), size, "int32")
    for _ in range(size.bit_length()):
        middle = (low + high) // 2
        probe = ops.take(sorted_values, ops.minimum(middle, size - 1))
        right = probe < values if side == "left" else probe <= values
        searching = low < high
        low = ops.where(ops.logical_and(searching, right), middle + 1, low)
        high = ops.where(ops.logical_and(searching, ops.logical_not(right)), middle, high)
    return low


def from_common_origin(distance, rows, kept, anchors=None):
    """``(anchors - o, rows - o)`` for a distance whose product form depends on ``a - r``
    only (the Euclidean family); ``(anchors, rows)`` unchanged for any other.

    ``o`` is the ``kept`` ``(M,)`` row nearest to their mean, without gradient
    (:func:`~triplet_tools.distances.common_origin`): measured from it, an offset shared
    by the rows costs no digits of ``||a||^2 + ||r||^2 - 2 a.r``, and neither the distances
    nor their gradients change. Rows not kept go to the origin itself, so that they cannot
    pull a later origin (``pairwise``'s own) away from the rows again.
    """
    form = distance.product_form
    if form is None or not form.translation_invariant:
        return anchors, rows
    origin = common_origin(rows, kept)
    if anchors is None:
        moved = rows - origin
    else:
        anchors, moved = moved_to(origin, anchors, rows)
    return anchors, ops.where(kept[:, None], moved, ops.zeros_like(moved))


def zero_non_finite(rows):
    """``(rows with every non-finite row zeroed, (M,) bool finite)``.

    Zeroed, not only masked: a NaN row would turn every gradient of a block product NaN,
    although the mask keeps it out of every value.
    """
    finite = ops.all(ops.isfinite(ops.stop_gradient(rows)), axis=-1)
    return ops.where(finite[:, None], rows, ops.zeros_like(rows)), finite


def nan_if_not_finite(anchors):
    """``(n,)`` zeros, or NaN for an anchor whose features are not finite (added to its loss
    so that NaN in an embedding reaches the loss; zero gradient otherwise)."""
    return ops.sum(ops.stop_gradient(anchors), axis=-1) * 0


def class_ranges(labels, reference_labels):
    """``(order, same_start, same_count)``: the references sorted by label, and where each
    anchor's class lies in that order (a search, not a pass over every row)."""
    order = ops.cast(ops.argsort(reference_labels), "int32")
    sorted_labels = ops.take(reference_labels, order)
    same_start = sorted_search(sorted_labels, labels, side="left")
    same_end = sorted_search(sorted_labels, labels, side="right")
    return order, same_start, same_end - same_start
