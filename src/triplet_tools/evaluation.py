"""Retrieval metrics (Musgrave et al. 2020) and a Keras callback that logs them during training.

For every query ``q`` the references are ranked by distance; ``R`` is the number of references
that share the query's label and ``rel(i)`` is 1 when the reference at rank ``i`` does:

```
precision@1 = rel(1)
recall@K    = 1 if rel(i) = 1 for some i <= K, else 0
r_precision = (1/R) sum_{i <= R} rel(i)
map@r       = (1/R) sum_{i <= R} P(i) rel(i),      P(i) = (1/i) sum_{j <= i} rel(j)
map         = (1/R) sum_{i} P(i) rel(i)           (the whole ranking)
```

each averaged over the queries. Without a separate reference set, every point is a query
and the other points are its references (leave-one-out); a query whose class has no other
member (``R = 0``) is skipped. Ranking ties are broken by reference index (the lower index
ranks first), so the result is exact and reproducible.

The neighbours are exact. Distances are computed in blocks of queries against all
references, so peak memory is O(block x N) and never O(N^2): 100,000 x 100,000 works in
well under a gigabyte. Only the first ``max(R, K)`` neighbours of each query are ranked by
index; ``map`` sorts each block's rows once. Camera groups (re-identification) are in
:func:`retrieval_metrics`; the verification ROC is in :mod:`triplet_tools.verification`.
"""

import numpy as np
from keras import ops

from triplet_tools import _ranking
from triplet_tools import distances as distances_module
from triplet_tools._evaluation_checks import check_cutoffs, check_finite, check_groups, check_sets
from triplet_tools._metrics_callback import EmbeddingMetricsCallback
from triplet_tools._topk import nearest as _nearest
from triplet_tools._topk import query_block_rows
from triplet_tools._validation import check_int

# Verification lives in its own module; SPEC names it here.
from triplet_tools.verification import (
    VerificationMetricsCallback,
    verification_metric_names,
    verification_metrics,
    verification_roc,
)


def retrieval_metrics(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    distance="cosine",
    k=(1, 5, 10),
    query_groups=None,
    ref_groups=None,
    *,
    block_size=None,
):
    """Exact nearest-neighbour retrieval metrics of an embedding.

    ```
    precision@1 = mean_q rel_q(1)
    recall@K    = mean_q [any rel_q(i) for i <= K]          (the CMC curve at rank K)
    r_precision = mean_q (1/R_q) sum_{i <= R_q} rel_q(i)
    map@r       = mean_q (1/R_q) sum_{i <= R_q} P_q(i) rel_q(i)
    map         = mean_q (1/R_q) sum_{i <= M_q} P_q(i) rel_q(i)   (the full ranking)
    ```

    ``R_q`` is the number of references with the query's label, ``rel_q(i)`` whether the
    ``i``-th nearest reference has it, ``P_q(i)`` the share of relevant references among
    the first ``i`` and ``M_q`` the length of the query's ranking. Queries with ``R_q = 0``
    are skipped. Ties in distance are ranked by reference index (lower first).

    With groups (camera ids: person and vehicle re-identification), a reference with the
    query's label **and** the query's group is removed from that query's ranking (the
    Market-1501 protocol): it is neither relevant nor ranked.

    Args:
        embeddings: ``(N, D)`` query embeddings (NumPy array or backend tensor; any float
            dtype, bfloat16 and float16 included, compared in float32 or float64).
        labels: ``(N,)`` or ``(N, 1)`` class labels of the queries (integers, strings, or
            finite floats).
        ref_embeddings: optional ``(M, D)`` reference embeddings. Default ``None``: leave-one-
            out, every query is ranked against the other ``N - 1`` queries.
        ref_labels: ``(M,)`` labels of the references; required with ``ref_embeddings``.
        distance: a name from ``triplet_tools.distances.DISTANCE_NAMES`` (default
            ``"cosine"``) or a ``triplet_tools.distances.Distance``; its ``pairwise`` ranks.
        k: an int or a sequence of positive ints, the cut-offs of ``recall@K``
            (default ``(1, 5, 10)``).
        query_groups: optional ``(N,)`` group of each query (e.g. its camera id; integers
            or strings). Leave-one-out needs only this one.
        ref_groups: ``(M,)`` groups of the references; with ``ref_embeddings``, give both
            group arrays or neither.
        block_size: queries compared at once (default: as many as fit ~4M distances).

    Returns:
        A dict of Python floats: ``precision@1``, ``recall@K`` for every ``K``,
        ``r_precision``, ``map@r`` and ``map``.

    Raises:
        ValueError: for embeddings that are not 2-D, not finite or of different widths,
            labels whose length differs from the embeddings' or that hold NaN or infinity
            (a NaN label is no class), ``ref_embeddings`` without
            ``ref_labels`` (or the reverse), group arrays of the wrong length (or one without
            the other with a reference set), a bad ``k`` or ``distance``, or when no query
            has a relevant reference.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.0], [0.1], [1.0], [1.3]], "float32")
    >>> metrics = retrieval_metrics(x, [0, 0, 1, 1], distance="euclidean", k=(1,))
    >>> {name: round(value, 3) for name, value in metrics.items()}
    {'precision@1': 1.0, 'recall@1': 1.0, 'r_precision': 1.0, 'map@r': 1.0, 'map': 1.0}

    With cameras: points 0 and 1 (class 0, camera 0) no longer find each other; each finds
    point 3 (class 1) first and point 2 (class 0, camera 1) second, AP 1/2; point 2 ranks
    3, 1, 0 (AP (1/2 + 2/3) / 2 = 7/12, map@r 1/4); point 3 has no relevant reference:

    >>> x = np.array([[0.0], [0.1], [0.3], [0.2]], "float32")
    >>> metrics = retrieval_metrics(x, [0, 0, 0, 1], distance="euclidean", k=(1,),
    ...                             query_groups=[0, 0, 1, 1])
    >>> {name: round(value, 4) for name, value in metrics.items()}
    {'precision@1': 0.0, 'recall@1': 0.0, 'r_precision': 0.1667, 'map@r': 0.0833, 'map': 0.5278}

    Reference:
        Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020.
    """
    queries, query_labels, references, reference_labels = check_sets(
        embeddings, labels, ref_embeddings, ref_labels
    )
    cutoffs = check_cutoffs(k)
    distance = distances_module.get(distance)
    leave_one_out = references is None
    query_groups, ref_groups = check_groups(query_groups, ref_groups, queries, references)
    if leave_one_out:
        references, reference_labels, ref_groups = queries, query_labels, query_groups
    relevance = _ranking.Relevance(
        query_labels, reference_labels, query_groups, ref_groups, leave_one_out
    )
    relevant = relevance.counts()
    if not np.any(relevant):
        raise ValueError(
            "No query has a relevant reference: every query's class has no other member "
            f"among the {len(reference_labels)} references. Give at least two samples of a class."
        )
    block_size = check_int(block_size, "block_size", minimum=1, allow_none=True)
    rows = block_size or query_block_rows(len(queries), len(references), queries.shape[1], distance)

    reference_tensor = ops.convert_to_tensor(references)
    sums = dict.fromkeys(metric_names(cutoffs), 0.0)
    for start in range(0, len(queries), rows):
        stop = min(start + rows, len(queries))
        block = ops.convert_to_numpy(
            distance.pairwise(ops.convert_to_tensor(queries[start:stop]), reference_tensor)
        )
        check_finite(block, "distances", "(the embeddings are too large for this distance)")
        is_relevant, removed = relevance.block(start, stop)
        # +inf sorts after every finite distance, so a query is never its own neighbour and
        # a removed reference (same label and group) is never ranked before a relevant one.
        if removed is not None:
            np.putmask(block, removed, np.inf)
        if leave_one_out:
            block[np.arange(stop - start), np.arange(start, stop)] = np.inf
        counts = relevant[start:stop]
        kept = counts > 0
        depth = min(max(int(counts.max()), cutoffs[-1]), len(references) - leave_one_out)
        ranked = _nearest(block[kept], depth)
        hits = np.take_along_axis(is_relevant[kept], ranked, axis=1)
        _accumulate(sums, hits, counts[kept], cutoffs)
        sums["map"] += _ranking.average_precision_sum(block[kept], is_relevant[kept])
    queried = int(np.count_nonzero(relevant))
    return {name: total / queried for name, total in sums.items()}


def metric_names(k=(1, 5, 10)):
    """The keys of :func:`retrieval_metrics` for cut-offs ``k``, in order.

    Example:

    >>> metric_names((1, 5))
    ['precision@1', 'recall@1', 'recall@5', 'r_precision', 'map@r', 'map']
    """
    cutoffs = check_cutoffs(k)
    return ["precision@1", *(f"recall@{c}" for c in cutoffs), "r_precision", "map@r", "map"]


def _relevant_counts(query_labels, reference_labels, leave_one_out):
    """``R`` per query: references with its label (leave-one-out: the query itself excluded)."""
    classes, sizes = np.unique(reference_labels, return_counts=True)
    position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    counts = np.where(classes[position] == query_labels, sizes[position], 0)
    return counts - 1 if leave_one_out else counts


def _accumulate(sums, hits, relevant, cutoffs):
    """Adds the per-query metrics of one block (``hits``: (b, depth) bool) to ``sums``."""
    rank = np.arange(1, hits.shape[1] + 1)
    within_r = rank[None, :] <= relevant[:, None]
    precision_at = np.cumsum(hits, axis=1) / rank
    sums["precision@1"] += float(np.sum(hits[:, 0]))
    for cutoff in cutoffs:
        sums[f"recall@{cutoff}"] += float(np.sum(np.any(hits[:, :cutoff], axis=1)))
    sums["r_precision"] += float(np.sum(np.sum(hits & within_r, axis=1) / relevant))
    sums["map@r"] += float(np.sum(np.sum(precision_at * (hits & within_r), axis=1) / relevant))


class RetrievalMetricsCallback(EmbeddingMetricsCallback):
    """Computes :func:`retrieval_metrics` on held-out data every ``every`` epochs and logs them.

    At the end of a chosen epoch the model embeds ``x`` (and ``ref_x``) with
    ``model.predict``, computes the metrics and writes them into that epoch's ``logs`` as
    ``val_precision@1``, ``val_recall@K``, ``val_r_precision``, ``val_map@r`` and ``val_map``
    (with the default ``prefix="val_"``). Keras passes one ``logs`` dict to the callbacks in
    the order of the ``callbacks`` list and appends its own ``History`` and progress bar after
    them, so the values appear in ``model.fit(...).history`` and on the progress bar. For
    ``EarlyStopping`` and ``ModelCheckpoint`` to see them, list this callback **before**
    them and pass ``mode="max"`` (Keras cannot tell whether ``val_map@r`` should rise)::

        callbacks = [
            RetrievalMetricsCallback(x_val, y_val),
            keras.callbacks.EarlyStopping("val_map@r", mode="max", patience=5),
            keras.callbacks.ModelCheckpoint("best.keras", monitor="val_map@r", mode="max",
                                            save_best_only=True),
        ]

    Epochs that are skipped (``every > 1``) carry no value: ``History`` then lists only
    the computed epochs (``self.epochs`` says which), and ``EarlyStopping`` ignores the
    others. The last epoch is always computed.

    Cost per computed epoch: one ``predict`` over ``x`` plus the exact search, O(N^2 D) for
    ``N`` validation points (about a second for N = 10,000 on a laptop CPU).

    Args:
        x: ``(N, ...)`` model inputs of the queries: an array or tensor, or a dict (or list)
            of them for a model with several inputs. Float inputs must be finite (checked here).
        y: ``(N,)`` class labels of the queries.
        ref_x, ref_y: optional reference set (model inputs and labels); default: leave-one-
            out within ``x``.
        every: compute every this many epochs (default 1).
        distance: as in :func:`retrieval_metrics` (default ``"cosine"``).
        k: recall cut-offs (default ``(1, 5, 10)``).
        batch_size: the ``predict`` batch size (default 256).
        prefix: prepended to every metric name in ``logs`` (default ``"val_"``).
        log_metrics: the names (from :func:`metric_names`) written into ``logs``; default
            all of them. Fewer keep the progress bar short; ``history`` keeps them all.

    Attributes:
        epochs: the 0-based epochs at which the metrics were computed.
        history: a dict from metric name (without the prefix) to its values at ``epochs``.

    Example:

    >>> import keras, numpy as np
    >>> from triplet_tools import TripletLoss
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = np.arange(64) % 4
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile("adam", TripletLoss())
    >>> history = model.fit(x, y, epochs=2, verbose=0,
    ...                     callbacks=[RetrievalMetricsCallback(x, y)])
    >>> len(history.history["val_map@r"])
    2
    """

    def __init__(
        self,
        x,
        y,
        ref_x=None,
        ref_y=None,
        *,
        every=1,
        distance="cosine",
        k=(1, 5, 10),
        batch_size=256,
        prefix="val_",
        log_metrics=None,
    ):
        super().__init__(
            x,
            y,
            ref_x,
            ref_y,
            every=every,
            distance=distance,
            batch_size=batch_size,
            prefix=prefix,
        )
        counts = _relevant_counts(self.y, self.y if ref_x is None else self.ref_y, ref_x is None)
        if not np.any(counts):
            raise ValueError(
                "No query in x has a relevant reference: give at least two "
                "samples of a class (or a reference set that holds its class)."
            )
        self.k = check_cutoffs(k)
        self._set_names(metric_names(self.k), log_metrics)

    def _compute(self, embeddings, references):
        return retrieval_metrics(
            embeddings, self.y, references, self.ref_y, distance=self.distance, k=self.k
        )


# In the order of the API page (docs/api/evaluation.md orders by __all__).
__all__ = [
    "RetrievalMetricsCallback",
    "VerificationMetricsCallback",
    "retrieval_metrics",
    "metric_names",
    "verification_metric_names",
    "verification_metrics",
    "verification_roc",
]
