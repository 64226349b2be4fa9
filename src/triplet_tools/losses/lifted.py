"""Lifted structured loss (tensorflow-addons' form) on the pair engine.

Its value-only row reads each positive's own term, a log-sum-exp over that positive's
negatives, through the pair engine's reference terms (``PairLoss.reference_term``). The
faster closed form scores each anchor's positives one slot at a time
(``mining.slots.positive_slots``) and, in the products mode, uses ``J_ac = J_ca`` so that
no third pass is needed.
"""

from __future__ import annotations

import keras

from triplet_tools._ops import ops
from triplet_tools._validation import check_number
from triplet_tools.losses.pair import PairLoss
from triplet_tools.mining import engine
from triplet_tools.mining.slots import add_at, over_slots, positive_slots, take_at
from triplet_tools.pair_rows import (
    RowScores,
    RowValues,
    has_pairs,
    masked_exponentials,
    masked_logsumexp,
)

_FAR_BELOW = -1e30
_INF = float("inf")


@keras.saving.register_keras_serializable(package="triplet_tools")
class LiftedStructLoss(PairLoss):
    """Lifted structured loss (Oh Song et al. 2016), tensorflow-addons' form.

    ```
    J_ij = log( sum_{k in N(i)} exp(margin - d_ik) + sum_{l in N(j)} exp(margin - d_jl) ) + d_ij
    L_i  = sum_{j in P(i)} max(J_ij, 0)^2 / 2        c_i = |P(i)|
    ```

    So the default reduction is ``sum max(J_ij, 0)^2 / (2 #ordered positive pairs)``. ``N(j)``
    is the positive's own negatives among the references, so this loss mines twice: once
    over the references (their ``log sum exp`` of negatives), then over the anchors.

    Args:
        margin: ``>= 0`` (default 1).
        distance: default ``"euclidean"`` (tfa's).
        name, reduction, **kwargs: as for :class:`PairLoss`.

    Example:

    >>> import numpy as np
    >>> loss = LiftedStructLoss(reduction="none")
    >>> x = np.array([[0.0], [1.0], [3.0]], "float32")
    >>> # pair (0, 1): J = log(e^(1-3) + e^(1-2)) + 1 = 0.3133; J^2 / 2 = 0.0491
    >>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
    0.0491

    Reference:
        Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
        CVPR 2016.
    """

    parameters = ("margin",)

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        name="LiftedStructLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        self.margin = check_number(margin, "margin", minimum=0)
        super().__init__(distance, name, reduction, **kwargs)

    def reference_term(self, block):
        term = masked_logsumexp(self.margin - block.distances, block.negative)
        return ops.where(ops.isfinite(term), term, _FAR_BELOW)  # no negative: invalid anyway

    def row(self, block):
        d = block.distances
        both = ops.logaddexp(self.reference_term(block)[:, None], block.terms)
        hinge = ops.where(block.positive, ops.relu(both + d), 0)
        count = ops.sum(ops.cast(block.positive, d.dtype), axis=1)
        return RowValues(ops.sum(ops.square(hinge), axis=1) / 2, count, has_pairs(block))

    # --- the closed form: slots over each anchor's positives, and in the products mode
    # J_ac = J_ca, so that no third pass is needed ------------------------------------------

    def _own_term(self, block):
        """``(log sum_{N(a)} exp(margin - d), its softmax over N(a))``: -inf kept finite
        (far below any real term) so that logaddexp and its gradient stay finite; an anchor
        without negatives is invalid anyway."""
        (term,), e, (inverse,) = masked_exponentials(
            self.margin - block.distances, [block.negative]
        )
        term = ops.where(ops.isfinite(term), term, _FAR_BELOW)
        return term, e * inverse[:, None]

    def _term_row(self, block):
        """Pass 1: each row's own term, as its "loss" (with gradient when linearized)."""
        term, softmax = self._own_term(block)
        zeros = ops.zeros_like(term)
        slopes = None if block.form is not None else -softmax
        return RowScores(term, zeros, zeros > 0, zeros, zeros, zeros, slopes)

    def _pair_slots(self, block, own, others, positive_weight, add_shares, initial):
        """The slot loop over each valid anchor's positives ``c``: ``J_ac`` at one positive
        per anchor (a gather, not a pass over the row).

        ``add_shares(column, hinge, own_share, other_share, *extra) -> extra`` adds what the
        mode needs, with ``own_share = dJ / d own_a`` and ``other_share = dJ / d others_c``.
        Returns ``(loss, count, valid, slopes at the positives (n, M), extra)``."""
        d = block.distances
        valid = has_pairs(block)
        counted = ops.logical_and(block.positive, valid[:, None])
        slots, slot = positive_slots(block, counted, valid)

        def step(k, loss, count, weights, *extra):
            column, present = slot(k)
            other = ops.take(others, column)
            both = ops.logaddexp(own, other)
            hinge = ops.relu(both + take_at(d, column)) * present
            extra = add_shares(column, hinge, ops.exp(own - both), ops.exp(other - both), *extra)
            weights = add_at(weights, column, hinge * positive_weight)
            return (loss + ops.square(hinge) / 2, count + present, weights, *extra)

        zeros = ops.zeros_like(own)
        loss, count, weights, *extra = over_slots(
            step, slots, (zeros, zeros, ops.zeros_like(d), *initial), d.shape[1]
        )
        return loss, count, valid, weights, extra

    def row_function(self):
        return self._row if self.closed_form else super().row_function()

    def _row(self, block):
        if block.form is not None:
            return self._row_products(block)
        return self._row_linearized(block)

    def _row_linearized(self, block):
        """Each ``L_a`` with its own gradient: through its row's distances (the slopes) and
        through the references' terms (``block.context``, with gradient, linearized here)."""
        own, own_softmax = self._own_term(block)
        (references,) = block.context
        reference_terms = ops.stop_gradient(references)

        def add_shares(column, hinge, own_share, other_share, through_own, reference_weights):
            return (
                through_own + hinge * own_share,
                add_at(reference_weights, column, hinge * other_share),
            )

        loss, count, valid, weights, (through_own, reference_weights) = self._pair_slots(
            block,
            own,
            reference_terms,
            1.0,
            add_shares,
            (ops.zeros_like(own), ops.zeros_like(block.distances)),
        )
        loss = loss + ops.sum(
            ops.stop_gradient(reference_weights) * (references - reference_terms)[None, :], axis=1
        )
        slopes = weights - through_own[:, None] * own_softmax
        return self._scores(block, loss, count, valid, slopes)

    def _row_products(self, block):
        """In-batch and weighted (the products mode): ``J_ac = J_ca``, so row ``a`` holds
        every path into its own term, ``sum_c (w_a + w_c) h_ac exp(own_a - both_ac)``, and
        its slopes come out weighted. The own terms are pass 1's (``block.context``), so
        the softmax over ``N(a)`` is ``exp(margin - d - own_a)``: no pass for its sum."""
        own_terms, all_weights = block.context
        own = ops.take(own_terms, ops.maximum(block.rows, 0))
        shifted = ops.where(block.negative, self.margin - block.distances - own[:, None], -_INF)
        softmax = ops.exp(shifted)
        row_weights = block.weights

        def add_shares(column, hinge, own_share, other_share, through):
            both_weights = row_weights + ops.take(all_weights, column)
            return (through + both_weights * hinge * own_share,)

        loss, count, valid, weights, (through,) = self._pair_slots(
            block, own, own_terms, row_weights, add_shares, (ops.zeros_like(own),)
        )
        slopes = weights - through[:, None] * softmax
        return self._scores(block, loss, count, valid, slopes)._replace(weighted=True)

    def _scores(self, block, loss, count, valid, slopes):
        # As row_slopes promises for the other losses: no slope on an invalid anchor.
        valid_f = ops.cast(valid, slopes.dtype)
        return super()._scores(block, loss, count, valid, slopes * valid_f[:, None])

    def score_set(self, *references, weights=None, summed=False):
        if not self.closed_form:
            return super().score_set(*references, weights=weights, summed=summed)
        # The products mode needs J symmetric: anchors = references.
        in_batch = references[2] is None  # reference_features
        summed = in_batch and engine.choose_mode(self.distance, summed) is engine.Mode.PRODUCTS
        terms = self.reference_terms(
            *references, row_function=self._term_row, summed=summed, weights=weights
        )
        context: tuple
        if summed:
            context = (ops.stop_gradient(terms), ops.stop_gradient(weights))
        else:
            context = (terms,)
        return self.score_pairs(*references, weights=weights, summed=summed, context=context)
