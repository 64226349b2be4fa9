"""The mining rules, stated once: strategies, validity, the semi-hard threshold and choice.

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

Every argmin / argmax takes the first index among equal values. A reference that is masked
out (an empty memory slot) or whose embedding is not finite is neither a positive nor a
negative of anyone: it is never chosen, and NaN in an anchor's own embedding reaches that
anchor's loss instead.

The choices as ``keras.ops`` functions, which the kernels call:

* :func:`picks_farthest`: which end of its candidates a hard / easy strategy takes;
* :func:`semi_hard_negative`: ``n*`` of semi-hard, per anchor (one threshold a row) or per
  ``(a, p)`` (one threshold a positive, strategy ``"all"``) by broadcasting;
* :func:`semi_hard_threshold`: ``d(a, p*) + semi_margin`` in the units a kernel compares;
* :func:`first_extreme`: the plain ``(extreme, first index)`` search; a kernel passes its
  own faster one (``kernel.arg_extreme``, ``slots.arg_extreme``) with the same result.

The ``keras.ops`` kernel (``kernel``) and the pair engine's row functions
(``triplet_rows``) choose through these functions. The eager-torch kernel
(``torch_kernel``) is the one exception: it applies the same rules in its own passes,
because eager torch pays for every op over the whole block, and it computes the semi-hard
fallback (the farthest negative) only for the rows that have no semi-hard negative, where
a ``keras.ops`` function computes it for every row. The tests hold every kernel to the same
brute-force reference.

This module imports no kernel; the kernels (``kernel``, ``torch_kernel``, ``slots``,
``triplet_rows``) import it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from triplet_tools import distances as distances_module
from triplet_tools._ops import ops
from triplet_tools._validation import check_choice, check_number

#: Accepted values of ``positive_mining_strategy``.
POSITIVE_STRATEGIES = ("hard", "easy", "all")
#: Accepted values of ``negative_mining_strategy``.
NEGATIVE_STRATEGIES = ("hard", "semi-hard", "easy", "all")
#: Strategies that choose one reference per anchor (the per-anchor kernels serve them).
PER_ANCHOR_POSITIVES = ("hard", "easy")
PER_ANCHOR_NEGATIVES = ("hard", "semi-hard", "easy")

_INF = float("inf")
_FARTHEST = {
    ("positive", "hard"): True,
    ("positive", "easy"): False,
    ("negative", "hard"): False,
    ("negative", "easy"): True,
}


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
    """The mining score of ``d(a, p) + semi_margin`` for each anchor, from ``p``'s score.

    ```
    t(a) = score(a, d(a, p) + semi_margin)      (p's own score when semi_margin == 0)
    ```

    The kernels compare mining scores (:meth:`Distance.mining_scores`), which keep the
    order of the distances; this is the semi-hard threshold in those units.

    Args:
        distance: a ``triplet_tools.distances.Distance``.
        positive_score: ``(n,)`` the mining score of each anchor's positive.
        anchors: ``(n, D)`` the anchors (a score may leave out the anchor's own norm).
        semi_margin: the offset in distance units.

    Returns:
        ``(n,)`` thresholds in mining-score units.

    Example: positives at distances 1 and ``sqrt(20)``, offset 0.5:

    >>> import numpy as np
    >>> from keras import ops
    >>> from triplet_tools import distances
    >>> euclidean = distances.get("euclidean")
    >>> a = ops.convert_to_tensor(np.array([[0.0, 0.0], [3.0, 4.0]], "float32"))
    >>> p = ops.convert_to_tensor(np.array([[1.0, 0.0]], "float32"))
    >>> t = semi_hard_threshold(euclidean, euclidean.mining_scores(a, p)[:, 0], a, 0.5)
    >>> [round(float(v), 3) for v in ops.convert_to_numpy(euclidean.score_to_distance(t, a))]
    [1.5, 4.972]
    """
    if semi_margin == 0:
        return positive_score
    return distance.distance_to_score(
        distance.score_to_distance(positive_score, anchors) + semi_margin, anchors
    )


def picks_farthest(role: str, strategy: str) -> bool:
    """Whether a hard / easy ``strategy`` takes the farthest of ``role``'s candidates.

    ```
    positive  hard: farthest (argmax d)     easy: nearest (argmin d)
    negative  hard: nearest (argmin d)      easy: farthest (argmax d)
    ```

    (The semi-hard negative is :func:`semi_hard_negative`; its fallback is the farthest.)

    Args:
        role: ``"positive"`` or ``"negative"``.
        strategy: ``"hard"`` or ``"easy"``.

    Returns:
        ``True`` for the farthest (largest distance), ``False`` for the nearest.

    Example:

    >>> picks_farthest("positive", "hard"), picks_farthest("negative", "hard")
    (True, False)
    """
    try:
        return _FARTHEST[role, strategy]
    except KeyError:
        raise ValueError(
            f"picks_farthest takes role 'positive' or 'negative' and strategy 'hard' or "
            f"'easy'; received role={role!r}, strategy={strategy!r}."
        ) from None


def first_extreme(values: Any, largest: bool) -> tuple[Any, Any]:
    """``(max or min, the first index of it)`` along the last axis: ``argmax`` / ``argmin``,
    then a gather of that entry.

    The default search of :func:`semi_hard_negative` (PNLoss's ``n x M x M`` candidates: a
    gather of ``n x M`` entries costs less than a second reduction). A kernel may pass a
    faster search with the same result instead (``kernel.arg_extreme`` on 2-D rows).

    Args:
        values: ``(..., M)`` floats.
        largest: the maximum (``True``) or the minimum (``False``).

    Returns:
        ``(extreme, index)``, each shaped ``values.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = ops.convert_to_tensor(np.array([[3.0, 1.0, 1.0, 2.0]], "float32"))
    >>> value, index = first_extreme(x, largest=False)
    >>> ops.convert_to_numpy(value).tolist(), ops.convert_to_numpy(index).tolist()
    ([1.0], [1])
    """
    index = ops.argmax(values, axis=-1) if largest else ops.argmin(values, axis=-1)
    return ops.take_along_axis(values, index[..., None], axis=-1)[..., 0], index


def semi_hard_negative(
    values: Any, threshold: Any, farthest: Any, arg_extreme: Any = first_extreme
) -> Any:
    """The semi-hard negative: the nearest beyond the threshold, else ``farthest``.

    ```
    S = {j : v_j > t}
    n* = argmin_{j in S} v_j  (first index among ties)   if S is non-empty
         farthest                                        otherwise
    ```

    ``v`` is the anchor's distance to each candidate, or any quantity in the same order
    (mining scores; the excess ``s_j - t`` with ``t = 0``), and ``t = d(a, p) + semi_margin``
    in the same units (:func:`semi_hard_threshold`). A column that is not a negative holds
    ``+inf`` or ``-inf``: never in ``S``. A NaN value or threshold puts nothing in ``S``.

    The two forms differ only in the threshold's shape, and broadcasting does the rest:

    * per anchor (a hard / easy positive ``p*``, or one positive slot of strategy
      ``"all"``): ``values`` ``(n, M)``, ``threshold`` ``(n, 1)``, ``farthest`` ``(n,)``;
    * per ``(anchor, positive)`` (strategy ``"all"``, every positive at once): ``values``
      ``(n, 1, M)``, ``threshold`` ``(n, K, 1)``, ``farthest`` ``(n, 1)``; the result is
      ``(n, K)``, one negative per unit.

    Args:
        values: ``(..., M)``: each candidate's distance (or score) from the anchor,
            ``+inf`` / ``-inf`` where the candidate is not a negative.
        threshold: broadcastable against ``values``: ``t`` per row (or per positive).
        farthest: the fallback index, broadcastable against the result: the farthest
            negative of each anchor.
        arg_extreme: ``(values, largest) -> (extreme, first index)`` along the last axis;
            :func:`first_extreme` unless the kernel has a faster search.

    Returns:
        Integer indices into the last axis of ``values``, shaped like ``values > threshold``
        without its last axis.

    Example: one anchor at distances ``0.3, 0.9, 0.6`` from its negatives (column 0 is
    not a negative); beyond ``0.5`` the nearest is column 3, beyond ``1.0`` none (so the
    farthest, column 2). Per positive, thresholds ``0.2`` and ``0.7`` choose columns 1
    and 2:

    >>> import numpy as np
    >>> from keras import ops
    >>> v = ops.convert_to_tensor(np.array([[np.inf, 0.3, 0.9, 0.6]] * 2, "float32"))
    >>> t = ops.convert_to_tensor(np.array([[0.5], [1.0]], "float32"))
    >>> far = ops.convert_to_tensor(np.array([2, 2], "int32"))
    >>> ops.convert_to_numpy(semi_hard_negative(v, t, far)).tolist()
    [3, 2]
    >>> per_positive = ops.convert_to_tensor(np.array([[[0.2], [0.7]]], "float32"))
    >>> chosen = semi_hard_negative(v[:1, None, :], per_positive, far[:1, None])
    >>> ops.convert_to_numpy(chosen).tolist()
    [[1, 2]]
    """
    beyond = ops.where(values > threshold, values, _INF)
    nearest, index = arg_extreme(beyond, largest=False)
    return ops.where(nearest < _INF, index, farthest)
