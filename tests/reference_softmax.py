"""A brute-force NumPy float64 reference for SPEC's "In-batch softmax losses at any batch
size" (``SupConLoss``, ``InfoNCELoss``), written from SPEC.md alone and sharing no code
with the library. Loops over anchors and candidates one at a time; gradients by central
differences of the whole computation."""

import numpy as np

from reference import distance
from reference_pairs import logsumexp, reduce


def supcon_per_anchor(labels, embeddings, *, temperature=0.1, distance_name="cosine"):
    """``(L, c)``: ``l_a = -(1/|P|) sum_p [-d(a,p)/T - logsumexp_{j != a}(-d(a,j)/T)]``,
    valid (``c_a = 1``) iff ``P(a)`` and ``N(a)`` are non-empty."""
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    x = np.asarray(embeddings, np.float64)
    n = len(labels)
    totals, counts = [], []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(n) if labels[j] != labels[a]]
        if not pos or not neg:
            totals.append(0.0)
            counts.append(0.0)
            continue
        logit = {j: -distance(distance_name, x[a], x[j]) / temperature for j in range(n)}
        denominator = logsumexp(logit[j] for j in range(n) if j != a)
        totals.append(-sum(logit[p] - denominator for p in pos) / len(pos))
        counts.append(1.0)
    return np.array(totals), np.array(counts)


def supcon_loss(labels, embeddings, *, sample_weight=None, reduction="sum_over_batch_size", **kw):
    return reduce(*supcon_per_anchor(labels, embeddings, **kw), sample_weight, reduction)


def infonce_per_query(
    embeddings,
    labels=None,
    *,
    temperature=0.05,
    distance_name="cosine",
    symmetric=False,
    exclude_same_label=False,
):
    """``(B,)`` per-query values of ``InfoNCELoss`` on ``(B, 2 + h, D)`` embeddings.

    Query ``i``'s candidates: every document of the batch (column >= 1 of every row),
    minus, with ``exclude_same_label``, the positive documents (column 1) of other queries
    of the same label. ``symmetric``: the mean with the document-to-query term, whose
    candidates are every query, minus the other queries of the same label.
    """
    x = np.asarray(embeddings, np.float64)
    b, columns = x.shape[0], x.shape[1]
    if exclude_same_label:
        labels = [int(v) for v in np.asarray(labels).reshape(-1)]

    def logit(u, v):
        return -distance(distance_name, u, v) / temperature

    values = []
    for i in range(b):
        candidates = []
        for r in range(b):
            for c in range(1, columns):
                if c == 1 and r != i and exclude_same_label and labels[r] == labels[i]:
                    continue
                candidates.append(logit(x[i, 0], x[r, c]))
        term = -(logit(x[i, 0], x[i, 1]) - logsumexp(candidates))
        if symmetric:
            backward = [
                logit(x[i, 1], x[j, 0])
                for j in range(b)
                if j == i or not (exclude_same_label and labels[j] == labels[i])
            ]
            term = (term - (logit(x[i, 1], x[i, 0]) - logsumexp(backward))) / 2
        values.append(term)
    return np.array(values)


def infonce_loss(
    embeddings, labels=None, *, sample_weight=None, reduction="sum_over_batch_size", **kw
):
    """Reduced as SPEC says: every query counts once (the default divides by ``B``)."""
    values = infonce_per_query(embeddings, labels, **kw)
    return reduce(values, np.ones(len(values)), sample_weight, reduction)


def numerical_gradient(fn, embeddings, step=1e-6):
    """Central differences of scalar ``fn(x)`` in float64 w.r.t. every entry of ``x``."""
    x = np.array(embeddings, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        moved = []
        for sign in (1.0, -1.0):
            y = x.copy()
            y[index] += sign * step
            moved.append(fn(y))
        grad[index] = (moved[0] - moved[1]) / (2 * step)
    return grad


def supcon_gradient(labels, embeddings, **kw):
    return numerical_gradient(lambda y: supcon_loss(labels, y, **kw), embeddings)


def infonce_gradient(embeddings, labels=None, **kw):
    return numerical_gradient(lambda y: infonce_loss(y, labels, **kw), embeddings)
