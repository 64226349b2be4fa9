"""The pair engine: every pair, or every triplet, of an anchor's row, in blocks of rows.

For a block of ``n`` anchors against ``M`` references it forms the ``(n, M)`` distances
(without gradient) and the masks ``P(a)`` / ``N(a)`` of :mod:`triplet_tools.mining.rules`,
and hands them to a *row function* (:mod:`triplet_tools.pair_rows`), which returns each
anchor's values and ``W_aj = dL_a / dd(a, j)`` (by autodiff of a value-only row, or in
closed form). Mining is never differentiated and every unit loss is a function of the
distances, so the gradient of the dense formulation is exactly ``sum_aj W_aj dd(a, j)``.
The caller picks how ``W`` becomes a gradient, once, as a :class:`Mode`
(:func:`choose_mode`):

* ``Mode.PRODUCTS`` (a reduced loss with a built-in distance): only ``sum_a w_a L_a`` is
  differentiated, so every block's gradient is known in the forward pass: ``W`` goes
  through the distance's :class:`~triplet_tools.distances.ProductForm` (two products per
  block, ``W @ R`` and ``A^T @ W``) and the gradients of the features come back in
  ``carrier``, a zero whose gradient is that of the weighted sum. Nothing of size
  ``n x M`` is kept for a backward pass. Units chosen one per positive (tensorflow-addons'
  semi-hard) are pulled back as pairs of gathered rows instead (``O(n*D)`` per slot);
* ``Mode.LINEARIZED`` (``reduction="none"``, a user-defined or Manhattan distance,
  ``PNLoss``'s ``n x M x M`` units): each block's distances are recomputed with gradient and
  the loss is ``stop_gradient(L_a) + sum_j W_aj (d(a, j) - stop_gradient(d(a, j)))``; above
  :data:`REMAT_PAIRS` slopes kept (``B * M``, or ``B * M * M`` for ``n x M x M`` units) the
  blocks are recomputed in the backward pass (``keras.remat``).

The Euclidean family (a translation-invariant :class:`~triplet_tools.distances.ProductForm`)
measures anchors and references from the reference nearest to their mean
(:func:`~triplet_tools.distances.common_origin`), so a common offset of the embeddings costs
no digits of ``||a||^2 + ||r||^2 - 2 a.r``: ``O((B + M) D)`` more work, the same gradient.

Each anchor's positives are found through the references sorted by label
(``PairBlock.reference_order``), by a search instead of a pass over the row. References
whose embedding is not finite are zeroed and masked out, so NaN reaches only the loss of
the anchor that holds it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

import keras

from triplet_tools._ops import ops
from triplet_tools.mining.blocks import (
    map_blocks,
    rows_per_block,
    scan_blocks,
    xla_in_tensorflow_graph,
)
from triplet_tools.mining.heap import release_freed_memory
from triplet_tools.mining.prepare import (
    class_ranges,
    from_common_origin,
    zero_non_finite,
)
from triplet_tools.mining.results import OUTPUTS, outputs_of, triplets_from
from triplet_tools.pair_rows import PairBlock

#: Above this many slopes kept for the backward pass, blocks of the linearized mode are
#: recomputed in the backward pass instead of stored: ``B * M`` anchor-reference pairs, or
#: ``B * M * M`` for ``PNLoss``'s ``n x M x M`` units (``cubic``), whose blocks keep one
#: slope per unit. 2**26 slopes (a B = 8,192 batch's pairs, a B = 406 batch's units) hold
#: 256 MB in float32. (The products mode keeps nothing for the backward pass.)
REMAT_PAIRS = 2**26


class Mode(enum.Enum):
    """How the engine turns the row functions' slopes into a gradient (module docstring)."""

    PRODUCTS = "products"
    LINEARIZED = "linearized"


def choose_mode(distance, summed, cubic=False):
    """The engine's mode for a call: products when only a weighted sum is differentiated
    (``summed``), the distance has a product form and the units are pairs, not ``n x M x
    M`` candidates (``cubic``); linearized otherwise.

    Example:

    >>> from triplet_tools.distances import get
    >>> choose_mode(get("cosine"), summed=True), choose_mode(get("manhattan"), summed=True)
    (<Mode.PRODUCTS: 'products'>, <Mode.LINEARIZED: 'linearized'>)
    """
    if summed and distance.product_form is not None and not cubic:
        return Mode.PRODUCTS
    return Mode.LINEARIZED


class BlockInputs(NamedTuple):
    """One block of ``n`` anchors as the loops hand it over (padding rows: ``PADDING``)."""

    anchors: Any
    labels: Any
    positions: Any
    rows: Any
    same_start: Any
    same_count: Any
    weights: Any = None


#: What pads each field of :class:`BlockInputs` in the last block.
PADDING = BlockInputs(0, 0, -1, -1, 0, 0, 0)


def block_rows(num_anchors, num_references, cubic=False):
    """Anchors per block: about :data:`~triplet_tools.mining.blocks.BLOCK_ELEMENTS` values
    per block, counting ``M`` per anchor (or ``M * M`` candidate units with ``cubic``); a
    power of two (:func:`~triplet_tools.mining.blocks.rows_per_block`).

    Example:

    >>> block_rows(8, 4), block_rows(None, 4)
    (8, None)
    """
    if num_references is None:
        return num_anchors
    per_row = max(num_references, 1) ** (2 if cubic else 1)
    return rows_per_block(num_anchors, per_row, power_of_two=True)


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
    mode,
    weights=None,
    rows=None,
    cubic=False,
    context=(),
    terms=None,
    statistics=True,
):
    """Runs ``row_function`` over row blocks of anchors; returns their
    :class:`~triplet_tools.mining.results.AnchorTriplets`.

    Args:
        features: ``(B, D)`` anchor features (``distance.mining_features``), with gradient.
        labels: ``(B,)`` class ids.
        reference_features: ``(M, D)`` reference features, or ``None`` for the batch.
        reference_labels: ``(M,)`` class ids (with ``reference_features``).
        anchor_positions: ``(B,)`` index of each anchor among the references (``-1``:
            none), or ``None`` (``arange(B)`` in-batch, all ``-1`` otherwise).
        reference_mask: ``(M,)`` bool or ``None``.
        distance: the ``Distance``.
        row_function: ``PairBlock -> RowScores`` with slopes (see
            :func:`triplet_tools.pair_rows.with_slopes` for a value-only one).
        mode: a :class:`Mode` (:func:`choose_mode`).
        weights: ``(B,)`` anchor weights ``w_a``, whose weighted sum ``sum_a w_a L_a`` is
            what ``Mode.PRODUCTS`` differentiates (required there, unused otherwise).
        rows: anchors per block (``None``: chosen from ``B`` and ``M``).
        cubic: the row function builds ``n x M x M`` units (smaller blocks, linearized).
        context: tensors the row function needs beside the block (as ``block.context``);
            passed explicitly, so that their gradient survives recomputation (linearized).
        terms: ``(M,)`` the references' own terms, with gradient (``block.terms``; the
            row function returns ``term_slopes``), or ``None``. ``Mode.LINEARIZED`` only.
        statistics: whether the row functions compute the mean distances.

    Returns:
        ``AnchorTriplets`` over all ``B`` anchors (``carrier`` set in ``Mode.PRODUCTS``).
    """
    from triplet_tools.mining import common_label_dtype

    if mode is Mode.PRODUCTS and (weights is None or distance.product_form is None or cubic):
        raise ValueError(
            "Mode.PRODUCTS needs anchor weights, a distance with a product form and pair "
            "units; use choose_mode() to pick the mode."
        )
    if mode is Mode.PRODUCTS and terms is not None:
        raise ValueError("The references' terms carry their gradient in Mode.LINEARIZED only.")
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
    features, clean = from_common_origin(distance, clean, mask, features)
    setup = _Setup(distance, row_function, statistics, features.shape[0], reference_labels.shape[0])
    anchor_positions = ops.cast(anchor_positions, "int32")
    if mode is Mode.PRODUCTS:
        weights = ops.stop_gradient(ops.convert_to_tensor(weights, features.dtype))
        return _score_products(
            setup, distance.product_form, features, clean, labels, reference_labels,
            anchor_positions, mask, weights, context, rows,
        )  # fmt: skip
    return _score_linearized(
        setup, features, clean, labels, reference_labels, anchor_positions, mask, context,
        terms, rows, cubic,
    )  # fmt: skip


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


def _block_inputs(features, labels, positions, same_start, same_count, weights=None):
    rows = ops.arange(ops.shape(labels)[0], dtype="int32")
    return BlockInputs(features, labels, positions, rows, same_start, same_count, weights)


class _References(NamedTuple):
    """What every block of one call shares."""

    features: Any
    labels: Any
    kept: Any
    order: Any
    context: tuple
    form: Any = None
    terms: Any = None


def _block(setup, inputs, shared):
    """``(distances, PairBlock)`` of one :class:`BlockInputs`: the distances as computed from
    the anchors and references given (with gradient in the linearized mode), and the block,
    which holds them without."""
    same = ops.equal(inputs.labels[:, None], shared.labels[None, :])
    kept = shared.kept[None, :]
    reference_index = ops.arange(ops.shape(shared.labels)[0], dtype="int32")
    positive = ops.logical_and(
        ops.logical_and(same, kept),
        ops.not_equal(inputs.positions[:, None], reference_index[None, :]),
    )
    negative = ops.logical_and(ops.logical_not(same), kept)
    distances = setup.distance.pairwise_features(inputs.anchors, shared.features)
    weights = inputs.weights
    if weights is None:
        weights = ops.ones_like(distances[:, 0])
    return distances, PairBlock(
        distances=ops.stop_gradient(distances),
        positive=positive,
        negative=negative,
        anchors=ops.stop_gradient(inputs.anchors),
        rows=inputs.rows,
        context=tuple(shared.context),
        reference_order=shared.order,
        same_start=inputs.same_start,
        same_count=inputs.same_count,
        references=ops.stop_gradient(shared.features),
        weights=weights,
        form=shared.form,
        statistics=setup.statistics,
        terms=None
        if shared.terms is None
        else ops.broadcast_to(ops.stop_gradient(shared.terms)[None, :], ops.shape(distances)),
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
        order, same_start, same_count = class_ranges(labels, reference_labels)
        dim = ops.shape(references)[1]
        width = ops.shape(references)[0]
        initial = (
            ops.zeros((dim, width), references.dtype),  # sum of A^T C over the blocks
            ops.zeros((width,), references.dtype),  # sum of C's columns (the norm part)
            ops.zeros_like(references),  # units the row function pulled back itself
        )
        shared = _References(references, reference_labels, mask, order, ctx, form)

        def one_block(carry, block):
            transposed, column_sums, gathered = carry
            inputs = BlockInputs(*block)
            if large:
                release_freed_memory()
            distances, pair_block = _block(setup, inputs, shared)
            scores = setup.row_function(pair_block)
            gradient = ops.zeros_like(inputs.anchors)
            if scores.slopes is not None:
                slopes = scores.slopes
                if not scores.weighted:
                    slopes = slopes * inputs.weights[:, None]
                slopes = form.slopes(slopes, distances)
                gradient = form.anchor_gradient(slopes, inputs.anchors, references)
                transposed = transposed + form.reference_gradient_transposed(slopes, inputs.anchors)
                if form.norms:
                    column_sums = column_sums + ops.sum(slopes, axis=0)
            if scores.anchor_gradient is not None:
                gradient = gradient + scores.anchor_gradient
                gathered = gathered + scores.reference_gradient
            outputs = outputs_of(scores, inputs.anchors) + (gradient,)
            return (transposed, column_sums, gathered), outputs

        inputs = _block_inputs(features, labels, positions, same_start, same_count, weights)
        (transposed, column_sums, gathered), outputs = scan_blocks(
            one_block,
            initial,
            tuple(inputs),
            rows=rows,
            pad_values=tuple(PADDING),
            outputs=[((), references.dtype)] * len(OUTPUTS) + [((dim,), references.dtype)],
        )
        reference_gradient = form.finish_reference_gradient(transposed, column_sums, references)
        return (*outputs, reference_gradient + gathered)

    compute = xla_in_tensorflow_graph(compute)
    *values, anchor_gradient, reference_gradient = compute(
        fixed_features, fixed_references, labels, reference_labels, positions, mask, weights,
        *fixed_context,
    )  # fmt: skip
    carrier = ops.sum(anchor_gradient * (features - fixed_features)) + ops.sum(
        reference_gradient * (clean - fixed_references)
    )
    return triplets_from(values, carrier)


def _score_linearized(
    setup, features, clean, labels, reference_labels, positions, mask, context, terms, rows,
    cubic,
):  # fmt: skip
    """The linearized mode: every ``L_a`` with its own gradient, through each block's
    distances recomputed with gradient (and the references' ``terms``, when given)."""
    recompute = _large(setup, cubic)
    order, same_start, same_count = class_ranges(labels, reference_labels)
    kept = ops.cast(mask, "int32")
    width = len(BlockInputs._fields) - 1  # no weights: each L_a keeps its own gradient

    def scored(*tensors):
        inputs = BlockInputs(*tensors[:width])
        references, reference_labels, kept, order, *extra = tensors[width:]
        live_terms = extra.pop() if terms is not None else None
        shared = _References(
            references, reference_labels, kept > 0, order, tuple(extra), terms=live_terms
        )
        distances, block = _block(setup, inputs, shared)
        scores = setup.row_function(block)
        loss, *values = outputs_of(scores, block.anchors)
        if scores.slopes is not None:
            fixed = ops.stop_gradient(distances)
            loss = loss + ops.sum(ops.stop_gradient(scores.slopes) * (distances - fixed), axis=1)
        if scores.term_slopes is not None:
            moved = (live_terms - ops.stop_gradient(live_terms))[None, :]
            loss = loss + ops.sum(ops.stop_gradient(scores.term_slopes) * moved, axis=1)
        return (loss, *values)

    def recomputed(*tensors):
        # Every tensor goes in as an argument (TensorFlow's recompute_grad inside a loop
        # fails on captured ones), none of them bool.
        release_freed_memory()
        return scored(*tensors)

    def block(*block_tensors):
        tensors = (*block_tensors, clean, reference_labels, kept, order, *context)
        if terms is not None:
            tensors = (*tensors, terms)
        if not recompute:
            return scored(*tensors)
        return keras.remat(recomputed)(*tensors)

    if rows is None:
        rows = block_rows(setup.num_anchors, setup.num_references, cubic)
    inputs = _block_inputs(features, labels, positions, same_start, same_count)
    outputs = map_blocks(block, tuple(inputs)[:width], rows=rows, pad_values=PADDING[:width])
    return triplets_from(outputs)
