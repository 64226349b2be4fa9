"""Drop-in names for tensorflow-addons' triplet and lifted-structure losses.

```python
# before: from tensorflow_addons.losses import TripletSemiHardLoss
from triplet_tools.tfa import TripletSemiHardLoss
model.compile("adam", TripletSemiHardLoss(margin=1.0))
```

Values and gradients equal tfa 0.23's on every batch whose anchors all have a positive and
a negative. Elsewhere they differ on purpose: no NaN when the batch has no positive pair
(tfa issue 2447), anchors without a positive are left out of the hard loss's mean, class ids
are never cast to float, and half precision is computed in float32.

``distance_metric``: ``"L2"`` (euclidean), ``"squared-L2"`` (squared euclidean),
``"angular"`` (cosine distance), or a ``triplet_tools.distances.Distance``.

Beside tfa's own arguments the losses take only :data:`COMMON_KEYWORDS`, which say where
and how the loss is computed, never what it is. A ``TripletLoss`` keyword that tfa never had
(``semi_margin``, ``average``, ``soft_margin``, a mining strategy) is refused with a
``ValueError``: it would define another loss under tfa's name, and ``get_config`` holds
tfa's argument names only, so a saved model would come back as tfa's loss. Write
``TripletLoss(...)`` for those variants: it saves every one of them.
"""

from __future__ import annotations

import keras

from triplet_tools import distances as distances_module
from triplet_tools.losses.base import TripletFamilyLoss
from triplet_tools.losses.lifted import LiftedStructLoss
from triplet_tools.losses.triplet import TripletLoss

#: tfa's ``distance_metric`` names and ours.
DISTANCE_METRICS = {"L2": "euclidean", "squared-L2": "squared_euclidean", "angular": "cosine"}

#: Keywords the drop-ins take beside tfa's own (``**kwargs``); anything else is refused.
COMMON_KEYWORDS = ("reduction", "dtype", "block_size", "global_mining", "memory")

#: Our built-in distance names that have a tfa name, for the config of a ``Distance``.
_TFA_NAMES = {ours: theirs for theirs, ours in DISTANCE_METRICS.items()}

__all__ = [
    "COMMON_KEYWORDS",
    "DISTANCE_METRICS",
    "LiftedStructLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
    "triplet_hard_loss",
    "triplet_semihard_loss",
]


def _distance(distance_metric):
    if isinstance(distance_metric, distances_module.Distance):
        return distance_metric
    if isinstance(distance_metric, dict):
        return distances_module.get(distance_metric)
    if isinstance(distance_metric, str) and distance_metric in DISTANCE_METRICS:
        return DISTANCE_METRICS[distance_metric]
    raise ValueError(
        f"Invalid distance_metric: received {distance_metric!r}; allowed values are "
        f"{', '.join(repr(name) for name in DISTANCE_METRICS)} or a "
        "triplet_tools.distances.Distance instance."
    )


def _metric_config(distance_metric):
    """``distance_metric`` as the constructor takes it back: a built-in ``Distance`` by its tfa
    name where it has one (``"angular"`` for ``cosine``), else by its Keras serialization
    (never our own name, which tfa's argument refuses)."""
    if not isinstance(distance_metric, distances_module.Distance):
        return distance_metric
    name = distances_module.serialize(distance_metric)
    if isinstance(name, str):
        if name in _TFA_NAMES:
            return _TFA_NAMES[name]
        return keras.saving.serialize_keras_object(distance_metric)
    return name


def _config(loss, **own):
    """A drop-in's config: the keywords every loss takes (``distance`` as tfa's
    ``distance_metric``) and tfa's own arguments; none of ``TripletLoss``'s, fixed here."""
    config = TripletFamilyLoss.get_config(loss)
    del config["distance"]
    return {**config, **own, "distance_metric": _metric_config(loss.distance_metric)}


def _check_keywords(loss_name, own, kwargs):
    unknown = sorted(set(kwargs) - set(COMMON_KEYWORDS))
    if unknown:
        raise ValueError(
            f"{loss_name} takes tensorflow-addons' arguments ({', '.join(own)}) and "
            f"{', '.join(COMMON_KEYWORDS)}; received {', '.join(unknown)}, which tfa never "
            "had: use triplet_tools.TripletLoss for that variant."
        )


@keras.saving.register_keras_serializable(package="triplet_tools")
class TripletSemiHardLoss(TripletLoss):
    """tfa's semi-hard triplet loss: every positive pair with its own semi-hard negative.

    ```
    units: every (a, p), p in P(a)
    n*(a, p) = nearest of {n in N(a) : d(a, n) > d(a, p)}, else the farthest of N(a)
    loss = sum_(a,p) max(d(a, p) - d(a, n*) + margin, 0) / #positive pairs
    ```

    The same as ``TripletLoss(distance=..., positive_mining_strategy="all",
    negative_mining_strategy="semi-hard", margin=margin)``.

    Args:
        margin: the hinge margin (default 1.0).
        distance_metric: ``"L2"`` (default), ``"squared-L2"``, ``"angular"`` or a ``Distance``.
        name: default ``"TripletSemiHardLoss"``.
        **kwargs: ``reduction``, ``dtype``, ``block_size``, ``global_mining``, ``memory``
            (:data:`COMMON_KEYWORDS`); any other keyword is a ``ValueError``.

    Example:

    >>> import numpy as np
    >>> loss = TripletSemiHardLoss(margin=1.0)
    >>> x = np.array([[0.0], [1.0], [2.5], [3.0]], "float32")
    >>> # pairs (0,1): 1 - 2.5 + 1 < 0; (1,0): 1 - 1.5 + 1 = 0.5; (2,3), (3,2): <= 0
    >>> round(float(loss([0, 0, 1, 1], x)), 4)     # 0.5 / 4 positive pairs
    0.125
    """

    def __init__(self, margin=1.0, distance_metric="L2", name="TripletSemiHardLoss", **kwargs):
        _check_keywords("TripletSemiHardLoss", ("margin", "distance_metric", "name"), kwargs)
        super().__init__(
            distance=_distance(distance_metric),
            positive_mining_strategy="all",
            negative_mining_strategy="semi-hard",
            margin=margin,
            name=name,
            **kwargs,
        )
        self.distance_metric = distance_metric

    def get_config(self):
        return _config(self, margin=self.margin)


@keras.saving.register_keras_serializable(package="triplet_tools")
class TripletHardLoss(TripletLoss):
    """tfa's batch-hard triplet loss: hardest positive and hardest negative per anchor.

    ```
    l_a  = max(max_{P(a)} d(a, p) - min_{N(a)} d(a, n) + margin, 0)     (soft: softplus(...))
    loss = sum_a l_a / #valid anchors
    ```

    The same as ``TripletLoss(distance=..., negative_mining_strategy="hard", soft_margin=soft,
    margin=margin)``; with ``soft=True`` the margin is not used (and not refused).

    Args:
        margin: the hinge margin (default 1.0).
        soft: use ``softplus`` instead of the hinge.
        distance_metric: ``"L2"`` (default), ``"squared-L2"``, ``"angular"`` or a ``Distance``.
        name: default ``"TripletHardLoss"``.
        **kwargs: ``reduction``, ``dtype``, ``block_size``, ``global_mining``, ``memory``
            (:data:`COMMON_KEYWORDS`); any other keyword is a ``ValueError``.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [1.2], [3.0]], "float32")
    >>> round(float(TripletHardLoss(margin=0.5)([0, 0, 1, 1], x)), 4)
    1.0
    """

    def __init__(
        self, margin=1.0, soft=False, distance_metric="L2", name="TripletHardLoss", **kwargs
    ):
        _check_keywords("TripletHardLoss", ("margin", "soft", "distance_metric", "name"), kwargs)
        super().__init__(
            distance=_distance(distance_metric),
            negative_mining_strategy="hard",
            soft_margin=soft,
            margin=1.0 if soft else margin,
            name=name,
            **kwargs,
        )
        self.margin = margin if soft else self.margin
        self.distance_metric = distance_metric

    def get_config(self):
        return _config(self, margin=self.margin, soft=self.soft_margin)


def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """tfa's ``triplet_semihard_loss`` function: the scalar :class:`TripletSemiHardLoss`.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [2.5], [3.0]], "float32")
    >>> round(float(triplet_semihard_loss([0, 0, 1, 1], x)), 4)
    0.125
    """
    return TripletSemiHardLoss(margin=margin, distance_metric=distance_metric)(y_true, y_pred)


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """tfa's ``triplet_hard_loss`` function: the scalar :class:`TripletHardLoss`.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [1.2], [3.0]], "float32")
    >>> round(float(triplet_hard_loss([0, 0, 1, 1], x, margin=0.5)), 4)
    1.0
    """
    return TripletHardLoss(margin=margin, soft=soft, distance_metric=distance_metric)(
        y_true, y_pred
    )
