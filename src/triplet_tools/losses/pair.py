"""Pair-based losses: each a function of an anchor's whole row of pair distances.

``MultiSimilarityLoss``, ``CircleLoss`` and ``SoftNearestNeighborLoss`` (TF Similarity's other
supervised metric losses) and ``LiftedStructLoss`` (tensorflow-addons', also in
``triplet_tools.tfa``). One base, :class:`PairLoss`, runs the pair engine
(``triplet_tools.mining.pairs``) over blocks of anchors; each loss overrides one hook,
``row_loss(block) -> (l_a, c_a, valid)``, which computes ``l_a`` and ``dl_a / dd(a, j)``
in closed form (``pairs.linearized``); lifted structure scores its positives one slot at
a time (``pairs.positive_slots``) instead of every pair. The references are those of every
loss here (the batch, a cross-batch memory, the global batch); invalid anchors get 0 and
are left out of the average.
"""

from __future__ import annotations

import keras

from triplet_tools._ops import ops
from triplet_tools._validation import check_number
from triplet_tools.losses.base import AnchorTriplets, TripletFamilyLoss
from triplet_tools.mining import pairs
from triplet_tools.mining.pairs import masked_exponentials

_FAR_BELOW = -1e30
_INF = float("inf")


class PairLoss(TripletFamilyLoss):
    """Base of the pair-based losses: the pair engine, the common arguments and the config.

    Args:
        distance: a distance name or ``Distance``.
        name: the loss name.
        reduction: as for ``TripletLoss`` (default: mean over valid anchors).
        **kwargs: ``dtype``, ``block_size``, ``global_mining``, ``memory`` as for
            ``TripletLoss``.
    """

    #: The loss's own arguments, in config order.
    parameters: tuple[str, ...] = ()

    def __init__(self, distance, name, reduction="sum_over_batch_size", **kwargs):
        super().__init__(distance=distance, name=name, reduction=reduction, **kwargs)

    def row_loss(self, block):
        """``(l_a, c_a, valid, W)`` for a :class:`~triplet_tools.mining.pairs.PairBlock`,
        without gradient: ``W_aj = dl_a / dd(a, j)`` ``(n, M)``, 0 on invalid anchors."""
        raise NotImplementedError

    def _row(self, block):
        return self._scores(block, *self.row_loss(block))

    def _scores(self, block, loss, count, valid, slopes):
        """The block's ``RowScores``: loss and count zeroed on invalid anchors, the active
        anchors those with a positive loss."""
        valid_f = ops.cast(valid, block.distances.dtype)
        loss = loss * valid_f
        active = ops.cast(loss > 0, loss.dtype) * valid_f
        return pairs.row_scores(
            block, loss, count * valid_f, valid, active, block.positive, slopes=slopes
        )

    def score_set(
        self,
        features,
        labels,
        reference_features,
        reference_labels,
        anchor_positions,
        reference_mask,
        weights=None,
    ):
        return self.score_pairs(
            features,
            labels,
            reference_features,
            reference_labels,
            anchor_positions,
            reference_mask,
            weights=weights,
        )

    def score_pairs(self, *references, weights=None, context=(), row_function=None):
        """The engine over ``score_set``'s arguments, with ``context`` for the row loss."""
        scores = pairs.score_pairs(
            *references,
            distance=self.distance,
            row_function=row_function or self._row,
            rows=self.block_size,
            context=context,
            weights=weights,
            statistics=self.wants_statistics(weights),
        )
        return AnchorTriplets.from_pairs(scores)

    def get_config(self):
        config = super().get_config()
        return {**config, **{name: getattr(self, name) for name in self.parameters}}


def _valid(block):
    return ops.logical_and(ops.any(block.positive, axis=1), ops.any(block.negative, axis=1))


@keras.saving.register_keras_serializable(package="triplet_tools")
class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss (Wang et al. 2019), in TF Similarity's distance form.

    ```
    s_aj  = d(a, j) + lmda - center
    P'(a) = {j in P(a) : d(a, j) > min_{N(a)} d(a, .) - epsilon}
    N'(a) = {j in N(a) : d(a, j) < max_{P(a)} d(a, .) + epsilon}      valid iff both non-empty
    l_a   = (1/alpha) log(1 + sum_{P'(a)} exp(alpha s_aj))
          + (1/beta)  log(1 + sum_{N'(a)} exp(-beta s_aj))
    ```

    The pair selection (``P'``, ``N'``) is mining and is not differentiated. Per-anchor values
    equal TF Similarity 0.17.1's ``multisimilarity_loss`` on valid anchors.

    Args:
        distance: default ``"cosine"``.
        alpha: weight of the positive term, ``> 0`` (default 2).
        beta: weight of the negative term, ``> 0`` (default 40).
        epsilon: the mining slack, ``>= 0`` (default 0.1).
        lmda: the similarity offset ``lambda`` (default 0.5).
        center: the distance of "similarity 0" (default 1, for cosine).
        name, reduction, **kwargs: as for :class:`PairLoss`.

    Example:

    >>> import numpy as np
    >>> loss = MultiSimilarityLoss(distance="euclidean", reduction="none")
    >>> x = np.array([[0.0], [0.95], [1.0]], "float32")
    >>> # anchor 0: P' = {0.95} (> 1.0 - 0.1), N' = {1.0} (< 0.95 + 0.1):
    >>> # log(1 + e^(2 * 0.45)) / 2 + log(1 + e^(-40 * 0.5)) / 40 = 0.6206
    >>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
    0.6206

    Reference:
        Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
        Learning", CVPR 2019.
    """

    parameters = ("alpha", "beta", "epsilon", "lmda", "center")

    def __init__(
        self,
        distance="cosine",
        alpha=2.0,
        beta=40.0,
        epsilon=0.1,
        lmda=0.5,
        center=1.0,
        name="MultiSimilarityLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        self.alpha = check_number(alpha, "alpha", positive=True)
        self.beta = check_number(beta, "beta", positive=True)
        self.epsilon = check_number(epsilon, "epsilon", minimum=0)
        self.lmda = check_number(lmda, "lmda")
        self.center = check_number(center, "center")
        super().__init__(distance, name, reduction, **kwargs)

    def row_loss(self, block):
        d = block.distances
        nearest_negative = ops.min(ops.where(block.negative, d, float("inf")), axis=1)
        farthest_positive = ops.max(ops.where(block.positive, d, -float("inf")), axis=1)
        hard_positive = ops.logical_and(
            block.positive, d > (nearest_negative - self.epsilon)[:, None]
        )
        hard_negative = ops.logical_and(
            block.negative, d < (farthest_positive + self.epsilon)[:, None]
        )
        similarity = d + (self.lmda - self.center)
        values = ops.where(hard_positive, self.alpha * similarity, -self.beta * similarity)
        # Each term's largest value is at the farthest positive / nearest negative, which
        # belong to P' / N' whenever these are non-empty: no pass for the peaks.
        peaks = (
            self.alpha * (farthest_positive + (self.lmda - self.center)),
            -self.beta * (nearest_negative + (self.lmda - self.center)),
        )
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            values, [hard_positive, hard_negative], peaks
        )
        valid = ops.logical_and(positive > -float("inf"), negative > -float("inf"))
        valid_f = ops.cast(valid, d.dtype)
        loss = ops.softplus(positive) / self.alpha + ops.softplus(negative) / self.beta
        # d softplus(lse) / d v_j = sigmoid(lse) softmax_j, and d v_j / d d = alpha (-beta).
        slopes = e * ops.where(
            hard_positive,
            (ops.sigmoid(positive) * positive_inverse * valid_f)[:, None],
            (-ops.sigmoid(negative) * negative_inverse * valid_f)[:, None],
        )
        return ops.where(valid, loss, 0), ops.ones_like(loss), valid, slopes


@keras.saving.register_keras_serializable(package="triplet_tools")
class CircleLoss(PairLoss):
    """Circle loss (Sun et al. 2020), in distance form.

    ```
    alpha_p = max(d + margin, 0)      alpha_n = max(1 + margin - d, 0)   (no gradient)
    l_a = softplus(logsumexp_{P(a)} gamma alpha_p (d - margin)
                   + logsumexp_{N(a)} gamma alpha_n (1 - margin - d))
    ```

    Values equal ``keras.losses.Circle`` on L2-normalised embeddings (cosine); gradients
    treat ``alpha`` as constants, as the paper's code and pytorch-metric-learning do (Keras
    differentiates through them).

    Args:
        distance: default ``"cosine"``.
        gamma: the scale, ``> 0`` (default 80).
        margin: the relaxation ``m``, ``>= 0`` (default 0.4).
        name, reduction, **kwargs: as for :class:`PairLoss`.

    Example:

    >>> import numpy as np
    >>> loss = CircleLoss(gamma=1.0, margin=0.0, reduction="none")
    >>> x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    >>> # anchor 0: d_p = 0 -> 0; d_n = 1 -> 1 * (1 - 1) = 0; softplus(0 + 0) = log 2
    >>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
    0.6931

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
        CVPR 2020.
    """

    parameters = ("gamma", "margin")

    def __init__(
        self,
        distance="cosine",
        gamma=80.0,
        margin=0.4,
        name="CircleLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        self.gamma = check_number(gamma, "gamma", positive=True)
        self.margin = check_number(margin, "margin", minimum=0)
        super().__init__(distance, name, reduction, **kwargs)

    def row_loss(self, block):
        d = block.distances
        # The slopes of v in d: gamma alpha_p on P(a), -gamma alpha_n on N(a).
        slope = ops.where(
            block.positive,
            self.gamma * ops.relu(d + self.margin),
            -self.gamma * ops.relu(1 + self.margin - d),
        )
        optimum = ops.cast(ops.where(block.positive, self.margin, 1 - self.margin), d.dtype)
        values = slope * (d - optimum)
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            values, [block.positive, block.negative]
        )
        valid = _valid(block)
        # Both terms are finite on valid anchors; elsewhere -inf + x must not become NaN.
        total = ops.where(valid, positive + negative, 0)
        share = ops.where(valid, ops.sigmoid(total), 0)
        scale = ops.where(
            block.positive,
            (positive_inverse * share)[:, None],
            (negative_inverse * share)[:, None],
        )
        return ops.softplus(total), ops.ones_like(total), valid, e * slope * scale


@keras.saving.register_keras_serializable(package="triplet_tools")
class SoftNearestNeighborLoss(PairLoss):
    """Soft nearest neighbour loss (Frosst et al. 2019).

    ```
    l_a = -log( sum_{j in P(a)} exp(-d(a, j) / T) / sum_{j != a} exp(-d(a, j) / T) )
        = logsumexp_{j != a}(-d/T) - logsumexp_{P(a)}(-d/T)      valid iff P(a), N(a) non-empty
    ```

    A difference of stabilised log-sum-exps, finite for any ``T > 0`` (TF Similarity adds
    ``1e-9`` inside the log, which caps its value near 20.7).

    Args:
        distance: default ``"squared_euclidean"``.
        temperature: ``T > 0`` (default 1).
        name, reduction, **kwargs: as for :class:`PairLoss`.

    Example:

    >>> import numpy as np
    >>> loss = SoftNearestNeighborLoss(distance="euclidean", reduction="none")
    >>> x = np.array([[0.0], [1.0], [1.0]], "float32")
    >>> # anchor 0: -log(e^-1 / (e^-1 + e^-1)) = log 2
    >>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
    0.6931

    Reference:
        Frosst et al., "Analyzing and Improving Representations with the Soft Nearest
        Neighbor Loss", ICML 2019.
    """

    parameters = ("temperature",)

    def __init__(
        self,
        distance="squared_euclidean",
        temperature=1.0,
        name="SoftNearestNeighborLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        self.temperature = check_number(temperature, "temperature", positive=True)
        super().__init__(distance, name, reduction, **kwargs)

    def row_loss(self, block):
        d = block.distances
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            d / -self.temperature, [block.positive, block.negative]
        )
        valid = _valid(block)
        # logsumexp_{P u N} - logsumexp_P = softplus(lse_N - lse_P); d v / d d = -1 / T.
        gap = ops.where(valid, negative - positive, 0)
        share = ops.where(valid, ops.sigmoid(gap), 0) / self.temperature
        slopes = e * ops.where(
            block.positive,
            (share * positive_inverse)[:, None],
            (-share * negative_inverse)[:, None],
        )
        loss = ops.where(valid, ops.softplus(gap), 0)
        return loss, ops.ones_like(loss), valid, slopes


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
        return pairs.RowScores(term, zeros, zeros > 0, zeros, zeros, zeros, slopes)

    def _pair_slots(self, block, own, others, positive_weight, add_shares, initial):
        """The slot loop over each valid anchor's positives ``c``: ``J_ac`` at one positive
        per anchor (a gather, not a pass over the row).

        ``add_shares(column, hinge, own_share, other_share, *extra) -> extra`` adds what the
        mode needs, with ``own_share = dJ / d own_a`` and ``other_share = dJ / d others_c``.
        Returns ``(loss, count, valid, slopes at the positives (n, M), extra)``."""
        d = block.distances
        valid = _valid(block)
        counted = ops.logical_and(block.positive, valid[:, None])
        slots, slot = pairs.positive_slots(block, counted, valid)

        def step(k, loss, count, weights, *extra):
            column, present = slot(k)
            other = ops.take(others, column)
            both = ops.logaddexp(own, other)
            hinge = ops.relu(both + pairs.take_at(d, column)) * present
            extra = add_shares(column, hinge, ops.exp(own - both), ops.exp(other - both), *extra)
            weights = pairs.add_at(weights, column, hinge * positive_weight)
            return (loss + ops.square(hinge) / 2, count + present, weights, *extra)

        zeros = ops.zeros_like(own)
        loss, count, weights, *extra = pairs.over_slots(
            step, slots, (zeros, zeros, ops.zeros_like(d), *initial), d.shape[1]
        )
        return loss, count, valid, weights, extra

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
                pairs.add_at(reference_weights, column, hinge * other_share),
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
        # As row_loss promises for the other losses: no slope on an invalid anchor.
        valid_f = ops.cast(valid, slopes.dtype)
        return super()._scores(block, loss, count, valid, slopes * valid_f[:, None])

    def score_set(
        self,
        features,
        labels,
        reference_features,
        reference_labels,
        anchor_positions,
        reference_mask,
        weights=None,
    ):
        in_batch = reference_features is None
        if not (in_batch and pairs.takes_products(self.distance, weights)):
            weights = None  # the products mode needs J symmetric: anchors = references
        references = features if in_batch else reference_features
        if in_batch:
            reference_labels, positions = labels, anchor_positions
        else:
            positions = ops.arange(ops.shape(reference_labels)[0], dtype="int32")
        # Pass 1: every reference's log-sum-exp over its own negatives. A reference that is
        # not finite is never a positive: zeroed here so that its NaN cannot reach other
        # rows' gradients.
        references, _ = pairs.zero_non_finite(references)
        terms = pairs.score_pairs(
            references,
            reference_labels,
            None if in_batch else references,
            None if in_batch else reference_labels,
            positions,
            reference_mask,
            distance=self.distance,
            row_function=self._term_row,
            rows=self.block_size,
            weights=weights,
            statistics=False,
        ).loss
        context: tuple
        if weights is not None:
            context = (ops.stop_gradient(terms), ops.stop_gradient(weights))
        else:
            context = (terms,)
        return self.score_pairs(
            features,
            labels,
            reference_features,
            reference_labels,
            anchor_positions,
            reference_mask,
            weights=weights,
            context=context,
        )
