"""A brute-force NumPy reference for SPEC's last part ("Every pair, every triplet, and the
pair-based losses"), written from SPEC.md alone and sharing no code with the library.

Everything is float64 and loops over anchors, pairs and triplets one at a time; the only
thing taken from ``reference.py`` (itself written from SPEC) is ``distance(name, a, b)``.
The references are the batch itself, so ``j = a`` is never a positive.

Ties. SPEC lets a strategy take any of several tied indices. Rather than enumerate them,
every function here checks that no decision it takes is within ``tie_tol`` of a tie and
raises :class:`TiedBatch` otherwise: a choice between two negatives at (almost) the same
distance, a semi-hard comparison ``d(a, j)`` against ``d(a, p) + semi_margin``, a hinge at
``l_u = 0`` (which decides "active"), PN's ``min(d(a, n), d(p, n))``, multi-similarity's
``epsilon`` thresholds, ``max(J_ij, 0)`` of the lifted structure. The tests feed random
continuous data (ties have probability 0) with fixed seeds for which none of this fires at
``tie_tol = 1e-5``, far above float32 rounding, so a float32 implementation must take the
same decisions, and central differences with a step of 1e-6 never cross a kink. Hand-built
data with deliberate ties (duplicates, zero vectors) passes ``tie_tol=None``.

Per anchor every loss gives ``(L_a, c_a)``: the summed unit losses and the number of
counted units (SPEC); :func:`reduce` applies SPEC's reductions to them.
"""

import math

import numpy as np

from reference import distance

#: tensorflow-addons' ``distance_metric`` names (SPEC, ``triplet_tools.tfa``).
TFA_DISTANCES = {"L2": "euclidean", "squared-L2": "squared_euclidean", "angular": "cosine"}


class TiedBatch(AssertionError):
    """The data puts one of the reference's decisions within ``tie_tol`` of a tie."""


# --- small helpers -----------------------------------------------------------------------------


def _labels(labels):
    return [int(v) for v in np.asarray(labels).reshape(-1)]


def distance_matrix(distance_name, embeddings):
    """``D[i][j] = d(x_i, x_j)``, one pair at a time (the diagonal included)."""
    x = np.asarray(embeddings, np.float64)
    n = len(x)
    return [[distance(distance_name, x[i], x[j]) for j in range(n)] for i in range(n)]


def _distances(distance_name, embeddings, distances):
    return distance_matrix(distance_name, embeddings) if distances is None else distances


def positives_and_negatives(labels, a):
    """``P(a)`` (same label, ``j != a``) and ``N(a)`` (other labels), in-batch."""
    pos = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
    neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
    return pos, neg


def logsumexp(values):
    """``log(sum(exp(v)))``, shifted by the maximum; ``-inf`` for no values."""
    values = list(values)
    if not values:
        return -math.inf
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _check_gap(gap, tie_tol, what):
    if tie_tol is not None and abs(gap) <= tie_tol:
        raise TiedBatch(f"{what}: gap {gap:.3g} <= tie_tol {tie_tol:g}")


def _pick(candidates, d_row, largest, tie_tol, what):
    """argmax / argmin of ``d_row`` over ``candidates``, refusing a near tie."""
    ordered = sorted(candidates, key=lambda j: d_row[j], reverse=largest)
    if len(ordered) > 1:
        _check_gap(d_row[ordered[0]] - d_row[ordered[1]], tie_tol, what)
    return ordered[0]


# --- pair-level mining: TripletLoss / PNLoss ---------------------------------------------------

POSITIVE_STRATEGIES = ("hard", "easy", "all")
NEGATIVE_STRATEGIES = ("hard", "semi-hard", "easy", "all")


def triplet_units(
    labels,
    embeddings,
    *,
    loss="triplet",
    distance_name="cosine",
    positive="hard",
    negative="semi-hard",
    soft_margin=False,
    margin=1.0,
    semi_margin=0.0,
    tie_tol=1e-5,
    distances=None,
):
    """Per anchor ``(valid, [l_u for every unit u of a])`` of SPEC's pair-level mining.

    Units: the anchor itself for per-anchor strategies; every positive pair ``(a, p)`` for
    ``positive="all"``; every ``(p, n)``, ``n in N(a)``, for ``negative="all"``. Semi-hard
    uses the unit's own ``d(a, p)``: ``S(a, p) = {j in N(a): d(a, j) > d(a, p) + semi_margin}``,
    its nearest, else the farthest of ``N(a)``. ``loss="pn"`` scores
    ``d_an = min(d(a, n), d(p, n))``.
    """
    assert loss in ("triplet", "pn"), loss
    assert positive in POSITIVE_STRATEGIES and negative in NEGATIVE_STRATEGIES
    labels = _labels(labels)
    d = _distances(distance_name, embeddings, distances)
    rows = []
    for a in range(len(labels)):
        pos, neg = positives_and_negatives(labels, a)
        if not pos or not neg:
            rows.append((False, []))
            continue
        if positive == "all":
            chosen_positives = pos
        else:
            chosen_positives = [_pick(pos, d[a], positive == "hard", tie_tol, f"p*({a})")]
        units = []
        for p in chosen_positives:
            if negative == "all":
                chosen_negatives = neg
            elif negative == "hard":
                chosen_negatives = [_pick(neg, d[a], False, tie_tol, f"n*({a})")]
            elif negative == "easy":
                chosen_negatives = [_pick(neg, d[a], True, tie_tol, f"n*({a})")]
            else:  # semi-hard, on this unit's own positive distance
                threshold = d[a][p] + semi_margin
                for j in neg:
                    _check_gap(d[a][j] - threshold, tie_tol, f"semi-hard S({a}, {p}) at {j}")
                semi = [j for j in neg if d[a][j] > threshold]
                if semi:
                    chosen_negatives = [_pick(semi, d[a], False, tie_tol, f"n*({a}, {p})")]
                else:  # fallback: the farthest negative
                    chosen_negatives = [_pick(neg, d[a], True, tie_tol, f"n*({a}, {p})")]
            for n in chosen_negatives:
                d_an = d[a][n]
                if loss == "pn":
                    _check_gap(d[a][n] - d[p][n], tie_tol, f"PN min at ({a}, {p}, {n})")
                    d_an = min(d[a][n], d[p][n])
                if soft_margin:
                    units.append(softplus(d[a][p] - d_an))
                else:
                    z = d[a][p] - d_an + margin
                    _check_gap(z, tie_tol, f"hinge at ({a}, {p}, {n})")
                    units.append(max(z, 0.0))
        rows.append((True, units))
    return rows


def triplet_per_anchor(labels, embeddings, *, average="valid", soft_margin=False, **kwargs):
    """``(L, c)`` float64 arrays: ``L_a = sum of a's unit losses``, ``c_a`` = counted units
    (``"valid"``: every unit of a valid anchor; ``"active"``: those with ``l_u > 0``, and
    with the soft margin every valid unit)."""
    assert average in ("valid", "active"), average
    rows = triplet_units(labels, embeddings, soft_margin=soft_margin, **kwargs)
    totals, counts = [], []
    for _, units in rows:
        totals.append(sum(units))
        if average == "valid" or soft_margin:
            counts.append(len(units))
        else:
            counts.append(sum(1 for u in units if u > 0))
    return np.array(totals, np.float64), np.array(counts, np.float64)


def reduce(totals, counts, sample_weight=None, reduction="sum_over_batch_size"):
    """SPEC's reductions of per-anchor ``(L_a, c_a)`` with per-anchor weights ``w_a``.

    default (and ``"mean"``, which the library documents as the same):
    ``sum w_a L_a / max(sum c_a, 1)``; ``"mean_with_sample_weight"``:
    ``sum w_a L_a / sum w_a c_a`` (0 when that is 0); ``"sum"``: ``sum w_a L_a``;
    ``"none"`` / ``None``: the vector ``w_a L_a``.
    """
    totals = np.asarray(totals, np.float64)
    counts = np.asarray(counts, np.float64)
    w = np.ones(len(totals)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w.reshape(-1)
    weighted = np.array([w[a] * totals[a] for a in range(len(totals))], np.float64)
    if reduction in (None, "none"):
        return weighted
    numerator = float(sum(weighted))
    if reduction == "sum":
        return numerator
    if reduction == "mean_with_sample_weight":
        denominator = float(sum(w[a] * counts[a] for a in range(len(totals))))
        return numerator / denominator if denominator != 0 else 0.0
    assert reduction in ("sum_over_batch_size", "mean"), reduction
    return numerator / max(float(sum(counts)), 1.0)


def triplet_loss(
    labels, embeddings, *, sample_weight=None, reduction="sum_over_batch_size", **kwargs
):
    """``TripletLoss`` / ``PNLoss`` (``loss="pn"``) reduced as SPEC says."""
    return reduce(*triplet_per_anchor(labels, embeddings, **kwargs), sample_weight, reduction)


def batch_all_loss(labels, embeddings, margin=1.0, metric="euclidean_norm", **kwargs):
    """``triplet_batch_all_loss``: every triplet, hinge, averaged over the active ones."""
    return triplet_loss(
        labels,
        embeddings,
        distance_name=metric,
        positive="all",
        negative="all",
        margin=margin,
        average="active",
        **kwargs,
    )


# --- triplet_tools.tfa ---------------------------------------------------------------------------


def tfa_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2", **kwargs):
    """tfa's ``TripletSemiHardLoss``: every positive pair with its own semi-hard negative
    (``d_an > d_ap``, else the farthest negative), mean over the positive pairs."""
    return triplet_loss(
        labels,
        embeddings,
        distance_name=TFA_DISTANCES[distance_metric],
        positive="all",
        negative="semi-hard",
        margin=margin,
        **kwargs,
    )


def tfa_hard_loss(labels, embeddings, margin=1.0, soft=False, distance_metric="L2", **kwargs):
    """tfa's ``TripletHardLoss``: hardest positive, hardest negative; with ``soft`` the
    margin is not used."""
    return triplet_loss(
        labels,
        embeddings,
        distance_name=TFA_DISTANCES[distance_metric],
        positive="hard",
        negative="hard",
        soft_margin=soft,
        margin=1.0 if soft else margin,
        **kwargs,
    )


# --- pair-based losses ---------------------------------------------------------------------------


def multi_similarity_per_anchor(
    labels,
    embeddings,
    *,
    distance_name="cosine",
    alpha=2.0,
    beta=40.0,
    epsilon=0.1,
    lmda=0.5,
    center=1.0,
    tie_tol=1e-5,
    distances=None,
):
    """``(L, c)`` of ``MultiSimilarityLoss`` (SPEC's distance form)::

        s_aj  = d(a, j) + lmda - center
        P'(a) = {j in P(a): d(a, j) > min_{N(a)} d(a, .) - epsilon}
        N'(a) = {j in N(a): d(a, j) < max_{P(a)} d(a, .) + epsilon}
        l_a   = 1/alpha log(1 + sum_{P'} exp(alpha s)) + 1/beta log(1 + sum_{N'} exp(-beta s))

    valid iff ``P'(a)`` and ``N'(a)`` are both non-empty.
    """
    labels = _labels(labels)
    d = _distances(distance_name, embeddings, distances)
    totals, counts = [], []
    for a in range(len(labels)):
        pos, neg = positives_and_negatives(labels, a)
        if not pos or not neg:
            totals.append(0.0)
            counts.append(0)
            continue
        nearest_negative = min(d[a][j] for j in neg)
        farthest_positive = max(d[a][j] for j in pos)
        for j in pos:
            _check_gap(d[a][j] - (nearest_negative - epsilon), tie_tol, f"P'({a}) at {j}")
        for j in neg:
            _check_gap(d[a][j] - (farthest_positive + epsilon), tie_tol, f"N'({a}) at {j}")
        kept_pos = [j for j in pos if d[a][j] > nearest_negative - epsilon]
        kept_neg = [j for j in neg if d[a][j] < farthest_positive + epsilon]
        if not kept_pos or not kept_neg:
            totals.append(0.0)
            counts.append(0)
            continue
        s = {j: d[a][j] + lmda - center for j in kept_pos + kept_neg}
        # log(1 + sum exp(v)) = logsumexp([0, v...]), stable for any v.
        positive_term = logsumexp([0.0] + [alpha * s[j] for j in kept_pos]) / alpha
        negative_term = logsumexp([0.0] + [-beta * s[j] for j in kept_neg]) / beta
        totals.append(positive_term + negative_term)
        counts.append(1)
    return np.array(totals, np.float64), np.array(counts, np.float64)


def circle_per_anchor(
    labels,
    embeddings,
    *,
    distance_name="cosine",
    gamma=80.0,
    margin=0.4,
    frozen_distances=None,
    distances=None,
):
    """``(L, c)`` of ``CircleLoss`` (SPEC's distance form)::

        alpha_p = max(d + margin, 0)          alpha_n = max(1 + margin - d, 0)
        l_a = softplus(logsumexp_{P(a)}(gamma alpha_p (d - margin))
                       + logsumexp_{N(a)}(gamma alpha_n (1 - margin - d)))

    ``alpha`` is under ``stop_gradient``: ``frozen_distances`` (a distance matrix) computes
    the alphas from other distances than the rest, so that central differences around the
    embeddings those distances came from give the gradient with alpha held fixed.
    """
    labels = _labels(labels)
    d = _distances(distance_name, embeddings, distances)
    d0 = d if frozen_distances is None else frozen_distances
    totals, counts = [], []
    for a in range(len(labels)):
        pos, neg = positives_and_negatives(labels, a)
        if not pos or not neg:
            totals.append(0.0)
            counts.append(0)
            continue
        positive_logits = [gamma * max(d0[a][j] + margin, 0.0) * (d[a][j] - margin) for j in pos]
        negative_logits = [
            gamma * max(1.0 + margin - d0[a][j], 0.0) * (1.0 - margin - d[a][j]) for j in neg
        ]
        totals.append(softplus(logsumexp(positive_logits) + logsumexp(negative_logits)))
        counts.append(1)
    return np.array(totals, np.float64), np.array(counts, np.float64)


def soft_nearest_neighbor_per_anchor(
    labels, embeddings, *, distance_name="squared_euclidean", temperature=1.0, distances=None
):
    """``(L, c)`` of ``SoftNearestNeighborLoss``::

        l_a = -log(sum_{j in P(a)} exp(-d(a, j)/T) / sum_{j != a} exp(-d(a, j)/T))
            = logsumexp_{j != a}(-d/T) - logsumexp_{P(a)}(-d/T)

    valid iff ``P(a)`` and ``N(a)`` are non-empty.
    """
    labels = _labels(labels)
    d = _distances(distance_name, embeddings, distances)
    totals, counts = [], []
    for a in range(len(labels)):
        pos, neg = positives_and_negatives(labels, a)
        if not pos or not neg:
            totals.append(0.0)
            counts.append(0)
            continue
        everyone = [-d[a][j] / temperature for j in range(len(labels)) if j != a]
        same = [-d[a][j] / temperature for j in pos]
        totals.append(logsumexp(everyone) - logsumexp(same))
        counts.append(1)
    return np.array(totals, np.float64), np.array(counts, np.float64)


def lifted_struct_per_anchor(
    labels, embeddings, *, margin=1.0, distance_name="euclidean", tie_tol=1e-5, distances=None
):
    """``(L, c)`` of tfa's lifted structure (``triplet_tools.tfa.LiftedStructLoss``)::

        J_ij = log(sum_{k in N(i)} exp(margin - d_ik) + sum_{l in N(j)} exp(margin - d_jl)) + d_ij
        L_i  = sum_{j in P(i)} max(J_ij, 0)^2 / 2          c_i = |P(i)|

    over the ordered positive pairs of valid anchors.
    """
    labels = _labels(labels)
    d = _distances(distance_name, embeddings, distances)
    totals, counts = [], []
    for i in range(len(labels)):
        pos, neg_i = positives_and_negatives(labels, i)
        if not pos or not neg_i:
            totals.append(0.0)
            counts.append(0)
            continue
        total = 0.0
        for j in pos:
            _, neg_j = positives_and_negatives(labels, j)
            terms = [margin - d[i][k] for k in neg_i] + [margin - d[j][m] for m in neg_j]
            J = logsumexp(terms) + d[i][j]
            _check_gap(J, tie_tol, f"max(J_{i}{j}, 0)")
            total += max(J, 0.0) ** 2 / 2.0
        totals.append(total)
        counts.append(len(pos))
    return np.array(totals, np.float64), np.array(counts, np.float64)


PAIR_LOSSES = {
    "multi_similarity": multi_similarity_per_anchor,
    "circle": circle_per_anchor,
    "soft_nearest_neighbor": soft_nearest_neighbor_per_anchor,
    "lifted_struct": lifted_struct_per_anchor,
}


def pair_loss(
    kind, labels, embeddings, *, sample_weight=None, reduction="sum_over_batch_size", **kwargs
):
    """One of :data:`PAIR_LOSSES`, reduced as SPEC says."""
    totals, counts = PAIR_LOSSES[kind](labels, embeddings, **kwargs)
    return reduce(totals, counts, sample_weight, reduction)


# --- gradients -------------------------------------------------------------------------------


def numerical_gradient(fn, embeddings, distance_name, step=1e-6):
    """Central differences of a scalar ``fn(distances)`` w.r.t. every entry of the
    embeddings, in float64.

    ``fn`` takes the distance matrix of the (perturbed) embeddings; moving entry ``(i, k)``
    changes only row and column ``i``, so only those are recomputed.
    """
    x = np.array(embeddings, np.float64)
    base = distance_matrix(distance_name, x)
    grad = np.zeros_like(x)
    for i, k in np.ndindex(*x.shape):
        values = []
        for sign in (1.0, -1.0):
            moved = x.copy()
            moved[i, k] += sign * step
            d = [row[:] for row in base]
            for j in range(len(x)):
                d[i][j] = distance(distance_name, moved[i], moved[j])
                d[j][i] = distance(distance_name, moved[j], moved[i])
            values.append(fn(d))
        grad[i, k] = (values[0] - values[1]) / (2 * step)
    return grad


def triplet_gradient(
    labels,
    embeddings,
    *,
    distance_name="cosine",
    sample_weight=None,
    reduction="sum_over_batch_size",
    **kwargs,
):
    """Gradient of :func:`triplet_loss` (checks the batch for ties once, at ``x``)."""
    triplet_loss(labels, embeddings, distance_name=distance_name, **kwargs)
    kwargs = {**kwargs, "tie_tol": None}

    def fn(d):
        totals_counts = triplet_per_anchor(labels, None, distances=d, **kwargs)
        return reduce(*totals_counts, sample_weight, reduction)

    return numerical_gradient(fn, embeddings, distance_name)


def pair_gradient(
    kind,
    labels,
    embeddings,
    *,
    distance_name,
    sample_weight=None,
    reduction="sum_over_batch_size",
    **kwargs,
):
    """Gradient of :func:`pair_loss`; for the circle loss with ``alpha`` held fixed at ``x``
    (SPEC: under ``stop_gradient``). ``distance_name`` must be given (each loss has its own
    default)."""
    pair_loss(kind, labels, embeddings, distance_name=distance_name, **kwargs)
    if kind in ("multi_similarity", "lifted_struct"):
        kwargs = {**kwargs, "tie_tol": None}
    if kind == "circle":
        kwargs = {**kwargs, "frozen_distances": distance_matrix(distance_name, embeddings)}

    def fn(d):
        totals_counts = PAIR_LOSSES[kind](labels, None, distances=d, **kwargs)
        return reduce(*totals_counts, sample_weight, reduction)

    return numerical_gradient(fn, embeddings, distance_name)
