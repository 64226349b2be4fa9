"""The pair engine: losses that score every pair, or every triplet, of an anchor's row.

For a block of ``n`` anchors against ``M`` references it forms the ``(n, M)`` distances with
gradient and the masks ``P(a)`` / ``N(a)`` of :mod:`triplet_tools.mining.rules`, and hands
them to a *row function* that returns per-anchor values. Blocks run through
:func:`~triplet_tools.mining.blocks.map_blocks`, so shapes are static and it compiles under
XLA. Every pair distance of a block is differentiated, which is the dense formulation's
gradient exactly; the row functions here compute ``W_aj = dL_a / dd(a, j)`` in closed form
without gradient and hand it back through :func:`linearized`, so that the backward pass of a
block is the distance's own (one product per operand for the inner-product distances).
Each anchor's positives are found through the references sorted by label
(``PairBlock.reference_order``), by a search instead of a pass over the row.

Row functions here:

* :func:`triplet_slots` -- ``TripletLoss`` with a strategy ``"all"``: the units
  ``(a, p, n)`` of SPEC (every positive pair with its own semi-hard negative, every
  triplet, ...), summed per anchor with their count, one positive at a time;
* :func:`triplet_units` -- the same for ``PNLoss``, whose units also need ``d(p, n)``;
* :func:`masked_exponentials` and :func:`linearized` -- the building blocks of the
  pair-based losses (``losses/pair.py``): closed-form row values and ``dL_a / dd(a, j)``.

Memory: a block holds ``n x M`` distances (``n x M x M`` candidate units for
:func:`triplet_units`), so blocks are sized from the reference count (see
:func:`block_rows`). Above :data:`REMAT_PAIRS` anchor-reference pairs the blocks are
recomputed in the backward pass instead of kept for it, so that a step holds
``O(B*D + n*M)`` (see docs/performance.md for what was measured). Each anchor's class is
found in the label-sorted references by a binary search (:func:`sorted_search`), never by
a ``B x M`` comparison. References whose embedding is not finite are zeroed and masked
out, so NaN reaches only the loss of the anchor that holds it.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import keras

from triplet_tools._ops import ops
from triplet_tools.mining import kernel
from triplet_tools.mining.blocks import BLOCK_ELEMENTS, compiled_by_xla, map_blocks

_INF = float("inf")

#: Above this many anchor-reference pairs (``B * M``), blocks are recomputed in the backward
#: pass instead of stored: 2**26 pairs (a B = 8,192 batch) hold 256 MB per float32 ``B x M``.
REMAT_PAIRS = 2**26


class PairBlock(NamedTuple):
    """What a row function sees for a block of ``n`` anchors.

    Attributes:
        distances: ``(n, M)`` ``d(a, j)`` with gradient.
        positive: ``(n, M)`` bool, ``j in P(a)``.
        negative: ``(n, M)`` bool, ``j in N(a)``.
        anchors: ``(n, D)`` anchor features.
        rows: ``(n,)`` int32 index of each anchor in the batch (padding rows: ``-1``).
        context: the tensors passed to :func:`score_pairs` as ``context`` (with gradient).
        reference_order: ``(M,)`` int32 reference indices sorted by label, so that
            ``reference_order[same_start + k]``, ``k < same_count``, are the references of
            the anchor's class (its positives, itself and masked rows included).
        same_start, same_count: ``(n,)`` int32, where the anchor's class starts in that
            order and how many references it has.
    """

    distances: Any
    positive: Any
    negative: Any
    anchors: Any
    rows: Any
    context: tuple = ()
    reference_order: Any = None
    same_start: Any = None
    same_count: Any = None


def block_rows(num_anchors, num_references, cubic=False):
    """Anchors per block: about :data:`~triplet_tools.mining.blocks.BLOCK_ELEMENTS` values
    per block, counting ``M`` per anchor (or ``M * M`` candidate units with ``cubic``)."""
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = max(num_references, 1) ** (2 if cubic else 1)
    rows = max(1, BLOCK_ELEMENTS // per_row)
    return min(num_anchors, 1 << (rows.bit_length() - 1))


def masked_exponentials(values, masks):
    """Stabilised log-sum-exps of one row over each of several disjoint masks, in one
    ``exp`` pass, with what their gradients need. No gradient flows through it.

    ```
    lse_k(a) = log sum_{j in mask_k(a)} exp(v_aj)        (-inf for an empty mask)
    e_aj     = exp(v_aj - max_{mask_k(a)} v)   for j in mask_k(a), 0 outside every mask
    softmax_k(a, j) = e_aj * inverse_k(a)      (= d lse_k / d v_aj on mask_k)
    ```

    Args:
        values: ``(n, M)``.
        masks: disjoint ``(n, M)`` bool masks.

    Returns:
        ``(lses, e, inverses)``: a list of ``(n,)`` ``lse_k``, the ``(n, M)`` ``e``, and a
        list of ``(n,)`` ``1 / sum_{mask_k} e`` (0 for an empty mask).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> v = np.array([[0.0, 1000.0, 5.0], [1.0, 2.0, 3.0]], "float32")
    >>> m = np.array([[True, True, False], [False, False, False]])
    >>> (lse,), e, (inverse,) = masked_exponentials(v, [m])
    >>> ops.convert_to_numpy(lse).tolist(), ops.convert_to_numpy(e)[0].tolist()
    ([1000.0, -inf], [0.0, 1.0, 0.0])
    """
    values = ops.stop_gradient(ops.convert_to_tensor(values))
    masks = [ops.convert_to_tensor(mask) for mask in masks]
    peaks = []
    for mask in masks:
        peak = ops.max(ops.where(mask, values, -_INF), axis=1)
        peaks.append(ops.where(ops.isfinite(peak), peak, ops.zeros_like(peak)))
    # Masked entries become exp(-inf) = 0 before the exp, never inf after it.
    shifted = ops.full_like(values, -_INF)
    for mask, peak in zip(reversed(masks), reversed(peaks)):
        shifted = ops.where(mask, values - peak[:, None], shifted)
    e = ops.exp(shifted)
    lses, inverses = [], []
    for mask, peak in zip(masks, peaks):
        # A non-empty mask holds its peak, exp(0) = 1: total >= 1 exactly when non-empty.
        total = e if len(masks) == 1 else ops.where(mask, e, 0)
        total = ops.sum(total, axis=1)
        kept = total > 0
        safe = ops.where(kept, total, ops.ones_like(total))
        lses.append(ops.where(kept, ops.log(safe) + peak, -_INF))
        inverses.append(ops.where(kept, 1 / safe, ops.zeros_like(safe)))
    return lses, e, inverses


def linearized(value, weights, distances):
    """``value`` ``(n,)`` in value, and in gradient ``sum_j weights_aj d(a, j)``:

    ```
    stop_gradient(value) + sum_j stop_gradient(W_aj) (d(a, j) - stop_gradient(d(a, j)))
    ```

    With ``W = dvalue / dd`` computed in closed form, the backward pass of a block is one
    product with ``W`` per operand of the distance instead of the framework's reverse of
    every elementwise pass.
    """
    fixed = ops.stop_gradient(distances)
    return ops.stop_gradient(value) + ops.sum(
        ops.stop_gradient(weights) * (distances - fixed), axis=1
    )


def _arg(values, mask, largest):
    """Index of the largest (or smallest) value among ``mask`` along the last axis."""
    fill = -_INF if largest else _INF
    return _arg_extreme(ops.where(mask, values, fill), largest)[1]


def _arg_extreme(values, largest):
    """``(extreme, first index of it)`` along the last axis, by the fastest path: CPU
    ``argmin`` / ``argmax`` are not vectorised (neither XLA's variadic reduction nor eager
    torch's), so 2-D rows take the two-pass search of the per-anchor kernels. PNLoss's
    ``(n, M, M)`` candidates keep ``argmin`` / ``argmax`` (and no extreme: ``None``)."""
    if len(values.shape) != 2:
        index = ops.argmax(values, axis=-1) if largest else ops.argmin(values, axis=-1)
        return None, index
    if _in_place_torch(values):
        from triplet_tools.mining import torch_kernel

        return torch_kernel.arg_extreme(values, largest)
    return kernel.arg_extreme(values, largest)


def _one_hot(index, width):
    return ops.one_hot(index, width) > 0


def score_pairs(
    features,
    labels,
    reference_features,
    reference_labels,
    anchor_positions,
    reference_mask,
    *,
    distance,
    row_function,
    rows=None,
    cubic=False,
    context=(),
):
    """Runs ``row_function`` over row blocks of anchors; returns its per-anchor outputs.

    When a batch has more than :data:`REMAT_PAIRS` anchor-reference pairs, each block is
    recomputed in the backward pass (``keras.remat``) instead of keeping its ``n x M``
    intermediates for it, so peak memory stays ``O(B*D + rows*M)`` at the cost of a second
    forward pass over the blocks.

    Args:
        features: ``(B, D)`` anchor features (``distance.mining_features``), with gradient.
        labels: ``(B,)`` class ids.
        reference_features: ``(M, D)`` reference features, or ``None`` for the batch.
        reference_labels: ``(M,)`` class ids (with ``reference_features``).
        anchor_positions: ``(B,)`` index of each anchor among the references (``-1``:
            none), or ``None`` (``arange(B)`` in-batch, all ``-1`` otherwise).
        reference_mask: ``(M,)`` bool or ``None``.
        distance: the ``Distance``.
        row_function: ``PairBlock -> tuple of (n, ...) tensors``.
        rows: anchors per block (``None``: :func:`block_rows`).
        cubic: the row function builds ``n x M x M`` units (smaller blocks).
        context: tensors the row function needs beside the block (as ``block.context``);
            passed explicitly, so that their gradient survives recomputation.

    Returns:
        The tuple of the row function's outputs over all ``B`` anchors.
    """
    from triplet_tools.mining import common_label_dtype

    num_anchors = features.shape[0]
    if reference_features is None:
        reference_features, reference_labels = features, labels
        if anchor_positions is None:
            anchor_positions = ops.arange(ops.shape(features)[0], dtype="int32")
    elif anchor_positions is None:
        anchor_positions = -ops.ones(ops.shape(labels), dtype="int32")
    labels, reference_labels = common_label_dtype(
        ops.convert_to_tensor(labels), ops.convert_to_tensor(reference_labels)
    )
    clean, finite = zero_non_finite(reference_features)
    mask = (
        finite
        if reference_mask is None
        else ops.logical_and(ops.cast(reference_mask, "bool"), finite)
    )
    kept = ops.cast(mask, "int32")
    reference_index = ops.arange(ops.shape(reference_labels)[0], dtype="int32")
    anchor_rows = ops.arange(ops.shape(labels)[0], dtype="int32")

    num_references = reference_labels.shape[0]
    recompute = (
        None not in (num_anchors, num_references) and num_anchors * num_references > REMAT_PAIRS
    )

    def scored(anchors, anchor_labels, positions, batch_rows, same_start, same_count, *tensors):
        references, reference_labels, kept, reference_index, order, *extra = tensors
        same = ops.equal(anchor_labels[:, None], reference_labels[None, :])
        kept = kept[None, :] > 0
        positive = ops.logical_and(
            ops.logical_and(same, kept),
            ops.not_equal(positions[:, None], reference_index[None, :]),
        )
        negative = ops.logical_and(ops.logical_not(same), kept)
        distances = distance.pairwise_features(anchors, references)
        block = PairBlock(
            distances,
            positive,
            negative,
            anchors,
            batch_rows,
            tuple(extra),
            order,
            same_start,
            same_count,
        )
        return tuple(row_function(block))

    def recomputed(*tensors):
        # Every tensor goes in as an argument (TensorFlow's recompute_grad inside a loop
        # fails on captured ones), none of them bool, and only float tensors come out (a
        # bool breaks its gradient either way).
        release_freed_memory()
        outputs = scored(*tensors)
        was_bool[:] = [keras.backend.standardize_dtype(t.dtype) == "bool" for t in outputs]
        return tuple(ops.cast(t, features.dtype) if b else t for t, b in zip(outputs, was_bool))

    was_bool: list[bool] = []

    def block(*block_tensors):
        tensors = (*block_tensors, clean, reference_labels, kept, reference_index, order, *context)
        if not recompute:
            return scored(*tensors)
        outputs = keras.remat(recomputed)(*tensors)
        return tuple(t > 0 if b else t for t, b in zip(outputs, was_bool))

    # Each class's references, found by a search in the label-sorted order instead of a
    # pass over every row of the block.
    order = ops.cast(ops.argsort(reference_labels), "int32")
    sorted_labels = ops.take(reference_labels, order)
    same_start = sorted_search(sorted_labels, labels, side="left")
    same_end = sorted_search(sorted_labels, labels, side="right")
    if rows is None:
        rows = block_rows(num_anchors, reference_labels.shape[0], cubic)
    return map_blocks(
        block,
        (
            features,
            labels,
            ops.cast(anchor_positions, "int32"),
            anchor_rows,
            same_start,
            same_end - same_start,
        ),
        rows=rows,
        pad_values=(0, 0, -1, -1, 0, 0),
    )


def release_freed_memory():
    """On eager PyTorch with glibc: once resident memory has grown by :data:`TRIM_GROWTH`
    since the last trim, returns the heap's free pages to the system (``malloc_trim``); a
    no-op elsewhere.

    Each block of a large batch allocates and frees its ``n x M`` tensors, while a few small
    ones live on (its outputs, its autograd nodes). glibc does not reuse the freed blocks
    around those: resident memory grew by about two blocks per block, past 24 GB at
    B = 65,536 (docs/performance.md). Compiled code (XLA, ``torch.compile``) plans its own
    buffers.
    """
    if keras.backend.backend() != "torch":
        return
    import torch

    heap = _heap()
    if heap.trim is None or torch.compiler.is_compiling():
        return
    if heap.resident() - heap.trimmed_at >= TRIM_GROWTH:
        heap.trim(0)
        heap.trimmed_at = heap.resident()


#: Growth of resident memory that triggers a trim. A trim after every block cost 1.5x the
#: time at B = 16,384 (the next block maps its pages afresh); growth of this much between
#: trims costs nothing measurable.
TRIM_GROWTH = 2**28


class _Heap:
    """glibc's ``malloc_trim`` (``None`` for another C library) and resident memory."""

    def __init__(self):
        self.trim: Callable[[int], Any] | None
        try:  # Windows cannot load "no library" (TypeError); macOS and musl lack it
            self.trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError, TypeError):
            self.trim = None
        self.trimmed_at = 0

    @staticmethod
    def resident():
        """Resident bytes of this process (Linux ``/proc/self/statm``; 0 without it, which
        never triggers a trim)."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0


@functools.cache
def _heap():
    """The process's :class:`_Heap`, loaded on first use (eager torch only)."""
    return _Heap()


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


def triplet_units(
    block: PairBlock,
    *,
    positive: str,
    negative: str,
    semi_margin: float,
    unit_loss: Callable,
    soft: bool,
    average: str,
    positive_negative_distances: Any = None,
):
    """Per anchor: the units ``(a, p, n)`` of ``TripletLoss`` / ``PNLoss`` with ``"all"``.

    ```
    P_u(a) = P(a) (positive "all"), or {p*} (hard / easy)
    N_u(a, p) = N(a) (negative "all"), {n*} (hard / easy), or semi-hard for that pair:
               nearest of {n in N(a) : d(a, n) > d(a, p) + semi_margin}, else farthest of N(a)
    l_u = unit_loss(d(a, p), d_an)      d_an = d(a, n), or min(d(a, n), d(p, n)) for PNLoss
    L_a = sum_u l_u      c_a = #units (average "valid") or #{u : l_u > 0} ("active")
    ```

    Args:
        block: the :class:`PairBlock`.
        positive, negative, semi_margin: the mining rules.
        unit_loss: ``(d_ap, d_an) -> l`` (broadcasting).
        soft: the soft margin (every valid unit counts as active).
        average: ``"valid"`` or ``"active"``.
        positive_negative_distances: ``(M, M)`` reference distances with gradient, for
            ``PNLoss``; ``None`` otherwise.

    Returns:
        ``(L_a, c_a, valid, active, mean d_ap, mean d_an)``, each ``(n,)``.
    """
    distances = block.distances
    fixed = ops.stop_gradient(distances)
    width = ops.shape(distances)[1]
    has_positive = ops.any(block.positive, axis=1)
    valid = ops.logical_and(has_positive, ops.any(block.negative, axis=1))
    if positive == "all":
        positives = block.positive
    else:
        chosen = _arg(fixed, block.positive, largest=positive == "hard")
        positives = ops.logical_and(_one_hot(chosen, width), has_positive[:, None])

    negatives_of_anchor = block.negative[:, None, :]
    if negative == "all":
        negatives = negatives_of_anchor
    elif negative in ("hard", "easy"):
        chosen = _arg(fixed, block.negative, largest=negative == "easy")
        negatives = _one_hot(chosen, width)[:, None, :]
    else:  # semi-hard, for each unit's own positive
        beyond = ops.logical_and(
            negatives_of_anchor, fixed[:, None, :] > fixed[:, :, None] + semi_margin
        )
        nearest_beyond = _arg(
            ops.broadcast_to(fixed[:, None, :], ops.shape(beyond)), beyond, largest=False
        )
        farthest = _arg(fixed, block.negative, largest=True)
        chosen = ops.where(ops.any(beyond, axis=2), nearest_beyond, farthest[:, None])
        negatives = _one_hot(chosen, width)

    units = ops.logical_and(ops.logical_and(positives[:, :, None], negatives), valid[:, None, None])
    d_ap = distances[:, :, None]
    d_an = distances[:, None, :]
    if positive_negative_distances is not None:
        d_an = ops.minimum(d_an, positive_negative_distances[None, :, :])
    losses = ops.where(units, unit_loss(d_ap, d_an), 0)
    total = ops.sum(losses, axis=(1, 2)) + nan_if_not_finite(block.anchors)
    unit_count = ops.sum(ops.cast(units, distances.dtype), axis=(1, 2))
    active = ops.sum(ops.cast(ops.logical_and(units, losses > 0), distances.dtype), axis=(1, 2))
    count = unit_count if (average == "valid" or soft) else active
    return (
        total,
        count,
        valid,
        active,
        masked_mean(distances, positives),
        masked_mean(distances, block.negative),
    )


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
    """:func:`triplet_units` for ``TripletLoss`` without the ``n x M x M`` candidates.

    The positives of each anchor are taken one *slot* at a time (slot ``k``: the ``k``-th
    reference of the anchor's class in ``block.reference_order``, skipped unless it is a
    positive; one slot for a hard / easy positive), in a loop of as many steps as the
    block's largest class has references. A slot finds its positive's distance by a gather,
    then scores that positive's units against the whole row in one pass (every negative, or
    its one chosen negative), and adds to ``W_aj = dL_a / dd(a, j)`` (hinge: active units in
    which ``j`` is the positive minus those in which it is the negative; soft: the same with
    ``sigmoid`` weights). The loop runs without gradient; the gradient enters through
    ``sum_j W_aj (d(a, j) - stop_gradient(d(a, j)))``, which is zero in value and exact in
    gradient (every unit loss is a function of the distances, and mining is not
    differentiated).

    Args and returns as for :func:`triplet_units` (``margin`` replaces ``unit_loss``).
    """
    distances = block.distances
    fixed = ops.stop_gradient(distances)
    dtype = fixed.dtype
    width = ops.shape(fixed)[1]
    has_positive = ops.any(block.positive, axis=1)
    valid = ops.logical_and(has_positive, ops.any(block.negative, axis=1))
    valid_f = ops.cast(valid, dtype)
    negative_f = ops.cast(block.negative, dtype)

    if positive == "all":
        counted = ops.logical_and(block.positive, valid[:, None])
        slots, slot = positive_slots(block, counted, valid)
    else:
        chosen = _arg(fixed, block.positive, largest=positive == "hard")
        counted = ops.logical_and(_one_hot(chosen, width), valid[:, None])
        slots = 1

        def slot(k):
            return ops.cast(chosen, "int32"), valid_f

    fixed_negative = None
    if negative == "hard":
        fixed_negative = _arg(fixed, block.negative, largest=False)
    elif negative == "easy":
        fixed_negative = _arg(fixed, block.negative, largest=True)
    else:
        # Every column that is not a negative sits at +inf: never within a margin of a
        # positive, and never the nearest beyond one.
        far = ops.where(block.negative, fixed, _INF)
        if negative == "semi-hard":
            farthest = _arg(fixed, block.negative, largest=True)
        elif not soft:
            scratch = _scratch(far, 2)

    def unit(gap):
        """``(l, dl/dgap)`` of a unit with ``gap = d_ap - d_an``."""
        if soft:
            return ops.softplus(gap), ops.sigmoid(gap)
        shifted = gap + margin
        return ops.relu(shifted), ops.cast(shifted > 0, dtype)

    negatives = ops.sum(negative_f, axis=1)

    def step(k, total, units, active, weights):
        column, present = slot(k)
        d_ap = take_at(fixed, column)
        if negative == "all":
            # An absent slot reaches no column: -inf - d is -inf everywhere.
            reach = ops.where(present > 0, d_ap if soft else d_ap + margin, -_INF)
            units = units + negatives * present
            if soft:
                gap = reach[:, None] - far
                total = total + ops.sum(ops.softplus(gap), axis=1)
                slope = ops.sigmoid(gap)
                pushed = ops.sum(slope, axis=1)
                active = active + negatives * present  # every soft unit is active
                weights = weights - slope
            else:  # a unit is active iff its slope is 1
                hinge_sum, pushed, weights = _hinge_row(far, reach, weights, scratch)
                total = total + hinge_sum
                active = active + pushed
            weights = add_at(weights, column, pushed)
        else:
            if fixed_negative is None:  # semi-hard, from this positive's own distance
                beyond = ops.where(far > (d_ap + semi_margin)[:, None], far, _INF)
                nearest, nearest_beyond = _arg_extreme(beyond, largest=False)
                negative_column = ops.where(nearest < _INF, nearest_beyond, farthest)
            else:
                negative_column = fixed_negative
            negative_column = ops.cast(negative_column, "int32")
            value, slope = unit(d_ap - take_at(fixed, negative_column))
            value, slope = value * present, slope * present
            total = total + value
            units = units + present
            active = active + ops.cast(value > 0, dtype)
            weights = add_at(add_at(weights, column, slope), negative_column, -slope)
        return total, units, active, weights

    zeros = ops.zeros_like(valid_f)
    state = (zeros, zeros, zeros, ops.zeros_like(fixed))
    if positive != "all":  # one slot, known while tracing
        total, units, active, weights = step(0, *state)
    else:
        total, units, active, weights = over_slots(step, slots, state, fixed.shape[1])
    weights = ops.stop_gradient(weights)
    loss = (
        ops.stop_gradient(total)
        + ops.sum(weights * (distances - fixed), axis=1)
        + nan_if_not_finite(block.anchors)
    )
    count = units if (average == "valid" or soft) else active
    return (
        loss,
        count,
        valid,
        active,
        masked_mean(distances, counted),
        masked_mean(distances, block.negative),
    )


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
    return ops.while_loop(
        lambda k, *_: k < slots,
        lambda k, *carry: (k + 1, *step(k, *carry)),
        (ops.convert_to_tensor(0, "int32"), *state),
        maximum_iterations=bound,
    )[1:]


def _scratch(like, count):
    """``count`` buffers shaped like ``like`` on eager torch without gradient, else ``None``."""
    if not _in_place_torch(like):
        return None
    import torch

    return tuple(torch.empty_like(like) for _ in range(count))


def _hinge_row(far, reach, weights, scratch=None):
    """One positive per row against every column: ``(sum_j relu(g_j), #{j : g_j > 0},
    weights - [g > 0])`` with ``g_j = reach - far_j``.

    With ``scratch`` (eager torch) the passes write into its two ``(n, M)`` buffers and
    ``weights`` in place: a slot loop then allocates nothing of size ``n x M``.
    """
    if scratch is None:
        gap = reach[:, None] - far
        slope = ops.cast(gap > 0, gap.dtype)
        return ops.sum(ops.relu(gap), axis=1), ops.sum(slope, axis=1), weights - slope
    import torch

    gap, slope = scratch
    torch.sub(reach[:, None], far, out=gap)
    torch.gt(gap, 0, out=slope)
    weights.sub_(slope)
    return gap.clamp_(min=0).sum(1), slope.sum(1), weights


def take_at(values, columns):
    """``values[i, columns[i]]`` for every row ``i``: ``(n,)``."""
    return ops.take_along_axis(values, ops.cast(columns, "int32")[:, None], axis=1)[:, 0]


def add_at(weights, columns, values):
    """``weights[i, columns[i]] += values[i]`` for every row ``i`` (a scatter, not a pass)."""
    rows = ops.arange(ops.shape(weights)[0], dtype="int32")
    if _in_place_torch(weights):
        weights.index_put_((rows.long(), columns.long()), values, accumulate=True)
        return weights
    indices = ops.stack([rows, ops.cast(columns, "int32")], axis=1)
    return ops.scatter_update(weights, indices, values, reduction="add")


def _in_place_torch(x):
    """Eager torch, a tensor without gradient: the scatter can write in place."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return not (x.requires_grad or torch.compiler.is_compiling())


def masked_mean(values, mask):
    """Row means of ``values`` over ``mask`` ``(n, M)``; 0 for an empty row."""
    kept = ops.cast(mask, values.dtype)
    return ops.sum(values * kept, axis=1) / ops.maximum(ops.sum(kept, axis=1), 1)
