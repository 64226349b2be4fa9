"""Pair-based losses: each a function of an anchor's whole row of pair distances.

``MultiSimilarityLoss``, ``CircleLoss`` and ``SoftNearestNeighborLoss`` (TF Similarity's other
supervised metric losses) and ``LiftedStructLoss`` (tensorflow-addons', also in
``triplet_tools.tfa``). One base, :class:`PairLoss`, runs the pair engine
(:mod:`triplet_tools.mining.engine`) over blocks of anchors; a loss states one hook, its
value-only row function ``row(block) -> l_a`` (:mod:`triplet_tools.pair_rows`), which the
engine differentiates per block. The built-in losses add hand-derived slopes,
``row_slopes``, as a faster path (tested to equal the autodiff ones); lifted structure
scores its positives one slot at a time (``pair_rows.positive_slots``) instead of every
pair. The references are those of every loss here (the batch, a cross-batch memory, the
global batch); invalid anchors get 0 and are left out of the average.
"""

from __future__ import annotations

from triplet_tools import pair_rows
from triplet_tools._ops import ops
from triplet_tools.losses.base import TripletFamilyLoss
from triplet_tools.mining import engine, prepare
from triplet_tools.pair_rows import RowValues

_FAR_BELOW = -1e30
_INF = float("inf")


class PairLoss(TripletFamilyLoss):
    """Base of the pair-based losses: the pair engine, the common arguments and the config.

    A subclass states :meth:`row`, each anchor's value from a block of its pair distances
    (see :mod:`triplet_tools.pair_rows`); the engine differentiates it. It may add
    :meth:`row_slopes`, the same values with hand-derived slopes, as a faster path.

    Args:
        distance: a distance name or ``Distance``.
        name: the loss name.
        reduction: as for ``TripletLoss`` (default: mean over valid anchors).
        **kwargs: ``dtype``, ``block_size``, ``global_mining``, ``memory`` as for
            ``TripletLoss``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> class MeanPositive(PairLoss):      # l_a = mean distance to the positives
    ...     def row(self, block):
    ...         return pair_rows.masked_mean(block.distances, block.positive)
    >>> loss = MeanPositive("euclidean", "mean_positive", reduction="none")
    >>> x = np.array([[0.0], [2.0], [5.0]], "float32")
    >>> np.asarray(loss([0, 0, 1], x)).tolist()
    [2.0, 2.0, 0.0]
    """

    #: The loss's own arguments, in config order.
    parameters: tuple[str, ...] = ()

    #: Whether :meth:`row_slopes` (when the loss has it) replaces the autodiff of
    #: :meth:`row`; ``False`` on an instance takes the autodiff path (tests, benchmarks).
    closed_form = True

    def __init__(self, distance, name, reduction="sum_over_batch_size", **kwargs):
        super().__init__(distance=distance, name=name, reduction=reduction, **kwargs)

    def row(self, block):
        """``l_a`` ``(n,)`` (or a :class:`~triplet_tools.pair_rows.RowValues`) for a
        :class:`~triplet_tools.pair_rows.PairBlock`, differentiable in ``block.distances``."""
        raise NotImplementedError(f"{type(self).__name__} must define row(block).")

    def row_slopes(self, block):
        """Optional fast path: ``(l_a, c_a, valid, W)`` without gradient, the values of
        :meth:`row` with ``W_aj = dl_a / dd(a, j)`` ``(n, M)`` in closed form (0 on invalid
        anchors). A loss without it is differentiated by autodiff."""
        raise NotImplementedError

    def row_function(self):
        """What the engine runs per block (``PairBlock -> RowScores``): the closed form when
        the loss has one and :attr:`closed_form` is on, else autodiff of :meth:`row`."""
        if self.closed_form and type(self).row_slopes is not PairLoss.row_slopes:
            return self._closed_form_row
        return pair_rows.with_slopes(self.row)

    def _closed_form_row(self, block):
        return self._scores(block, *self.row_slopes(block))

    def reference_term(self, block):
        """Optional: ``T_a`` ``(n,)``, a value of each anchor's row that the other rows read
        as ``block.terms[j]`` (lifted structure's log-sum-exp over a positive's own
        negatives). The engine computes it for every reference in a first pass and
        differentiates the rows through it (in the linearized mode)."""
        raise NotImplementedError

    def _term_values(self, block):
        return RowValues(self.reference_term(block), None, block.rows >= 0)

    def _scores(self, block, loss, count, valid, slopes):
        """The block's ``RowScores``: loss and count zeroed on invalid anchors, the active
        anchors those with a positive loss."""
        valid_f = ops.cast(valid, block.distances.dtype)
        loss = loss * valid_f
        active = ops.cast(loss > 0, loss.dtype) * valid_f
        return pair_rows.row_scores(
            block, loss, count * valid_f, valid, active, block.positive, slopes=slopes
        )

    def score_set(self, *references, weights=None, summed=False):
        terms = None
        if type(self).reference_term is not PairLoss.reference_term:
            summed = False  # the terms carry their gradient in the linearized mode
            row_function = pair_rows.with_slopes(self._term_values)
            terms = self.reference_terms(*references, row_function=row_function)
        return self.score_pairs(*references, weights=weights, summed=summed, terms=terms)

    def reference_terms(self, *references, row_function, summed=False, weights=None):
        """Pass 1: every reference's own term ``(M,)``, from its row against the
        references (``score_set``'s six arguments; the terms carry their gradient unless
        ``summed``). A reference that is not finite is zeroed first, so that its NaN
        cannot reach other rows' gradients (it is never a positive)."""
        features, labels, reference_features, reference_labels, positions, mask = references
        in_batch = reference_features is None
        rows = features if in_batch else reference_features
        if in_batch:
            reference_labels = labels
        else:
            positions = ops.arange(ops.shape(reference_labels)[0], dtype="int32")
        rows, _ = prepare.zero_non_finite(rows)
        return engine.score_pairs(
            rows,
            reference_labels,
            None if in_batch else rows,
            None if in_batch else reference_labels,
            positions,
            mask,
            distance=self.distance,
            row_function=row_function,
            mode=engine.choose_mode(self.distance, summed),
            weights=weights,
            rows=self.block_size,
            statistics=False,
        ).loss

    def score_pairs(self, *references, weights, summed, context=(), terms=None):
        """The engine over ``score_set``'s arguments, with ``context`` and the references'
        ``terms`` for the row function."""
        return engine.score_pairs(
            *references,
            distance=self.distance,
            row_function=self.row_function(),
            mode=engine.choose_mode(self.distance, summed),
            weights=weights,
            rows=self.block_size,
            context=context,
            terms=terms,
            statistics=self.wants_statistics(summed),
        )

    def get_config(self):
        config = super().get_config()
        return {**config, **{name: getattr(self, name) for name in self.parameters}}
