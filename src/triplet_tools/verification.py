"""Verification metrics (face verification's ROC) over every pair, exact, without the N² pairs.

A pair is accepted at threshold ``t`` iff its distance ``d <= t``; genuine pairs share a label,
impostor pairs do not. ``FAR(t)`` is the share of impostors accepted, ``TAR(t)`` the share of
genuines accepted:

```
roc_auc     = P(d_genuine < d_impostor) + P(d_genuine = d_impostor) / 2
tar@far=F   = max { TAR(t) : FAR(t) <= F }     at the largest pair distance t with FAR(t) <= F
eer         = where the polyline through the ROC points (FAR, 1 - TAR) crosses FAR = 1 - TAR
```

The exact counting in O(block x N + genuine pairs) memory is in ``_pair_counts``.
"""

import numpy as np

from triplet_tools._metrics_callback import EmbeddingMetricsCallback
from triplet_tools._pair_counts import (
    _STEP,
    _check_pair_counts,
    _Codec,
    _count,
    _first_pass,
    _Pairs,
)


def verification_metrics(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    distance="cosine",
    far=(1e-4, 1e-3, 1e-2),
    *,
    block_size=None,
):
    """ROC AUC, equal error rate and TAR at fixed FARs over every pair, exactly.

    ```
    FAR(t) = #{impostor pairs with d <= t} / #impostor pairs
    TAR(t) = #{genuine pairs with d <= t} / #genuine pairs
    roc_auc = P(d_gen < d_imp) + P(d_gen = d_imp) / 2
    tar@far=F = max TAR(t) over t with FAR(t) <= F,  threshold@far=F = the largest such
                pair distance t (-inf and TAR 0.0 when even the smallest distance has FAR > F)
    eer = FAR = 1 - TAR where the polyline through the ROC points (FAR, 1 - TAR) crosses it
    ```

    The pairs are every unordered pair ``i < j`` of ``embeddings`` (no reference set), or
    every (query, reference) pair. ``roc_auc`` is scikit-learn's ``roc_auc_score`` with score
    ``-d`` and the ROC points are those of ``roc_curve(..., drop_intermediate=False)``, but
    the ``N²`` pairs are never materialised: peak memory is O(block x N + genuine pairs).
    ``threshold@far=F`` is conservative: the FAR at it never exceeds ``F`` (insightface reads
    the ROC point nearest to ``F`` instead, which may lie above it).

    Args:
        embeddings: ``(N, D)`` embeddings (NumPy array or backend tensor, any float dtype;
            compared in float32, or float64 for float64 input).
        labels: ``(N,)`` or ``(N, 1)`` identity labels (integers, strings or finite floats).
        ref_embeddings: optional ``(M, D)`` reference embeddings; then the pairs are every
            (query, reference) pair.
        ref_labels: ``(M,)`` labels of the references; required with ``ref_embeddings``.
        distance: a name from ``triplet_tools.distances.DISTANCE_NAMES`` (default
            ``"cosine"``) or a ``triplet_tools.distances.Distance``.
        far: a float or a sequence of false-accept rates in (0, 1) (default
            ``(1e-4, 1e-3, 1e-2)``).
        block_size: rows of distances computed at once (default: ~16M distances a block).

    Returns:
        A dict of Python floats: ``roc_auc``, ``eer``, and ``tar@far=F`` and
        ``threshold@far=F`` for every ``F`` (formatted ``f"{F:g}"``).

    Raises:
        ValueError: for embeddings that are not 2-D or not finite, labels of the wrong
            length, a bad ``far`` or ``distance``, or when there is no genuine or no
            impostor pair.

    Example: two identities on a line; the pairs (0, 1) and (2, 3) are genuine at
    distances 0.1 and 0.3, the four impostors lie at 0.9 and beyond, so every genuine
    is accepted before any impostor.

    >>> import numpy as np
    >>> x = np.array([[0.0], [0.1], [1.0], [1.3]], "float32")
    >>> metrics = verification_metrics(x, [0, 0, 1, 1], distance="euclidean", far=0.25)
    >>> {name: round(value, 3) for name, value in metrics.items()}
    {'roc_auc': 1.0, 'eer': 0.0, 'tar@far=0.25': 1.0, 'threshold@far=0.25': 0.9}
    """
    targets = _check_far(far)
    pairs = _Pairs(embeddings, labels, ref_embeddings, ref_labels, distance, block_size)
    counts = _count(pairs, targets)
    metrics = {"roc_auc": counts.auc, "eer": counts.eer}
    for target in targets:
        tar, threshold = counts.tar_at_far[target]
        metrics[f"tar@far={target:g}"] = tar
        metrics[f"threshold@far={target:g}"] = threshold
    return metrics


def verification_roc(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    distance="cosine",
    *,
    block_size=None,
):
    """Exact points of the ROC at up to 65,536 thresholds, for plotting, in one pass.

    The thresholds are the ends of the buckets that share the top 16 bits of the distance's
    float (about 128 per octave of distance for float32, 16 for float64); each point is
    ``(FAR(t), TAR(t))`` exactly, as in :func:`verification_metrics`, so the polyline
    through them is the ROC seen at that resolution. Memory O(block x N + genuine pairs).

    Args:
        embeddings, labels, ref_embeddings, ref_labels, distance, block_size: as in
            :func:`verification_metrics`.

    Returns:
        A dict of 1-D NumPy arrays of equal length, in increasing threshold: ``threshold``
        (float64), ``far`` and ``tar`` (float64), starting with the point ``(0, 0)`` at
        threshold ``-inf`` and ending at ``(1, 1)``.

    Example:

    >>> import numpy as np
    >>> x = np.array([[0.0], [0.1], [1.0], [1.3]], "float32")
    >>> roc = verification_roc(x, [0, 0, 1, 1], distance="euclidean")
    >>> roc["far"].tolist(), roc["tar"].tolist()
    ([0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    """
    pairs = _Pairs(embeddings, labels, ref_embeddings, ref_labels, distance, block_size)
    genuine, histogram = _first_pass(pairs)
    impostors = int(histogram.sum())
    _check_pair_counts(len(genuine), impostors)
    codec = _Codec(genuine.dtype)
    genuine_keys = codec.keys(genuine)
    edges = np.arange(1, 2**_STEP + 1, dtype=np.uint64) << np.uint64(codec.bits - _STEP)
    ends = (edges - np.uint64(1)).astype(codec.unsigned)  # the last key of each bucket
    imp_le = np.cumsum(histogram)
    gen_le = np.searchsorted(genuine_keys, ends, side="right")
    changed = np.flatnonzero(np.diff(np.concatenate([[0], imp_le])) + _bucket_sizes(gen_le))
    thresholds = np.array([codec.value(int(ends[i])) for i in changed], np.float64)
    return {
        "threshold": np.concatenate([[-np.inf], thresholds]),
        "far": np.concatenate([[0.0], imp_le[changed] / impostors]),
        "tar": np.concatenate([[0.0], gen_le[changed] / len(genuine)]),
    }


def _bucket_sizes(cumulative):
    return np.diff(np.concatenate([[0], cumulative]))


def _check_far(far):
    try:
        values = (float(far),) if np.ndim(far) == 0 else tuple(float(f) for f in far)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(0.0 < f < 1.0 for f in values):
        raise ValueError(
            f"far must be a float or a non-empty sequence of floats in (0, 1); received {far!r}."
        )
    return tuple(dict.fromkeys(values))


def verification_metric_names(far=(1e-4, 1e-3, 1e-2)):
    """The keys of :func:`verification_metrics` for target FARs ``far``, in order.

    Example:

    >>> verification_metric_names((1e-3, 0.01))
    ['roc_auc', 'eer', 'tar@far=0.001', 'threshold@far=0.001', 'tar@far=0.01', 'threshold@far=0.01']
    """
    names = ["roc_auc", "eer"]
    for target in _check_far(far):
        names += [f"tar@far={target:g}", f"threshold@far={target:g}"]
    return names


class VerificationMetricsCallback(EmbeddingMetricsCallback):
    """Computes :func:`verification_metrics` on held-out data every ``every`` epochs and logs them.

    Like :class:`triplet_tools.evaluation.RetrievalMetricsCallback`: at the end of a chosen
    epoch the model embeds ``x`` (and ``ref_x``) with ``model.predict`` and the metrics go
    into that epoch's ``logs`` as ``val_roc_auc``, ``val_eer``, ``val_tar@far=F`` and
    ``val_threshold@far=F``. List it **before** ``EarlyStopping`` and ``ModelCheckpoint``,
    with ``mode="max"`` for ``val_roc_auc`` and ``val_tar@far=F``, ``mode="min"`` for
    ``val_eer``::

        callbacks = [
            VerificationMetricsCallback(x_val, y_val, far=(1e-3,)),
            keras.callbacks.EarlyStopping("val_tar@far=0.001", mode="max", patience=5),
        ]

    Epochs that are skipped (``every > 1``) carry no value; the last epoch is always computed.

    Args:
        x: ``(N, ...)`` model inputs (an array or tensor, or a dict or list of them).
        y: ``(N,)`` identity labels.
        ref_x, ref_y: optional reference set; default: every pair within ``x``.
        every: compute every this many epochs (default 1).
        distance: as in :func:`verification_metrics` (default ``"cosine"``).
        far: target false-accept rates (default ``(1e-4, 1e-3, 1e-2)``).
        batch_size: the ``predict`` batch size (default 256).
        prefix: prepended to every metric name in ``logs`` (default ``"val_"``).
        log_metrics: the names (from :func:`verification_metric_names`) written into
            ``logs``; default all of them.

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
    >>> callback = VerificationMetricsCallback(x, y, far=0.1)
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    >>> len(history.history["val_tar@far=0.1"]), callback.epochs
    (2, [0, 1])
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
        far=(1e-4, 1e-3, 1e-2),
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
        self.far = _check_far(far)
        self._set_names(verification_metric_names(self.far), log_metrics)

    def _compute(self, embeddings, references):
        return verification_metrics(
            embeddings, self.y, references, self.ref_y, distance=self.distance, far=self.far
        )


__all__ = [
    "VerificationMetricsCallback",
    "verification_metric_names",
    "verification_metrics",
    "verification_roc",
]
