"""The pair engine: losses that score every pair, or every triplet, of an anchor's row.

For a block of ``n`` anchors against ``M`` references it forms the ``(n, M)`` distances
(without gradient) and the masks ``P(a)`` / ``N(a)`` of :mod:`triplet_tools.mining.rules`,
and hands them to a *row function* (``PairBlock -> RowScores``), which returns each
anchor's values and ``W_aj = dL_a / dd(a, j)`` in closed form. Mining is never
differentiated and every unit loss is a function of the distances, so the gradient of the
dense formulation is exactly ``sum_aj W_aj dd(a, j)``. The engine turns ``W`` into a
gradient in one of two ways:

* **products** (the losses' reductions, with a built-in distance): the weighted sum
  ``sum_a w_a L_a`` is what gets differentiated, so every block's gradient is known in the
  forward pass: ``W`` goes through the distance's :class:`~triplet_tools.distances.ProductForm`
  (two products per block, ``W @ R`` and ``A^T @ W``) and the gradients of the features
  come back in ``carrier``, a zero whose gradient is that of the weighted sum. Nothing of
  size ``n x M`` is kept for a backward pass (and nothing is differentiated twice: the
  carrier's gradient is a constant). Units chosen one per positive (tensorflow-addons'
  semi-hard) are pulled back as pairs of gathered rows instead (``O(n*D)`` per slot);
* **linearized** (``reduction="none"``, a user-defined or Manhattan distance, ``PNLoss``'s
  ``n x M x M`` units): each block's distances are recomputed with gradient and the loss is
  ``stop_gradient(L_a) + sum_j W_aj (d(a, j) - stop_gradient(d(a, j)))``; above
  :data:`REMAT_PAIRS` slopes kept (``B * M``, or ``B * M * M`` for ``n x M x M`` units) the
  blocks are recomputed in the backward pass (``keras.remat``).

The Euclidean family (a translation-invariant :class:`~triplet_tools.distances.ProductForm`)
measures anchors and references from the reference nearest to their mean
(:func:`~triplet_tools.distances.common_origin`), so a common offset of the embeddings costs
no digits of ``||a||^2 + ||r||^2 - 2 a.r``: ``O((B + M) D)`` more work, the same gradient.

Each anchor's positives are found through the references sorted by label
(``PairBlock.reference_order``), by a search instead of a pass over the row. References
whose embedding is not finite are zeroed and masked out, so NaN reaches only the loss of
the anchor that holds it. The row functions live beside their losses
(:mod:`triplet_tools.mining.triplet_rows`, ``triplet_tools.losses.pair``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import keras

from triplet_tools._ops import ops, row_sum
from triplet_tools.distances import common_origin, moved_to
from triplet_tools.mining import kernel
from triplet_tools.mining.blocks import (
    BLOCK_ELEMENTS,
    compiled_by_xla,
    count_loop,
    eager_torch,
    map_blocks,
    scan_blocks,
    xla_in_tensorflow_graph,
)
from triplet_tools.mining.heap import release_freed_memory

_INF = float("inf")

#: Above this many slopes kept for the backward pass, blocks of the linearized mode are
#: recomputed in the backward pass instead of stored: ``B * M`` anchor-reference pairs, or
#: ``B * M * M`` for ``PNLoss``'s ``n x M x M`` units (``cubic``), whose blocks keep one
#: slope per unit. 2**26 slopes (a B = 8,192 batch's pairs, a B = 406 batch's units) hold
#: 256 MB in float32. (The products mode keeps nothing for the backward pass.)
REMAT_PAIRS = 2**26

#: Whether the products mode may be taken (tests switch it off to exercise the other).
PRODUCTS = True


class PairBlock(NamedTuple):
    """What a row function sees for a block of ``n`` anchors.

    Attributes:
        distances: ``(n, M)`` ``d(a, j)``, without gradient.
        positive: ``(n, M)`` bool, ``j in P(a)``.
        negative: ``(n, M)`` bool, ``j in N(a)``.
        anchors: ``(n, D)`` anchor features, without gradient.
        rows: ``(n,)`` int32 index of each anchor in the batch (padding rows: ``-1``).
        context: the tensors passed to :func:`score_pairs` as ``context``.
        reference_order: ``(M,)`` int32 reference indices sorted by label, so that
            ``reference_order[same_start + k]``, ``k < same_count``, are the references of
            the anchor's class (its positives, itself and masked rows included).
        same_start, same_count: ``(n,)`` int32, where the anchor's class starts in that
            order and how many references it has.
        references: ``(M, D)`` reference features (non-finite rows zeroed), no gradient.
        weights: ``(n,)`` the anchors' weights ``w_a`` (0 for padding rows).
        form: the distance's ``ProductForm`` in the products mode, else ``None``: then a
            row function may pull its units back itself (:func:`pull_back_units`).
        statistics: whether the mean positive / negative distances are wanted.
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
    references: Any = None
    weights: Any = None
    form: Any = None
    statistics: bool = True


class RowScores(NamedTuple):
    """What a row function returns for its block of ``n`` anchors (no gradient anywhere).

    Attributes:
        loss: ``(n,)`` ``L_a`` (0 for an invalid anchor).
        count: ``(n,)`` ``c_a``, the anchor's counted units.
        valid: ``(n,)`` bool.
        active: ``(n,)`` the anchor's units with a positive loss.
        positive_distance, negative_distance: ``(n,)`` mean ``d(a, p)`` / ``d(a, n)`` of the
            anchor's units (statistics; zeros when ``block.statistics`` is off).
        slopes: ``(n, M)`` ``dL_a / dd(a, j)``, or ``None``.
        anchor_gradient, reference_gradient: ``(n, D)`` and ``(M, D)`` gradients of
            ``sum_a w_a L_a`` that the row function pulled back itself (products mode
            only), or ``None``.
        weighted: ``slopes`` already hold the anchors' weights (the engine multiplies
            them by ``block.weights`` otherwise).
    """

    loss: Any
    count: Any
    valid: Any
    active: Any
    positive_distance: Any
    negative_distance: Any
    slopes: Any = None
    anchor_gradient: Any = None
    reference_gradient: Any = None
    weighted: bool = False


class PairScores(NamedTuple):
    """What :func:`score_pairs` returns; per-anchor fields are ``(B,)``.

    ``loss`` carries the gradient of each ``L_a`` in the linearized mode; in the products
    mode it holds values only and ``carrier`` (a scalar 0) carries the gradient of
    ``sum_a w_a L_a`` (``None`` in the linearized mode).
    """

    loss: Any
    count: Any
    valid: Any
    active: Any
    positive_distance: Any
    negative_distance: Any
    carrier: Any = None


def block_rows(num_anchors, num_references, cubic=False):
    """Anchors per block: about :data:`~triplet_tools.mining.blocks.BLOCK_ELEMENTS` values
    per block, counting ``M`` per anchor (or ``M * M`` candidate units with ``cubic``); a
    power of two."""
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = max(num_references, 1) ** (2 if cubic else 1)
    rows = max(1, BLOCK_ELEMENTS // per_row)
    return min(num_anchors, 1 << (rows.bit_length() - 1))


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
    weights=None,
    statistics=True,
):
    """Runs ``row_function`` over row blocks of anchors; returns a :class:`PairScores`.

    Args:
        features: ``(B, D)`` anchor features (``distance.mining_features``), with gradient.
        labels: ``(B,)`` class ids.
        reference_features: ``(M, D)`` reference features, or ``None`` for the batch.
        reference_labels: ``(M,)`` class ids (with ``reference_features``).
        anchor_positions: ``(B,)`` index of each anchor among the references (``-1``:
            none), or ``None`` (``arange(B)`` in-batch, all ``-1`` otherwise).
        reference_mask: ``(M,)`` bool or ``None``.
        distance: the ``Distance``.
        row_function: ``PairBlock -> RowScores``.
        rows: anchors per block (``None``: chosen from ``B`` and ``M``).
        cubic: the row function builds ``n x M x M`` units (smaller blocks, linearized).
        context: tensors the row function needs beside the block (as ``block.context``);
            passed explicitly, so that their gradient survives recomputation (linearized).
        weights: ``(B,)`` anchor weights ``w_a``: the caller differentiates
            ``sum_a w_a L_a`` only, so the products mode may be taken. ``None``: every
            ``L_a`` keeps its own gradient (linearized).
        statistics: whether the row functions compute the mean distances.

    Returns:
        A :class:`PairScores` over all ``B`` anchors.
    """
    from triplet_tools.mining import common_label_dtype

    in_batch = reference_features is None
    if in_batch:
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
    features, clean = from_common_origin(distance, clean, mask, features)
    setup = _Setup(
        distance=distance,
        row_function=row_function,
        statistics=statistics,
        num_anchors=features.shape[0],
        num_references=reference_labels.shape[0],
    )
    anchor_positions = ops.cast(anchor_positions, "int32")
    if takes_products(distance, weights, cubic):
        weights = ops.stop_gradient(ops.convert_to_tensor(weights, features.dtype))
        return _score_products(
            setup, distance.product_form, features, clean, labels, reference_labels,
            anchor_positions, mask, weights, context, rows,
        )  # fmt: skip
    return _score_linearized(
        setup, features, clean, labels, reference_labels, anchor_positions, mask, context,
        rows, cubic,
    )  # fmt: skip


def takes_products(distance, weights, cubic=False):
    """Whether :func:`score_pairs` takes the products mode for these arguments."""
    return weights is not None and distance.product_form is not None and not cubic and PRODUCTS


class _Setup(NamedTuple):
    distance: Any
    row_function: Callable
    statistics: bool
    num_anchors: Any
    num_references: Any


def _large(setup, cubic=False):
    """More than :data:`REMAT_PAIRS` slopes would be kept for the backward pass, ``B * M``
    (or ``B * M * M`` for the ``n x M x M`` units of ``cubic``): the linearized mode
    recomputes its blocks, and eager torch returns freed heap pages between blocks."""
    sizes = (setup.num_anchors, setup.num_references)
    if None in sizes:
        return False
    return sizes[0] * sizes[1] ** (2 if cubic else 1) > REMAT_PAIRS


def _class_ranges(labels, reference_labels):
    """``(order, same_start, same_count)``: the references sorted by label, and where each
    anchor's class lies in that order (a search, not a pass over every row)."""
    order = ops.cast(ops.argsort(reference_labels), "int32")
    sorted_labels = ops.take(reference_labels, order)
    same_start = sorted_search(sorted_labels, labels, side="left")
    same_end = sorted_search(sorted_labels, labels, side="right")
    return order, same_start, same_end - same_start


def _block(setup, anchors, anchor_labels, positions, batch_rows, same_start, same_count, shared):
    """``(distances, PairBlock)`` of ``n`` anchors: the distances as computed from the
    anchors and references given (with gradient in the linearized mode), and the block,
    which holds them without."""
    references, reference_labels, kept, order = shared["references"]
    same = ops.equal(anchor_labels[:, None], reference_labels[None, :])
    kept = kept[None, :]
    reference_index = ops.arange(ops.shape(reference_labels)[0], dtype="int32")
    positive = ops.logical_and(
        ops.logical_and(same, kept), ops.not_equal(positions[:, None], reference_index[None, :])
    )
    negative = ops.logical_and(ops.logical_not(same), kept)
    distances = setup.distance.pairwise_features(anchors, references)
    return distances, PairBlock(
        ops.stop_gradient(distances),
        positive,
        negative,
        ops.stop_gradient(anchors),
        batch_rows,
        tuple(shared["context"]),
        order,
        same_start,
        same_count,
        ops.stop_gradient(references),
        shared.get("weights"),
        shared.get("form"),
        setup.statistics,
    )


def _score_products(
    setup, form, features, clean, labels, reference_labels, positions, mask, weights, context, rows
):
    """The products mode: values and the gradient of ``sum_a w_a L_a`` in one pass."""
    fixed_features = ops.stop_gradient(features)
    fixed_references = ops.stop_gradient(clean)
    fixed_context = tuple(ops.stop_gradient(t) for t in context)
    if rows is None:
        rows = block_rows(setup.num_anchors, setup.num_references)
    large = _large(setup)

    def compute(features, references, labels, reference_labels, positions, mask, weights, *ctx):
        order, same_start, same_count = _class_ranges(labels, reference_labels)
        dim = ops.shape(references)[1]
        width = ops.shape(references)[0]
        initial = (
            ops.zeros((dim, width), references.dtype),  # sum of A^T C over the blocks
            ops.zeros((width,), references.dtype),  # sum of C's columns (the norm part)
            ops.zeros_like(references),  # units the row function pulled back itself
        )
        shared = {
            "references": (references, reference_labels, mask, order),
            "context": ctx,
            "form": form,
        }

        def one_block(carry, block):
            transposed, column_sums, gathered = carry
            anchors, anchor_labels, anchor_positions, batch_rows, start, count, row_weights = block
            if large:
                release_freed_memory()
            distances, pair_block = _block(
                setup, anchors, anchor_labels, anchor_positions, batch_rows, start, count,
                {**shared, "weights": row_weights},
            )  # fmt: skip
            scores = setup.row_function(pair_block)
            gradient = ops.zeros_like(anchors)
            if scores.slopes is not None:
                slopes = scores.slopes if scores.weighted else scores.slopes * row_weights[:, None]
                slopes = form.slopes(slopes, distances)
                gradient = form.anchor_gradient(slopes, anchors, references)
                transposed = transposed + form.reference_gradient_transposed(slopes, anchors)
                if form.norms:
                    column_sums = column_sums + ops.sum(slopes, axis=0)
            if scores.anchor_gradient is not None:
                gradient = gradient + scores.anchor_gradient
                gathered = gathered + scores.reference_gradient
            outputs = _values(scores, anchors) + (gradient,)
            return (transposed, column_sums, gathered), outputs

        (transposed, column_sums, gathered), outputs = scan_blocks(
            one_block,
            initial,
            (features, labels, positions, ops.arange(ops.shape(labels)[0], dtype="int32"),
             same_start, same_count, weights),
            rows=rows,
            pad_values=(0, 0, -1, -1, 0, 0, 0),
            outputs=[((), references.dtype)] * 6 + [((dim,), references.dtype)],
        )  # fmt: skip
        reference_gradient = form.finish_reference_gradient(transposed, column_sums, references)
        return (*outputs, reference_gradient + gathered)

    compute = xla_in_tensorflow_graph(compute)
    *values, anchor_gradient, reference_gradient = compute(
        fixed_features, fixed_references, labels, reference_labels, positions, mask, weights,
        *fixed_context,
    )  # fmt: skip
    loss, count, valid, active, positive_distance, negative_distance = values
    carrier = ops.sum(anchor_gradient * (features - fixed_features)) + ops.sum(
        reference_gradient * (clean - fixed_references)
    )
    return PairScores(loss, count, valid > 0, active, positive_distance, negative_distance, carrier)


def _values(scores, anchors):
    """The per-anchor outputs of a block, floats (a loop's outputs), NaN reaching the loss
    of an anchor whose features are not finite."""
    dtype = scores.loss.dtype
    return (
        scores.loss + nan_if_not_finite(anchors),
        ops.cast(scores.count, dtype),
        ops.cast(scores.valid, dtype),
        ops.cast(scores.active, dtype),
        ops.cast(scores.positive_distance, dtype),
        ops.cast(scores.negative_distance, dtype),
    )


def _score_linearized(
    setup, features, clean, labels, reference_labels, positions, mask, context, rows, cubic
):
    """The linearized mode: every ``L_a`` with its own gradient, through each block's
    distances recomputed with gradient."""
    recompute = _large(setup, cubic)
    order, same_start, same_count = _class_ranges(labels, reference_labels)
    kept = ops.cast(mask, "int32")

    def scored(anchors, anchor_labels, anchor_positions, batch_rows, start, count, *tensors):
        references, reference_labels, kept, order, *extra = tensors
        shared = {"references": (references, reference_labels, kept > 0, order), "context": extra}
        distances, block = _block(
            setup, anchors, anchor_labels, anchor_positions, batch_rows, start, count, shared
        )
        block = block._replace(weights=ops.ones_like(distances[:, 0]))
        scores = setup.row_function(block)
        loss, *values = _values(scores, block.anchors)
        if scores.slopes is not None:
            fixed = ops.stop_gradient(distances)
            loss = loss + ops.sum(ops.stop_gradient(scores.slopes) * (distances - fixed), axis=1)
        return (loss, *values)

    def recomputed(*tensors):
        # Every tensor goes in as an argument (TensorFlow's recompute_grad inside a loop
        # fails on captured ones), none of them bool.
        release_freed_memory()
        return scored(*tensors)

    def block(*block_tensors):
        tensors = (*block_tensors, clean, reference_labels, kept, order, *context)
        if not recompute:
            return scored(*tensors)
        return keras.remat(recomputed)(*tensors)

    if rows is None:
        rows = block_rows(setup.num_anchors, setup.num_references, cubic)
    loss, count, valid, active, positive_distance, negative_distance = map_blocks(
        block,
        (
            features,
            labels,
            positions,
            ops.arange(ops.shape(labels)[0], dtype="int32"),
            same_start,
            same_count,
        ),
        rows=rows,
        pad_values=(0, 0, -1, -1, 0, 0),
    )
    return PairScores(loss, count, valid > 0, active, positive_distance, negative_distance)


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
    if _in_place_torch(target):
        target.index_add_(0, rows.long(), values)
        return target
    return ops.scatter_update(target, rows[:, None], values, reduction="add")


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


def masked_exponentials(values, masks, peaks=None):
    """Stabilised log-sum-exps of one row over each of several disjoint masks, in one
    ``exp`` pass, with what their gradients need. No gradient flows through it.

    ```
    lse_k(a) = log sum_{j in mask_k(a)} exp(v_aj)        (-inf for an empty mask)
    e_aj     = exp(v_aj - peak_k(a))   for j in mask_k(a), 0 outside every mask
    softmax_k(a, j) = e_aj * inverse_k(a)      (= d lse_k / d v_aj on mask_k)
    ```

    Args:
        values: ``(n, M)``.
        masks: disjoint ``(n, M)`` bool masks.
        peaks: per mask, ``(n,)`` ``max_{mask_k(a)} v`` when the caller knows it (any
            finite value for an empty mask), or ``None`` to take the maxima here.

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
    if peaks is None:
        peaks = [ops.max(ops.where(mask, values, -_INF), axis=1) for mask in masks]
    peaks = [ops.where(ops.isfinite(peak), peak, ops.zeros_like(peak)) for peak in peaks]
    # Masked entries become exp(-inf) = 0 before the exp, never inf after it.
    shifted = ops.full_like(values, -_INF)
    for mask, peak in zip(reversed(masks), reversed(peaks)):
        shifted = ops.where(mask, values - peak[:, None], shifted)
    e = ops.exp(shifted)
    lses, inverses = [], []
    totals = [row_sum(e)] if len(masks) == 1 else [row_sum(ops.where(m, e, 0)) for m in masks]
    for total, peak in zip(totals, peaks):
        # A non-empty mask holds its peak, exp(0) = 1: total >= 1 exactly when non-empty.
        kept = total > 0
        safe = ops.where(kept, total, ops.ones_like(total))
        lses.append(ops.where(kept, ops.log(safe) + peak, -_INF))
        inverses.append(ops.where(kept, 1 / safe, ops.zeros_like(safe)))
    return lses, e, inverses


def masked_mean(values, mask):
    """Row means of ``values`` over ``mask`` ``(n, M)``; 0 for an empty row."""
    kept = ops.cast(mask, values.dtype)
    return row_sum(values * kept) / ops.maximum(row_sum(kept), 1)


def row_scores(block, loss, count, valid, active, positives, **gradients):
    """A :class:`RowScores`, with the mean distances over ``positives`` ``(n, M)`` and
    ``N(a)`` when ``block.statistics`` (zeros otherwise: two passes over the block saved);
    ``gradients`` are the remaining fields (``slopes=``, ...)."""
    if block.statistics:
        means = (
            masked_mean(block.distances, positives),
            masked_mean(block.distances, block.negative),
        )
    else:
        means = (ops.zeros_like(block.distances[:, 0]),) * 2
    return RowScores(loss, count, valid, active, *means, **gradients)


# --- per-row searches shared by the row functions -------------------------------------------


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
    if _in_place_torch(values):
        from triplet_tools.mining import torch_kernel

        return torch_kernel.arg_extreme(values, largest)
    return kernel.arg_extreme(values, largest)


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
