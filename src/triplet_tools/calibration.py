"""Distance thresholds chosen from data: the :class:`Calibration` of an
:class:`~triplet_tools.index.EmbeddingIndex` (TF Similarity 0.17.1's definitions).

Each calibration query ``q`` (true label ``y_q``) gets one predicted label and distance
``d_q`` from its ``k`` nearest indexed entries (:func:`vote`). At a threshold ``t`` a query
is accepted iff ``d_q <= t``:

```
TP = accepted and correct        FP = accepted and wrong
FN = rejected and correct        TN = rejected and wrong
precision = TP / (TP + FP)       recall   = TP / (TP + FN)
f1 = 2 P R / (P + R)             accuracy = (TP + TN) / Q          (0 / 0 is 0)
```

The candidate thresholds are the distinct ``d_q``. One sort of the ``Q`` distances and
cumulative sums give every count at every candidate: O(Q log Q) time, O(Q) memory.
"""

import dataclasses
from numbers import Real

import numpy as np

from triplet_tools._validation import check_choice

METRICS = ("f1", "precision", "recall", "accuracy")
VOTES = ("nearest", "majority")
#: The arrays of a calibration curve, in order.
CURVE_KEYS = ("threshold", "precision", "recall", "f1", "accuracy")


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """A distance threshold chosen on calibration data, with the whole curve.

    Attributes:
        threshold: accept a match iff its distance is ``<= threshold``.
        metric: the metric it was chosen by (``"f1"``, ``"precision"``, ``"recall"``,
            ``"accuracy"``).
        value: the metric's value at ``threshold``.
        k: the neighbours each query was given.
        vote: ``"nearest"`` or ``"majority"``.
        curve: a dict of ``(T,)`` NumPy arrays ``threshold`` (ascending), ``precision``,
            ``recall``, ``f1``, ``accuracy``, one entry per candidate threshold.

    Example:

    >>> cal = calibrate_from_votes(np.array([0.1, 0.2, 0.3]), np.array([True, True, False]))
    >>> round(cal.threshold, 3), cal.value
    (0.2, 1.0)
    """

    threshold: float
    metric: str
    value: float
    k: int
    vote: str
    curve: dict = dataclasses.field(repr=False)


def vote(distances, labels, how):
    """One predicted label and distance per query from its ``k`` neighbours.

    ``"nearest"``: the first neighbour's label and distance. ``"majority"``: the most
    frequent label among the ``k`` (a tie goes to the label whose first occurrence ranks
    higher) and the mean of the ``k`` distances.

    Args:
        distances: ``(Q, k)`` ascending neighbour distances.
        labels: ``(Q, k)`` their labels.
        how: ``"nearest"`` or ``"majority"``.

    Returns:
        ``(labels (Q,), distances (Q,) float64)``.

    Example:

    >>> d = np.array([[0.1, 0.2, 0.3, 0.6]])
    >>> predicted, mean = vote(d, np.array([[7, 5, 5, 7]]), "majority")
    >>> predicted.tolist(), round(float(mean[0]), 3)
    ([7], 0.3)
    """
    how = check_choice(how, VOTES, "vote")
    if how == "nearest":
        return labels[:, 0], distances[:, 0].astype(np.float64)
    # counts[q, j]: how often the label at rank j occurs among query q's k labels; argmax
    # takes the first rank with the largest count, i.e. the earliest of the tied labels.
    counts = np.sum(labels[:, :, None] == labels[:, None, :], axis=2)
    winner = np.argmax(counts, axis=1)
    return labels[np.arange(len(labels)), winner], np.mean(distances, axis=1, dtype=np.float64)


def curve(distances, correct):
    """Precision, recall, F1 and accuracy at every distinct distance.

    Args:
        distances: ``(Q,)`` predicted distances.
        correct: ``(Q,)`` bool, whether each query's predicted label is its true one.

    Returns:
        A dict of ``(T,)`` arrays ``threshold`` (ascending, distinct), ``precision``,
        ``recall``, ``f1``, ``accuracy``.

    Example:

    >>> c = curve(np.array([0.3, 0.1, 0.1]), np.array([False, True, False]))
    >>> c["threshold"].tolist(), c["precision"].tolist(), c["accuracy"].tolist()
    ([0.1, 0.3], [0.5, 0.3333333333333333], [0.6666666666666666, 0.3333333333333333])
    """
    order = np.argsort(distances, kind="stable")
    ordered, hits = distances[order], correct[order]
    last = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    true_positives = np.cumsum(hits)[last]
    false_positives = (last + 1) - true_positives
    positives = int(np.count_nonzero(hits))
    true_negatives = (len(hits) - positives) - false_positives
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, np.full_like(true_positives, positives))
    return {
        "threshold": ordered[last].astype(np.float64),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "accuracy": (true_positives + true_negatives) / len(hits),
    }


def _ratio(numerator, denominator):
    numerator = np.asarray(numerator, np.float64)
    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def choose(points, metric, target):
    """The index into ``points`` (a :func:`curve`) of the chosen threshold.

    ``target=None``: the largest threshold that maximises ``metric``. ``target=x``: for
    ``"precision"`` the largest threshold with precision ``>= x``, for any other metric the
    smallest threshold with the metric ``>= x``; ``ValueError`` when none reaches it.
    """
    values = points[metric]
    if target is None:
        return int(np.flatnonzero(values == values.max())[-1])
    reached = np.flatnonzero(values >= target)
    if len(reached) == 0:
        raise ValueError(
            f"No threshold reaches {metric} >= {target}; the best {metric} reached on this "
            f"calibration data is {values.max():.6g}."
        )
    return int(reached[-1] if metric == "precision" else reached[0])


def check_target(target):
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, Real) or not 0 <= float(target) <= 1:
        raise ValueError(f"target must be None or a number in [0, 1]; received {target!r}.")
    return float(target)


def calibrate_from_votes(distances, correct, metric="f1", target=None, k=1, vote="nearest"):
    """A :class:`Calibration` from the predicted distances and their correctness.

    Args:
        distances: ``(Q,)`` predicted distances (:func:`vote`).
        correct: ``(Q,)`` bool.
        metric, target: as in :meth:`~triplet_tools.index.EmbeddingIndex.calibrate`.
        k, vote: recorded in the result.

    Example:

    >>> cal = calibrate_from_votes(np.array([0.1, 0.2, 0.3]), np.array([True, False, True]),
    ...                            metric="precision", target=0.6)
    >>> round(cal.threshold, 3), round(cal.value, 3)
    (0.3, 0.667)
    """
    metric = check_choice(metric, METRICS, "metric")
    target = check_target(target)
    points = curve(np.asarray(distances, np.float64), np.asarray(correct, bool))
    chosen = choose(points, metric, target)
    return Calibration(
        threshold=float(points["threshold"][chosen]),
        metric=metric,
        value=float(points[metric][chosen]),
        k=int(k),
        vote=vote,
        curve=points,
    )
