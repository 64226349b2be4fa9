"""TF Similarity's other supervised metric losses on the pair engine, each a row function:
``MultiSimilarityLoss``, ``CircleLoss`` and ``SoftNearestNeighborLoss``.

Each states its value-only ``row`` (:mod:`triplet_tools.pair_rows`) and adds hand-derived
slopes, ``row_slopes``, as the faster path (the tests check them against the autodiff of
``row``). Invalid anchors get 0 and are left out of the average.
"""

from __future__ import annotations

import keras

from triplet_tools._ops import ops
from triplet_tools._validation import check_number
from triplet_tools.losses.pair import PairLoss
from triplet_tools.pair_rows import RowValues, has_pairs, masked_exponentials, masked_logsumexp

_INF = float("inf")


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

    def row(self, block):
        d = block.distances
        nearest_negative = ops.min(ops.where(block.negative, d, _INF), axis=1)
        farthest_positive = ops.max(ops.where(block.positive, d, -_INF), axis=1)
        hard_positive = block.positive & (d > (nearest_negative - self.epsilon)[:, None])
        hard_negative = block.negative & (d < (farthest_positive + self.epsilon)[:, None])
        similarity = d + (self.lmda - self.center)
        positive = masked_logsumexp(self.alpha * similarity, hard_positive)
        negative = masked_logsumexp(-self.beta * similarity, hard_negative)
        valid = ops.isfinite(positive) & ops.isfinite(negative)
        loss = ops.softplus(ops.where(valid, positive, 0)) / self.alpha
        return RowValues(
            loss + ops.softplus(ops.where(valid, negative, 0)) / self.beta, None, valid
        )

    def row_slopes(self, block):
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

    def row(self, block):
        d, m = block.distances, self.margin
        alpha_p = ops.stop_gradient(ops.relu(d + m))
        alpha_n = ops.stop_gradient(ops.relu(1 + m - d))
        positive = masked_logsumexp(self.gamma * alpha_p * (d - m), block.positive)
        negative = masked_logsumexp(-self.gamma * alpha_n * (d - (1 - m)), block.negative)
        valid = has_pairs(block)
        return RowValues(ops.softplus(ops.where(valid, positive + negative, 0)), None, valid)

    def row_slopes(self, block):
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
        valid = has_pairs(block)
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

    def row(self, block):
        logits = block.distances / -self.temperature
        positive = masked_logsumexp(logits, block.positive)
        negative = masked_logsumexp(logits, block.negative)
        valid = has_pairs(block)
        return RowValues(ops.softplus(ops.where(valid, negative - positive, 0)), None, valid)

    def row_slopes(self, block):
        d = block.distances
        (positive, negative), e, (positive_inverse, negative_inverse) = masked_exponentials(
            d / -self.temperature, [block.positive, block.negative]
        )
        valid = has_pairs(block)
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
