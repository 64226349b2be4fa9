"""The mining rules, stated once: strategies, validity and the semi-hard threshold.

For anchor ``a`` with references ``R`` (the batch itself, or an explicit reference set):

```
P(a) = {j in R : label(j) == label(a), j is not a itself}     N(a) = {j in R : label(j) != label(a)}
valid(a) = P(a) non-empty and N(a) non-empty

positive  hard: p* = argmax_{P(a)} d(a, j)        easy: p* = argmin_{P(a)} d(a, j)
negative  hard: n* = argmin_{N(a)} d(a, j)        easy: n* = argmax_{N(a)} d(a, j)
     semi-hard: S(a) = {j in N(a) : d(a, j) > d(a, p*) + semi_margin}
                n* = argmin_{S(a)} d(a, j) if S(a) is non-empty, else argmax_{N(a)} d(a, j)
positive  all:  every (a, p), p in P(a), is a unit; semi-hard then uses that pair's d(a, p)
negative  all:  every n in N(a) makes a unit with each positive the positive strategy gives
```

A reference that is masked out (an empty memory slot) or whose embedding is not finite is
neither a positive nor a negative of anyone: it is never chosen, and NaN in an anchor's
own embedding reaches that anchor's loss instead. This module imports no kernel; the
kernels (``kernel``, ``torch_kernel``, ``pairs``) import it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from triplet_tools import distances as distances_module
from triplet_tools._validation import check_choice, check_number

#: Accepted values of ``positive_mining_strategy``.
POSITIVE_STRATEGIES = ("hard", "easy", "all")
#: Accepted values of ``negative_mining_strategy``.
NEGATIVE_STRATEGIES = ("hard", "semi-hard", "easy", "all")
#: Strategies that choose one reference per anchor (the per-anchor kernels serve them).
PER_ANCHOR_POSITIVES = ("hard", "easy")
PER_ANCHOR_NEGATIVES = ("hard", "semi-hard", "easy")


class MiningRules(NamedTuple):
    """What to mine: the distance, the two strategies and the semi-hard offset.

    Build it with :func:`mining_rules`, which checks every field.

    Attributes:
        distance: a ``triplet_tools.distances.Distance``.
        positive: one of :data:`POSITIVE_STRATEGIES`.
        negative: one of :data:`NEGATIVE_STRATEGIES`.
        semi_margin: the semi-hard offset in distance units (a float).
    """

    distance: Any
    positive: str
    negative: str
    semi_margin: float

    @property
    def per_anchor(self) -> bool:
        """Whether each anchor gets one positive and one negative (no ``"all"``)."""
        return self.positive in PER_ANCHOR_POSITIVES and self.negative in PER_ANCHOR_NEGATIVES


def mining_rules(
    distance: Any = "euclidean_norm",
    positive: str = "hard",
    negative: str = "semi-hard",
    semi_margin: float = 0.0,
) -> MiningRules:
    """Checks and bundles the mining arguments.

    Args:
        distance: a distance name or ``Distance``.
        positive: ``"hard"``, ``"easy"`` or ``"all"``.
        negative: ``"hard"``, ``"semi-hard"``, ``"easy"`` or ``"all"``.
        semi_margin: the semi-hard offset (finite).

    Returns:
        A :class:`MiningRules`.

    Example:

    >>> rules = mining_rules("cosine", "all", "semi-hard")
    >>> rules.positive, rules.per_anchor
    ('all', False)
    """
    return MiningRules(
        distances_module.get(distance),
        check_choice(positive, POSITIVE_STRATEGIES, "positive_mining_strategy"),
        check_choice(negative, NEGATIVE_STRATEGIES, "negative_mining_strategy"),
        check_number(semi_margin, "semi_margin"),
    )


def semi_hard_threshold(
    distance: Any, positive_score: Any, anchors: Any, semi_margin: float
) -> Any:
    """The mining score of ``d(a, p) + semi_margin`` for each anchor, from ``p``'s score."""
    if semi_margin == 0:
        return positive_score
    return distance.distance_to_score(
        distance.score_to_distance(positive_score, anchors) + semi_margin, anchors
    )
