"""A brute-force NumPy reference written from SPEC.md, sharing no code with the library.

Everything is float64 and loops over anchors and references one pair at a time; nothing here
is vectorised the way the library is, so the two can disagree when either is wrong.

Ties: SPEC allows any of the tied indices. The reference therefore returns, for each anchor,
every loss value that a tied choice of ``p*`` / ``n*`` could give (``options``); on data
without ties there is exactly one.
"""

import math

import numpy as np

NORM_FLOOR = 1e-6  # SPEC: normalisation is safe at zero; we divide by max(||a||, 1e-6)


def _unit(v):
    return v / max(math.sqrt(float(np.dot(v, v))), NORM_FLOOR)


def distance(name, a, b):
    """d(a, b) for two 1-D vectors, straight from SPEC's table."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if name in ("euclidean", "l2"):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    if name in ("squared_euclidean", "sql2"):
        return sum((x - y) ** 2 for x, y in zip(a, b))
    if name in ("manhattan", "l1"):
        return sum(abs(x - y) for x, y in zip(a, b))
    if name == "euclidean_norm":
        ua, ub = _unit(a), _unit(b)
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(ua, ub)))
    if name == "cosine":
        return 1.0 - float(np.dot(_unit(a), _unit(b)))
    raise KeyError(name)


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _ties(candidates, key, best, tie_tol):
    return [j for j in candidates if abs(key[j] - best) <= tie_tol]


def anchor_options(
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
    references=None,
    reference_labels=None,
    anchor_positions=None,
    tie_tol=1e-12,
):
    """Per anchor: (sorted list of possible losses, valid flag, used_fallback flag).

    ``loss`` is ``"triplet"``, ``"pn"`` or ``"priming"`` (priming forces hard/hard).
    """
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    emb = np.asarray(embeddings, np.float64)
    if references is None:
        refs, ref_labels = emb, labels
        positions = list(range(len(labels)))
    else:
        refs = np.asarray(references, np.float64)
        ref_labels = [int(v) for v in np.asarray(reference_labels).reshape(-1)]
        positions = [-1] * len(labels) if anchor_positions is None else list(anchor_positions)
    if loss == "priming":
        positive, negative = "hard", "hard"

    results = []
    for a in range(len(labels)):
        d = [distance(distance_name, emb[a], refs[j]) for j in range(len(refs))]
        pos = [j for j in range(len(refs)) if ref_labels[j] == labels[a] and j != positions[a]]
        neg = [j for j in range(len(refs)) if ref_labels[j] != labels[a]]
        if not pos or not neg:
            results.append(([0.0], False, False))
            continue
        best_p = max(d[j] for j in pos) if positive == "hard" else min(d[j] for j in pos)
        p_choices = _ties(pos, d, best_p, tie_tol)
        options, fallback = set(), False
        for p in p_choices:
            if negative == "hard":
                n_choices = _ties(neg, d, min(d[j] for j in neg), tie_tol)
            elif negative == "easy":
                n_choices = _ties(neg, d, max(d[j] for j in neg), tie_tol)
            else:
                semi = [j for j in neg if d[j] > d[p] + semi_margin]
                if semi:
                    n_choices = _ties(semi, d, min(d[j] for j in semi), tie_tol)
                else:
                    fallback = True
                    n_choices = _ties(neg, d, max(d[j] for j in neg), tie_tol)
            for n in n_choices:
                d_ap, d_an = d[p], d[n]
                if loss == "pn":
                    d_an = min(d_an, distance(distance_name, refs[p], refs[n]))
                if loss == "priming":
                    value = d_ap**2 + math.exp(-10.0 * d_an)
                elif soft_margin:
                    value = _softplus(d_ap - d_an)
                else:
                    value = max(d_ap - d_an + margin, 0.0)
                options.add(round(value, 12))
        results.append((sorted(options), True, fallback))
    return results


def per_anchor(labels, embeddings, **kwargs):
    """(losses, valid) as float64 arrays, for data without ties (asserts a single option)."""
    rows = anchor_options(labels, embeddings, **kwargs)
    for options, _, _ in rows:
        assert len(options) == 1, f"tied choices give several losses: {options}"
    return (np.array([r[0][0] for r in rows]), np.array([r[1] for r in rows]))


def reduce(losses, valid, sample_weight=None, reduction="sum_over_batch_size"):
    """SPEC's reductions: averages run over valid anchors only."""
    w = np.ones(len(losses)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w.reshape(-1) * np.asarray(valid, np.float64)
    weighted = np.asarray(losses) * w
    if reduction in (None, "none"):
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean_with_sample_weight":
        denominator = w.sum()
    else:
        denominator = float(np.sum(valid))
    return weighted.sum() / denominator if denominator else 0.0


def loss_value(labels, embeddings, sample_weight=None, reduction="sum_over_batch_size", **kw):
    losses, valid = per_anchor(labels, embeddings, **kw)
    return reduce(losses, valid, sample_weight, reduction)


def numerical_gradient(labels, embeddings, step=1e-6, **kw):
    """Central differences of the default-reduced reference loss w.r.t. every embedding entry."""
    x = np.array(embeddings, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss_value(labels, plus, **kw) - loss_value(labels, minus, **kw)) / (
            2 * step
        )
    return grad


def retrieval_metrics(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    distance_name="cosine",
    k=(1, 5, 10),
    query_groups=None,
    ref_groups=None,
):
    """Musgrave et al. (2020) metrics and full-ranking mAP, one query at a time, from SPEC's
    definitions; with groups, references of the query's label and group leave its ranking."""
    q = np.asarray(embeddings, np.float64)
    ql = [int(v) for v in np.asarray(labels).reshape(-1)]
    leave_one_out = ref_embeddings is None
    r = q if leave_one_out else np.asarray(ref_embeddings, np.float64)
    rl = ql if leave_one_out else [int(v) for v in np.asarray(ref_labels).reshape(-1)]
    qg = None if query_groups is None else list(np.asarray(query_groups).reshape(-1))
    rg = qg if leave_one_out else (None if ref_groups is None else list(ref_groups))
    sums = {"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0, "map": 0.0}
    sums.update({f"recall@{kk}": 0.0 for kk in k})
    count = 0
    for i in range(len(q)):
        candidates = [
            j
            for j in range(len(r))
            if not (leave_one_out and j == i)
            and not (qg is not None and rl[j] == ql[i] and rg[j] == qg[i])
        ]
        relevant_total = sum(1 for j in candidates if rl[j] == ql[i])
        if relevant_total == 0:
            continue
        count += 1
        ranked = sorted(candidates, key=lambda j: (distance(distance_name, q[i], r[j]), j))
        rel = [1 if rl[j] == ql[i] else 0 for j in ranked]
        sums["precision@1"] += rel[0]
        for kk in k:
            sums[f"recall@{kk}"] += 1.0 if any(rel[:kk]) else 0.0
        R = relevant_total
        sums["r_precision"] += sum(rel[:R]) / R
        for key, depth in (("map@r", R), ("map", len(rel))):
            hits, ap = 0, 0.0
            for position in range(depth):
                if rel[position]:
                    hits += 1
                    ap += hits / (position + 1)
            sums[key] += ap / R
    return {key: (value / count if count else 0.0) for key, value in sums.items()}


def mined_distances(
    labels,
    embeddings,
    *,
    loss="triplet",
    distance_name="cosine",
    positive="hard",
    negative="semi-hard",
    semi_margin=0.0,
):
    """Per anchor ``(d_ap, d_an)`` of SPEC's mining (``None`` for invalid anchors), in-batch.

    For data without ties. ``loss="pn"`` gives ``d_an = min(d(a, n*), d(p*, n*))``;
    ``loss="priming"`` mines hard/hard.
    """
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    emb = np.asarray(embeddings, np.float64)
    if loss == "priming":
        positive, negative = "hard", "hard"
    result = []
    for a in range(len(labels)):
        d = {j: distance(distance_name, emb[a], emb[j]) for j in range(len(labels)) if j != a}
        pos = [j for j in d if labels[j] == labels[a]]
        neg = [j for j in d if labels[j] != labels[a]]
        if not pos or not neg:
            result.append(None)
            continue
        p = max(pos, key=d.get) if positive == "hard" else min(pos, key=d.get)
        semi = [j for j in neg if d[j] > d[p] + semi_margin]
        if negative == "hard":
            n = min(neg, key=d.get)
        elif negative == "semi-hard" and semi:
            n = min(semi, key=d.get)
        else:  # "easy", and the semi-hard fallback
            n = max(neg, key=d.get)
        d_an = d[n]
        if loss == "pn":
            d_an = min(d_an, distance(distance_name, emb[p], emb[n]))
        result.append((d[p], d_an))
    return result
