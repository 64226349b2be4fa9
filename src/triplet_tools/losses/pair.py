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
from triplet_tools.mining.pairs import linearized, masked_exponentials, nan_if_not_finite

_FAR_BELOW = -1e30


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
        super().__init__(
            distance=distance,
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            semi_margin=0.0,
            name=name,
            reduction=reduction,
            **kwargs,
        )

    def row_loss(self, block):
        """``(l_a, c_a, valid)`` for a :class:`~triplet_tools.mining.pairs.PairBlock`."""
        raise NotImplementedError

    def _row(self, block):
        loss, count, valid = self.row_loss(block)
        valid_f = ops.cast(valid, block.distances.dtype)
        # A product, not a select: NaN in the anchor's own embedding reaches its loss.
        loss = loss * valid_f + nan_if_not_finite(block.anchors)
        fixed = ops.stop_gradient(block.distances)
        return (
            loss,
            count * valid_f,
            valid,
            ops.cast(loss > 0, loss.dtype) * valid_f,
            pairs.masked_mean(fixed, block.positive),
            pairs.masked_mean(fixed, block.negative),
        )

    def score_set(
        self,
        features,
        labels,
        reference_features,
        reference_labels,
        anchor_positions,
        reference_mask,
    ):
        return self.score_pairs(
            features, labels, reference_features, reference_labels, anchor_positions, reference_mask
        )

    def score_pairs(self, *references, context=()):
        """The engine over ``score_set``'s arguments, with ``context`` for the row loss."""
        loss, count, valid, active, d_ap, d_an = pairs.score_pairs(
            *references,
            distance=self.distance,
            row_function=self._row,
            rows=self.block_size,
            context=context,
        )
        return AnchorTriplets(loss, valid, d_ap, d_an, count, active)

    def get_config(self):
        config = super().get_config()
        for fixed in ("positive_mining_strategy", "negative_mining_strategy", "semi_margin"):
            config.pop(fixed)
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
        fixed = ops.stop_gradient(d)
        nearest_negative = ops.min(ops.where(block.negative, fixed, float("inf")), axis=1)
        farthest_positive = ops.max(ops.where(block.positive, fixed, -float("inf")), axis=1)
        hard_positive = ops.logical_and(
            block.positive, fixed > (nearest_negative - self.epsilon)[:, None]
        )
        hard_negative = ops.logical_and(
            block.negative, fixed < (farthest_positive + self.epsilon)[:, None]
        )
        similarity = fixed + self.lmda - self.center
        values = ops.where(hard_positive, self.alpha * similarity, -self.beta * similarity)
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            values, [hard_positive, hard_negative]
        )
        valid = ops.logical_and(positive > -float("inf"), negative > -float("inf"))
        loss = ops.softplus(positive) / self.alpha + ops.softplus(negative) / self.beta
        # d softplus(lse) / d v_j = sigmoid(lse) softmax_j, and d v_j / d d = alpha (-beta).
        weights = e * ops.where(
            hard_positive,
            (ops.sigmoid(positive) * positive_inverse)[:, None],
            (-ops.sigmoid(negative) * negative_inverse)[:, None],
        )
        return linearized(loss, weights, d), ops.ones_like(loss), valid


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
        fixed = ops.stop_gradient(d)
        # The slopes of v in d: gamma alpha_p on P(a), -gamma alpha_n on N(a).
        slope = ops.where(
            block.positive,
            self.gamma * ops.relu(fixed + self.margin),
            -self.gamma * ops.relu(1 + self.margin - fixed),
        )
        values = slope * (fixed - ops.where(block.positive, self.margin, 1 - self.margin))
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            values, [block.positive, block.negative]
        )
        valid = _valid(block)
        # Both terms are finite on valid anchors; elsewhere -inf + x must not become NaN.
        total = ops.where(valid, positive + negative, 0)
        scale = ops.where(block.positive, positive_inverse[:, None], negative_inverse[:, None])
        weights = e * slope * scale * ops.where(valid, ops.sigmoid(total), 0)[:, None]
        return linearized(ops.softplus(total), weights, d), ops.ones_like(total), valid


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
            ops.stop_gradient(d) / -self.temperature, [block.positive, block.negative]
        )
        valid = _valid(block)
        # logsumexp_{P u N} - logsumexp_P = softplus(lse_N - lse_P); d v / d d = -1 / T.
        gap = ops.where(valid, negative - positive, 0)
        share = ops.where(valid, ops.sigmoid(gap), 0)[:, None] / self.temperature
        weights = e * ops.where(
            block.positive, share * positive_inverse[:, None], -share * negative_inverse[:, None]
        )
        loss = ops.where(valid, ops.softplus(gap), 0)
        return linearized(loss, weights, d), ops.ones_like(loss), valid


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
        """``(log sum_{N(a)} exp(margin - d), d term / d d)``: -inf kept finite
        (far below any real term) so that logaddexp and its gradient stay finite; an anchor
        without negatives is invalid anyway."""
        (term,), e, (inverse,) = masked_exponentials(
            self.margin - ops.stop_gradient(block.distances), [block.negative]
        )
        term = ops.where(ops.isfinite(term), term, _FAR_BELOW)
        return term, -e * inverse[:, None]

    def _negative_term(self, block):
        term, weights = self._own_term(block)
        return (linearized(term, weights, block.distances),)

    def row_loss(self, block):
        d = block.distances
        fixed = ops.stop_gradient(d)
        own, own_weights = self._own_term(block)
        (references,) = block.context
        reference_terms = ops.stop_gradient(references)
        valid = _valid(block)
        slots, slot = pairs.positive_slots(block, block.positive, valid)

        def step(k, loss, count, through_own, weights, reference_weights):
            # J at one positive per anchor: a gather, not a pass over the row.
            column, present = slot(k)
            term = ops.take(reference_terms, column)
            both = ops.logaddexp(own, term)
            hinge = ops.relu(both + pairs.take_at(fixed, column)) * present
            # d J / d own = exp(own - both), d J / d reference term = exp(term - both).
            through_own = through_own + hinge * ops.exp(own - both)
            weights = pairs.add_at(weights, column, hinge)
            reference_weights = pairs.add_at(
                reference_weights, column, hinge * ops.exp(term - both)
            )
            return (
                loss + ops.square(hinge) / 2,
                count + present,
                through_own,
                weights,
                reference_weights,
            )

        zeros = ops.zeros_like(own)
        loss, count, through_own, weights, reference_weights = pairs.over_slots(
            step,
            slots,
            (zeros, zeros, zeros, ops.zeros_like(fixed), ops.zeros_like(fixed)),
            fixed.shape[1],
        )
        weights = weights + through_own[:, None] * own_weights
        loss = linearized(loss, weights, d) + ops.sum(
            ops.stop_gradient(reference_weights) * (references - reference_terms)[None, :], axis=1
        )
        return loss, count, valid

    def score_set(
        self,
        features,
        labels,
        reference_features,
        reference_labels,
        anchor_positions,
        reference_mask,
    ):
        in_batch = reference_features is None
        references = features if in_batch else reference_features
        if in_batch:
            reference_labels, positions = labels, anchor_positions
        else:
            positions = ops.arange(ops.shape(reference_labels)[0], dtype="int32")
        # Pass 1: every reference's log-sum-exp over its own negatives, with gradient. A
        # reference that is not finite is never a positive: zeroed here so that its NaN
        # cannot reach other rows' gradients.
        references, _ = pairs.zero_non_finite(references)
        (reference_terms,) = pairs.score_pairs(
            references,
            reference_labels,
            None if in_batch else references,
            None if in_batch else reference_labels,
            positions,
            reference_mask,
            distance=self.distance,
            row_function=self._negative_term,
            rows=self.block_size,
        )
        return self.score_pairs(
            features,
            labels,
            reference_features,
            reference_labels,
            anchor_positions,
            reference_mask,
            context=(reference_terms,),
        )
