"""PN loss: the triplet loss whose negative distance also looks from the positive."""

import keras

from triplet_tools._ops import ops
from triplet_tools.losses.triplet import TripletLoss
from triplet_tools.mining import prepare


@keras.saving.register_keras_serializable(package="triplet_tools")
class PNLoss(TripletLoss):
    """Triplet loss with the negative distance taken from whichever of ``a``, ``p*`` is nearer.

    Mining is that of :class:`TripletLoss`; then

    ```
    d_ap = d(a, p*)        d_an = min(d(a, n*), d(p*, n*))
    l_a  = max(d_ap - d_an + margin, 0)      or softplus(d_ap - d_an) with soft_margin
    loss = sum_a w_a * l_a / #valid anchors
    ```

    ``d(p*, n*)`` is computed from the two gathered embeddings, so it is also correct when
    the references are not the batch.

    It takes the arguments of :class:`TripletLoss`, with the same defaults but ``name``:
    ``"PNLoss"`` (so ``name`` and the arguments after it are given by keyword).

    Example:

    >>> import numpy as np
    >>> loss = PNLoss(distance="euclidean", negative_mining_strategy="hard", margin=1.0)
    >>> y_pred = np.array([[0.0], [2.0], [2.5], [9.0]], "float32")
    >>> # anchor 0: d_ap = 2, d(a, n*) = 2.5, d(p*, n*) = 0.5 -> max(2 - 0.5 + 1, 0) = 2.5
    >>> round(float(PNLoss(distance="euclidean", negative_mining_strategy="hard",
    ...                    reduction="none")([0, 0, 1, 1], y_pred)[0]), 4)
    2.5

    Reference:
        Balntas et al., "Learning local feature descriptors with triplets and shallow
        convolutional neural networks", BMVC 2016.
    """

    def __init__(self, *args, name="PNLoss", **kwargs):
        # name by keyword only: TripletLoss's positional arguments up to semi_margin.
        super().__init__(*args, name=name, **kwargs)  # type: ignore[misc]

    def reference_pair_distances(self, references, mask=None):
        # Non-finite rows zeroed: they are never chosen, and NaN must not reach the gradient.
        # Measured from a common origin, as the pair engine measures d(a, n).
        clean, kept = prepare.zero_non_finite(references)
        if mask is not None:
            kept = ops.logical_and(kept, ops.cast(mask, "bool"))
        _, clean = prepare.from_common_origin(self.distance, clean, kept)
        return self.distance.pairwise_features(clean, clean)

    def anchor_distances(self, anchors, positives, negatives):
        d_ap, d_an = super().anchor_distances(anchors, positives, negatives)
        return d_ap, ops.minimum(d_an, self.distance.paired_features(positives, negatives))
