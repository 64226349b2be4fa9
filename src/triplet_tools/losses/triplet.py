"""Triplet loss with online mining, and the triplet-tools 0.2.3 entry points."""

import functools

import keras

from triplet_tools._ops import ops
from triplet_tools._validation import check_bool, check_choice, check_number
from triplet_tools.losses.base import TripletFamilyLoss
from triplet_tools.mining import engine, mining_rules, triplet_rows

#: Accepted values of ``average``: what the default reduction divides by.
AVERAGES = ("valid", "active")

SOFT_MARGIN_ERROR = "Margin value is not used when soft_margin is set to True."


@keras.saving.register_keras_serializable(package="triplet_tools")
class TripletLoss(TripletFamilyLoss):
    """Triplet loss over mined triplets (one positive and one negative per anchor).

    For every anchor ``a`` of the batch, mining (see ``triplet_tools.mining``) picks a
    positive ``p*`` and a negative ``n*``; then

    ```
    d_ap = d(a, p*)        d_an = d(a, n*)
    l_a  = max(d_ap - d_an + margin, 0)        (soft_margin=False)
    l_a  = softplus(d_ap - d_an)               (soft_margin=True)
    loss = sum_a w_a * l_a / #valid anchors    (default reduction)
    ```

    An anchor is valid when the batch holds another sample of its class and a sample of
    another class; invalid anchors get ``l_a = 0`` and are left out of the average. A batch
    without valid anchors gives exactly 0 and zero gradients.

    Args:
        distance: ``"cosine"`` (default), ``"euclidean_norm"``, ``"euclidean"`` / ``"l2"``,
            ``"squared_euclidean"`` / ``"sql2"``, ``"manhattan"`` / ``"l1"``, or a
            ``triplet_tools.distances.Distance``.
        positive_mining_strategy: ``"hard"`` (farthest positive, default), ``"easy"``
            (nearest positive) or ``"all"`` (every positive pair is a unit, with its own
            negative; semi-hard then uses that pair's ``d(a, p)``).
        negative_mining_strategy: ``"semi-hard"`` (default: the nearest negative farther
            than ``d_ap + semi_margin``, falling back to the farthest negative), ``"hard"``
            (nearest negative), ``"easy"`` (farthest negative) or ``"all"`` (every negative
            makes a unit with each chosen positive: with positive ``"all"``, every triplet).
        soft_margin: use ``softplus`` instead of the hinge; then ``margin`` must stay 1.0.
        margin: the hinge margin, ``>= 0``.
        semi_margin: the semi-hard offset added to ``d_ap``.
        name: the loss name, ``"TripletLoss"``.
        reduction: ``"sum_over_batch_size"`` (default; ``sum_a w_a L_a / sum_a c_a``),
            ``"mean"`` (the same), ``"sum"``, ``"mean_with_sample_weight"`` (divides by
            ``sum_a w_a c_a``), ``"none"`` / ``None`` (per-anchor ``w_a * L_a``). ``L_a`` is
            the sum of the anchor's unit losses and ``c_a`` its number of counted units.
        average: what ``c_a`` counts: ``"valid"`` (default; every unit of a valid anchor)
            or ``"active"`` (units with ``l_u > 0``; with ``soft_margin`` every valid unit).
        **kwargs: ``dtype`` (of the returned value; computation is in at least float32),
            ``block_size`` (anchors mined at once; ``None`` chooses), ``global_mining``
            (default ``True``: mine against the global batch when training data-parallel;
            see ``triplet_tools.distributed``) and ``memory`` (a
            ``triplet_tools.memory.CrossBatchMemory`` layer whose stored embeddings join the
            references).

    Call arguments:
        y_true: ``(B,)`` or ``(B, 1)`` integer class ids (never cast to float).
        y_pred: ``(B, D)`` embeddings, float16, bfloat16, float32 or float64.
        sample_weight: optional ``(B,)`` weight per anchor.

    Example:

    >>> import numpy as np
    >>> loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard", margin=1.0)
    >>> y_true = np.array([0, 0, 1, 1])
    >>> y_pred = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]], "float32")
    >>> round(float(loss(y_true, y_pred)), 4)   # each d_ap = 1, d_an = 2: max(1 - 2 + 1, 0)
    0.0

    In a model: ``model.compile("adam", TripletLoss(margin=0.5))``.

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering",
        CVPR 2015; Hermans et al., "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """

    def __init__(
        self,
        distance="cosine",
        positive_mining_strategy="hard",
        negative_mining_strategy="semi-hard",
        soft_margin=False,
        margin=1.0,
        semi_margin=0.0,
        name="TripletLoss",
        reduction="sum_over_batch_size",
        average="valid",
        **kwargs,
    ):
        soft_margin = check_bool(soft_margin, "soft_margin")
        average = check_choice(average, AVERAGES, "average")
        margin = check_number(margin, "margin")
        if soft_margin and margin != 1.0:
            raise ValueError(SOFT_MARGIN_ERROR)
        margin = check_number(margin, "margin", minimum=0)
        super().__init__(distance=distance, name=name, reduction=reduction, **kwargs)
        self.rules = mining_rules(
            self.distance, positive_mining_strategy, negative_mining_strategy, semi_margin
        )
        self.soft_margin = soft_margin
        self.margin = margin
        self.average = average

    @property
    def positive_mining_strategy(self):
        """``"hard"``, ``"easy"`` or ``"all"``."""
        return self.rules.positive

    @property
    def negative_mining_strategy(self):
        """``"hard"``, ``"semi-hard"``, ``"easy"`` or ``"all"``."""
        return self.rules.negative

    @property
    def semi_margin(self):
        """The semi-hard offset."""
        return self.rules.semi_margin

    def anchor_loss(self, positive_distance, negative_distance):
        gap = positive_distance - negative_distance
        if self.soft_margin:
            return ops.softplus(gap)
        return ops.relu(gap + self.margin)

    def reference_pair_distances(self, references, mask=None):
        """``(M, M)`` distances among the references for ``PNLoss``'s ``d(p, n)`` (non-finite
        rows zeroed; ``mask`` ``(M,)``: the rows that may be chosen); ``None`` here, so
        ``TripletLoss`` builds no such matrix."""
        return None

    def score_set(self, *references, weights=None, summed=False):
        features, labels, reference_features, reference_labels, positions, mask = references
        if self.rules.per_anchor:
            triplets = super().score_set(*references)
            if self.average == "active" and not self.soft_margin:
                triplets = triplets._replace(count=triplets.active)
            return triplets
        pool = features if reference_features is None else reference_features
        pair_distances = self.reference_pair_distances(pool, mask)
        rules = self.rules
        # TripletLoss takes one positive slot at a time; PNLoss also needs d(p, n) for every
        # unit: the n x M x M candidates.
        row_function = (
            triplet_rows.triplet_slots if pair_distances is None else triplet_rows.triplet_units
        )
        cubic = pair_distances is not None
        return engine.score_pairs(
            *references,
            distance=self.distance,
            row_function=functools.partial(
                row_function,
                positive=rules.positive,
                negative=rules.negative,
                semi_margin=rules.semi_margin,
                margin=self.margin,
                soft=self.soft_margin,
                average=self.average,
            ),
            mode=engine.choose_mode(self.distance, summed, cubic),
            weights=weights,
            rows=self.block_size,
            cubic=cubic,
            context=(pair_distances,) if cubic else (),
            statistics=self.wants_statistics(summed),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "positive_mining_strategy": self.positive_mining_strategy,
            "negative_mining_strategy": self.negative_mining_strategy,
            "semi_margin": self.semi_margin,
            "soft_margin": self.soft_margin,
            "margin": self.margin,
            "average": self.average,
        }


def triplet_batch_all_loss(margin=1.0, metric="euclidean_norm"):
    """Batch-all triplet loss, "batch all != 0" (Hermans et al. 2017): every triplet, averaged
    over the active ones.

    ```
    units: every (a, p, n) with p in P(a), n in N(a)
    loss = sum_u max(d(a, p) - d(a, n) + margin, 0) / #{u : l_u > 0}
    ```

    Equal to ``TripletLoss(distance=metric, positive_mining_strategy="all",
    negative_mining_strategy="all", margin=margin, average="active")``, the convention of
    sentence-transformers' ``BatchAllTripletLoss`` and pytorch-metric-learning's
    ``AvgNonZeroReducer``.

    Args:
        margin: the hinge margin, ``>= 0``.
        metric: a distance name (default ``"euclidean_norm"``) or ``Distance``.

    Returns:
        A :class:`TripletLoss`.

    Example:

    >>> import numpy as np
    >>> loss = triplet_batch_all_loss(margin=1.0, metric="euclidean")
    >>> y_pred = np.array([[0.0], [1.0], [2.5]], "float32")
    >>> # triplets (0,1,2): 1 - 2.5 + 1 = -0.5 -> 0; (1,0,2): 1 - 1.5 + 1 = 0.5 (active)
    >>> round(float(loss([0, 0, 1], y_pred)), 4)
    0.5
    """
    return TripletLoss(
        distance=metric,
        positive_mining_strategy="all",
        negative_mining_strategy="all",
        margin=margin,
        average="active",
    )


def triplet_batch_hard_loss(margin=1.0, metric="euclidean_norm"):
    """Batch-hard triplet loss (triplet-tools 0.2.3 API): hardest positive, hardest negative.

    ```
    l_a = max(max_{p in P(a)} d(a, p) - min_{n in N(a)} d(a, n) + margin, 0)
    ```

    Equal to ``TripletLoss(distance=metric, negative_mining_strategy="hard", margin=margin)``;
    averaged over valid anchors.

    Args:
        margin: the hinge margin, ``>= 0``.
        metric: a distance name (default ``"euclidean_norm"``) or ``Distance``.

    Returns:
        A :class:`TripletLoss`, usable as ``model.compile("adam", loss)``.

    Example:

    >>> import numpy as np
    >>> loss = triplet_batch_hard_loss(margin=0.5, metric="euclidean")
    >>> y_pred = np.array([[0.0], [1.0], [1.2], [3.0]], "float32")
    >>> # anchor 0: d_ap = 1 (to 1.0), d_an = 1.2 (to 1.2) -> 1 - 1.2 + 0.5 = 0.3
    >>> # anchor 1: 1 - 0.2 + 0.5 = 1.3; anchor 2: 1.8 - 0.2 + 0.5 = 2.1; anchor 3: 1.8 - 2 + 0.5
    >>> round(float(loss([0, 0, 1, 1], y_pred)), 4)   # (0.3 + 1.3 + 2.1 + 0.3) / 4
    1.0
    """
    return TripletLoss(distance=metric, negative_mining_strategy="hard", margin=margin)


def triplet_batch_semihard_loss(margin=1.0, semi_margin=0.0, metric="euclidean_norm"):
    """Semi-hard triplet loss (triplet-tools 0.2.3 API): hardest positive, semi-hard negative.

    ```
    S(a) = {n in N(a) : d(a, n) > d(a, p*) + semi_margin}
    n*   = argmin_{S(a)} d(a, n), or argmax_{N(a)} d(a, n) when S(a) is empty
    l_a  = max(d(a, p*) - d(a, n*) + margin, 0)
    ```

    Equal to ``TripletLoss(distance=metric, margin=margin, semi_margin=semi_margin)``. Unlike
    0.2.3, anchors whose ``S(a)`` is empty fall back to the farthest negative instead of
    contributing 0, and anchors without a positive are left out of the average.

    Args:
        margin: the hinge margin, ``>= 0``.
        semi_margin: the offset of the semi-hard boundary.
        metric: a distance name (default ``"euclidean_norm"``) or ``Distance``.

    Returns:
        A :class:`TripletLoss`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("adam", triplet_batch_semihard_loss(margin=0.5))
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> _ = model.fit(x, np.array([0, 0, 1, 1, 2, 2, 3, 3]), epochs=1, verbose=0)
    """
    return TripletLoss(distance=metric, margin=margin, semi_margin=semi_margin)
