"""Priming loss (triplet-tools 0.2.3): pull the hardest positive in, push the hardest negative
away."""

import keras

from triplet_tools._ops import ops
from triplet_tools.losses.base import TripletFamilyLoss
from triplet_tools.mining import mining_rules


@keras.saving.register_keras_serializable(package="triplet_tools")
class PrimingLoss(TripletFamilyLoss):
    """Hardest positive and hardest negative, scored without a margin.

    ```
    p* = argmax_{P(a)} d(a, j)      n* = argmin_{N(a)} d(a, j)
    l_a  = d(a, p*)^2 + exp(-10 * d(a, n*))
    loss = sum_a w_a * l_a / #valid anchors
    ```

    Useful to start ("prime") training before switching to a margin loss: recompiling the
    model with another loss keeps training the same weights.

    Args:
        distance: a distance name (default ``"euclidean_norm"``) or ``Distance``.
        name: the loss name, ``"PrimingLoss"``.
        reduction: as for :class:`TripletLoss`.
        **kwargs: ``dtype``, ``block_size``, ``global_mining``, ``memory``, as for
            :class:`TripletLoss`.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> loss = PrimingLoss(distance="euclidean", reduction="none")
    >>> y_pred = np.array([[0.0], [0.5], [10.0], [10.5]], "float32")
    >>> # every anchor: d_ap = 0.5, d_an >= 9.5 -> 0.25 + exp(-95)
    >>> np.round(ops.convert_to_numpy(loss([0, 0, 1, 1], y_pred)), 4).tolist()
    [0.25, 0.25, 0.25, 0.25]
    """

    def __init__(
        self,
        distance="euclidean_norm",
        name="PrimingLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        super().__init__(distance=distance, name=name, reduction=reduction, **kwargs)
        # The hardest pair, always: fixed, so neither an argument nor in the config.
        self.rules = mining_rules(self.distance, "hard", "hard")

    def anchor_loss(self, positive_distance, negative_distance):
        return ops.square(positive_distance) + ops.exp(-10 * negative_distance)


def triplet_batch_priming_loss(metric="euclidean_norm"):
    """Priming loss (triplet-tools 0.2.3 API): ``d(a, p*)^2 + exp(-10 d(a, n*))``, hardest pair.

    Equal to ``PrimingLoss(distance=metric)``.

    Args:
        metric: a distance name (default ``"euclidean_norm"``) or ``Distance``.

    Returns:
        A :class:`PrimingLoss`.

    Example:

    >>> import numpy as np
    >>> loss = triplet_batch_priming_loss(metric="euclidean")
    >>> y_pred = np.array([[0.0], [0.5], [10.0], [10.5]], "float32")
    >>> round(float(loss([0, 0, 1, 1], y_pred)), 4)
    0.25
    """
    return PrimingLoss(distance=metric)
