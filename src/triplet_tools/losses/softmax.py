"""In-batch softmax losses: ``SupConLoss`` and ``InfoNCELoss`` on the pair engine.

Both are one softmax per anchor over its candidates, in distance form (the logit of a pair
is ``-d / T``; for cosine ``(cos - 1) / T``, whose constant cancels in every softmax):

```
l_a = mean_{p in P(a)} d(a, p) / T + logsumexp_{j in C(a)} (-d(a, j) / T)
dl_a / dd(a, j) = (1[j in P(a)] / |P(a)| - softmax_{C(a)}(-d(a, .) / T)_j) / T
```

``SupConLoss`` takes the labelled batches of every loss here (``C(a)``: every reference but
the anchor itself). ``InfoNCELoss`` is the same row over (query, document) pairs: the
anchors are the queries, the references every document, and query ``i``'s one positive its
own document ``p_i``; its labels for the engine are made here (query ``i`` and ``p_i`` get
``i``, a hard negative ``-1``), and ``exclude_same_label`` removes, per anchor, the other
positive documents of its class from ``C(a)`` (``block.context``). The pair engine
(:mod:`triplet_tools.mining.engine`) runs both in blocks, so no ``B x M`` matrix is ever whole.
"""

from __future__ import annotations

import keras

from triplet_tools import _inputs, distributed, pair_rows
from triplet_tools._ops import ops, row_sum
from triplet_tools._validation import check_bool, check_number
from triplet_tools.losses import reduction as reduction_module
from triplet_tools.losses.pair import PairLoss
from triplet_tools.mining import engine
from triplet_tools.mining.slots import add_at, in_place_torch, positive_slots, take_at
from triplet_tools.pair_rows import RowValues, has_pairs, masked_logsumexp, masked_mean


def softmax_rows(block, temperature, exclusion=False, every_anchor_valid=False):
    """The row function of both losses (see the module docstring): ``RowScores`` with
    ``l_a`` and its slopes.

    ``C(a) = P(a) u N(a)``, minus, with ``exclusion``, the references ``j`` with
    ``excludable_j`` and ``user_j = user_a`` outside ``P(a)`` (``block.context`` holds the
    anchors' ``user`` ``(B,)``, the references' ``user`` ``(M,)`` and ``excludable`` as
    0 / 1 ``(M,)``). Valid iff ``P(a)`` is non-empty and, unless ``every_anchor_valid``,
    ``N(a)`` too (a row with no other candidate then gives 0).
    """
    d = block.distances
    positive = block.positive
    candidates = ops.logical_or(positive, block.negative)
    if exclusion:
        anchor_user, reference_user, excludable = block.context
        mine = ops.take(anchor_user, ops.maximum(block.rows, 0))
        excluded = ops.logical_and(
            ops.equal(reference_user[None, :], mine[:, None]), excludable[None, :] > 0
        )
        candidates = ops.logical_and(
            candidates, ops.logical_or(positive, ops.logical_not(excluded))
        )
    if every_anchor_valid:
        has_negative = block.rows >= 0
    else:
        has_negative = ops.any(block.negative, axis=1)
    if in_place_torch(d):
        return _torch_rows(block, temperature, candidates, has_negative)
    (lse,), e, (inverse,) = pair_rows.masked_exponentials(d / -temperature, [candidates])
    kept = ops.cast(positive, d.dtype)
    count = row_sum(kept)
    valid = ops.logical_and(count > 0, has_negative)
    valid_f = ops.cast(valid, d.dtype)
    share = 1 / ops.maximum(count, 1)
    mean_positive = row_sum(ops.where(positive, d, 0)) * share
    loss = ops.where(valid, mean_positive / temperature + ops.where(valid, lse, 0), 0)
    slopes = (kept * share[:, None] - e * inverse[:, None]) * (valid_f / temperature)[:, None]
    active = ops.cast(loss > 0, d.dtype) * valid_f
    return pair_rows.row_scores(block, loss, valid_f, valid, active, positive, slopes=slopes)


def _torch_rows(block, temperature, candidates, has_negative):
    """:func:`softmax_rows` on eager torch, in fewer passes over the ``(n, M)`` block: the
    log-sum-exp and the softmax in place, the positives gathered one slot at a time (a
    class's references, :func:`~triplet_tools.mining.slots.positive_slots`) instead of
    masked passes, and the slopes weighted here (``RowScores.weighted``)."""
    import torch

    d = block.distances
    logits = d / -temperature
    logits.masked_fill_(~candidates, -float("inf"))
    lse = torch.logsumexp(logits, dim=1)
    finite = torch.isfinite(lse)
    slopes = logits.sub_(torch.where(finite, lse, 0)[:, None]).exp_()  # the softmax
    slots, slot = positive_slots(block, block.positive, block.rows >= 0)
    columns, present = zip(*(slot(k) for k in range(int(slots)))) if int(slots) else ((), ())
    count = sum(present, torch.zeros_like(lse))
    valid = (count > 0) & has_negative & finite
    share = valid / torch.clamp(count, min=1)
    positive_sum = sum((p * take_at(d, c) for c, p in zip(columns, present)), torch.zeros_like(lse))
    loss = torch.where(valid, positive_sum * share / temperature + torch.where(finite, lse, 0), 0)
    scale = block.weights * valid / temperature
    slopes.mul_(-scale[:, None])
    for column, p in zip(columns, present):
        add_at(slopes, column, p * share * block.weights / temperature)
    valid_f = valid.to(d.dtype)
    active = (loss > 0).to(d.dtype) * valid_f
    return pair_rows.row_scores(
        block, loss, valid_f, valid, active, block.positive, slopes=slopes, weighted=True
    )


@keras.saving.register_keras_serializable(package="triplet_tools")
class SupConLoss(PairLoss):
    """Supervised contrastive loss (Khosla et al. 2020), in distance form.

    ```
    l_a = -(1/|P(a)|) sum_{p in P(a)} [-d(a, p)/T - logsumexp_{j != a}(-d(a, j)/T)]
        = mean_{P(a)} d(a, p)/T + logsumexp_{j != a}(-d(a, j)/T)   valid iff P(a), N(a) non-empty
    ```

    The sum runs over every reference but the anchor itself (the batch, a cross-batch
    memory, the global batch). The default reduction averages over valid anchors. Values
    and gradients equal pytorch-metric-learning 2.9's ``SupConLoss(temperature)`` (cosine;
    Euclidean via its ``LpDistance(normalize_embeddings=False)``).

    Args:
        temperature: ``T > 0`` (default 0.1).
        distance: default ``"cosine"``.
        name, reduction, **kwargs: as for :class:`~triplet_tools.losses.PairLoss`
            (``memory`` included).

    Example:

    >>> import numpy as np
    >>> loss = SupConLoss(temperature=1.0, distance="euclidean", reduction="none")
    >>> x = np.array([[0.0], [1.0], [1.0]], "float32")
    >>> # anchor 0: P = {1} at 1; 1 + log(e^-1 + e^-1) = log 2
    >>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
    0.6931

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    parameters = ("temperature",)

    def __init__(
        self,
        temperature=0.1,
        distance="cosine",
        name="SupConLoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        self.temperature = check_number(temperature, "temperature", positive=True)
        super().__init__(distance, name, reduction, **kwargs)

    def row(self, block):
        mean_positive = masked_mean(block.distances, block.positive) / self.temperature
        candidates = block.positive | block.negative
        lse = masked_logsumexp(block.distances / -self.temperature, candidates)
        valid = has_pairs(block)
        return RowValues(mean_positive + ops.where(valid, lse, 0), None, valid)

    def row_function(self):
        if not self.closed_form:
            return super().row_function()
        return lambda block: softmax_rows(block, self.temperature)


@keras.saving.register_keras_serializable(package="triplet_tools")
class InfoNCELoss(PairLoss):
    """InfoNCE over (query, document) pairs with in-batch negatives: sentence-transformers'
    ``MultipleNegativesRankingLoss`` (``scale = 1 / temperature``).

    ``y_pred`` is ``(B, 2 + h, D)``: column 0 the queries ``q_i``, column 1 each query's
    positive document ``p_i``, columns 2... its ``h >= 0`` hard negatives. The candidates
    ``C(i)`` of query ``i`` are every document of the batch (``B (1 + h)``):

    ```
    l_i = -[-d(q_i, p_i)/T - logsumexp_{c in C(i)}(-d(q_i, c)/T)]
    symmetric: (l_i + l'_i) / 2,   l'_i = -[-d(p_i, q_i)/T - logsumexp_{j}(-d(p_i, q_j)/T)]
    ```

    ``y_true`` is ignored (any value, or none: ``model.fit(x)`` without targets works)
    unless ``exclude_same_label=True``: then it holds ``(B,)`` class ids, and the positive
    document of another query of the same class is not a candidate of ``i`` (its hard
    negatives stay); likewise the other queries of its class in ``l'_i``. Every query
    counts once: the default reduction divides by ``B`` (the global batch under global
    mining, where the candidates are every replica's documents and queries).

    Args:
        temperature: ``T > 0`` (default 0.05, ``scale = 20``).
        distance: default ``"cosine"``.
        symmetric: add the document-to-query term (default ``False``).
        exclude_same_label: remove in-batch false negatives by class (default ``False``).
        name, reduction, **kwargs: as for :class:`~triplet_tools.losses.PairLoss`
            (``memory`` excepted).

    Example:

    >>> import numpy as np
    >>> loss = InfoNCELoss(temperature=1.0, distance="euclidean", reduction="none")
    >>> x = np.array([[[0.0], [1.0]], [[3.0], [2.0]]], "float32")  # 2 (query, positive)
    >>> # query 0: candidates 1 (its own, d = 1) and 2 (d = 2): 1 + log(e^-1 + e^-2)
    >>> [round(float(v), 4) for v in np.asarray(loss(None, x))]
    [0.3133, 0.3133]

    Reference:
        van den Oord et al., "Representation Learning with Contrastive Predictive
        Coding", 2018; Henderson et al., "Efficient Natural Language Response Suggestion
        for Smart Reply", 2017.
    """

    parameters = ("temperature", "symmetric", "exclude_same_label")

    def __init__(
        self,
        temperature=0.05,
        distance="cosine",
        symmetric=False,
        exclude_same_label=False,
        name="InfoNCELoss",
        reduction="sum_over_batch_size",
        **kwargs,
    ):
        if kwargs.get("memory") is not None:
            raise ValueError(
                "InfoNCELoss takes no memory (its candidates are the batch's documents); "
                f"received memory={kwargs['memory']!r}."
            )
        self.temperature = check_number(temperature, "temperature", positive=True)
        self.symmetric = check_bool(symmetric, "symmetric")
        self.exclude_same_label = check_bool(exclude_same_label, "exclude_same_label")
        super().__init__(distance, name, reduction, **kwargs)

    def row_function(self):
        return lambda block: softmax_rows(
            block, self.temperature, exclusion=self.exclude_same_label, every_anchor_valid=True
        )

    def _inputs(self, y_true, y_pred):
        """``(labels (B,) or None, embeddings (B, 2 + h, D))`` in the compute dtype."""
        embeddings = ops.convert_to_tensor(y_pred)
        shape = tuple(embeddings.shape)
        if len(shape) != 3 or shape[1] is None or shape[1] < 2 or shape[2] == 0:
            raise ValueError(
                "y_pred must be (batch_size, 2 + h, dim): the queries, their positive "
                f"documents and h >= 0 hard negatives each; received y_pred.shape={shape}."
            )
        dtype = keras.backend.standardize_dtype(embeddings.dtype)
        if "float" not in dtype:
            raise ValueError(f"y_pred must be floating-point embeddings; received dtype {dtype}.")
        wide = "float64" in (self.dtype, dtype)
        embeddings = ops.cast(embeddings, "float64" if wide else "float32")
        if not self.exclude_same_label:
            return None, embeddings
        if y_true is None:
            raise ValueError(
                "exclude_same_label=True needs y_true: (batch_size,) class ids of the "
                "queries; received none."
            )
        labels = _inputs.prepare_labels(y_true)
        if len(labels.shape) == 2 and labels.shape[1] == 1:
            labels = ops.reshape(labels, (-1,))
        if len(labels.shape) != 1 or (
            None not in (labels.shape[0], shape[0]) and labels.shape[0] != shape[0]
        ):
            raise ValueError(
                "with exclude_same_label=True, y_true must be (batch_size,) class ids; "
                f"received y_true.shape={tuple(labels.shape)} and y_pred.shape={shape}."
            )
        return labels, embeddings

    def _direction(
        self, anchors, anchor_ids, anchor_user, references, reference_ids, users, summed
    ):
        """One direction's :class:`~triplet_tools.mining.engine.AnchorTriplets`: anchors against
        references, anchor ``i``'s one positive the reference of its id. ``users`` is
        ``(reference class ids, excludable 0 / 1)``, used with ``exclude_same_label``."""
        context: tuple = ()
        if self.exclude_same_label:
            context = (anchor_user, *users)
        mode = engine.choose_mode(self.distance, summed)
        return lambda weights: engine.score_pairs(
            anchors, anchor_ids, references, reference_ids, None, None,
            distance=self.distance, row_function=self.row_function(), mode=mode,
            weights=weights, rows=self.block_size, context=context, statistics=False,
        )  # fmt: skip

    def _score_queries(self, labels, embeddings, weights, group, summed):
        """``(per-query loss (B,), carrier or None)``; ``summed``: only the sum weighted by
        ``weights`` ``(B,)`` is differentiated, else every query's loss keeps its own
        gradient."""
        rows, columns, dim = ops.shape(embeddings)
        features = self.distance.mining_features(ops.reshape(embeddings, (-1, dim)))
        features = ops.reshape(features, (rows, columns, dim))
        queries, documents = features[:, 0], features[:, 1:]
        all_queries, all_documents, all_labels = queries, documents, labels
        ids = ops.arange(rows, dtype="int32")
        if group is not None:
            all_documents = group.gather(documents)
            all_queries = group.gather(queries) if self.symmetric else queries
            all_labels = None if labels is None else group.gather_labels(labels)
            ids = distributed.replica_positions(group, rows)
        total = ops.shape(all_documents)[0]
        column = ops.tile(ops.arange(columns - 1, dtype="int32"), (total,))
        owner = ops.repeat(ops.arange(total, dtype="int32"), columns - 1)
        user = None if labels is None else ops.repeat(all_labels, columns - 1)
        forward = self._direction(
            queries,
            ids,
            labels,
            ops.reshape(all_documents, (-1, dim)),
            ops.where(column == 0, owner, -1),
            (user, ops.cast(column == 0, "int32")),
            summed,
        )
        halves = 2 if self.symmetric else 1
        shares = None if weights is None else weights / halves
        scores = [forward(shares)]
        if self.symmetric:
            backward = self._direction(
                documents[:, 0],
                ids,
                labels,
                all_queries,
                ops.arange(total, dtype="int32"),
                (all_labels, ops.ones((total,), "int32")),
                summed,
            )
            scores.append(backward(shares))
        loss = scores[0].loss if halves == 1 else scores[0].loss + scores[1].loss
        carriers = [s.carrier for s in scores if s.carrier is not None]
        return loss / halves, (sum(carriers[1:], carriers[0]) if carriers else None)

    def _reduce(self, y_true, y_pred, sample_weight, reduction):
        labels, embeddings = self._inputs(y_true, y_pred)
        rows = embeddings.shape[0]
        weights = _inputs.sample_weights(sample_weight, rows, embeddings.dtype)
        if rows == 0:
            nothing = ops.sum(embeddings, axis=(1, 2)) * 0
            return reduction_module.reduce(nothing, nothing, weights, reduction)
        group = distributed.current_replica_group() if self.global_mining else None
        summed = reduction not in (None, "none")
        engine_weights = weights
        if weights is None:
            engine_weights = ops.ones((ops.shape(embeddings)[0],), embeddings.dtype)
        slices = 1 if group is not None else distributed.data_parallel_replicas()
        if self.global_mining or slices == 1:
            parts = [self._score_queries(labels, embeddings, engine_weights, group, summed)]
        else:
            parts = self._slices(labels, embeddings, engine_weights, slices, summed)
        loss = ops.concatenate([p[0] for p in parts], axis=0) if len(parts) > 1 else parts[0][0]
        carriers = [p[1] for p in parts if p[1] is not None]
        return reduction_module.reduce(
            loss,
            ops.ones_like(ops.stop_gradient(loss)),
            weights,
            reduction,
            sum_across=None if group is None else group.sum,
            scale=1.0 if group is None else group.loss_scale,
            mean_scale=1.0 if group is not None else distributed.per_replica_loss_scale(),
            carrier=sum(carriers[1:], carriers[0]) if carriers else None,
        )

    def _slices(self, labels, embeddings, weights, slices, summed):
        """``global_mining=False`` under JAX ``DataParallel``: each device slice alone."""
        rows = embeddings.shape[0]
        step = distributed.rows_per_slice(rows, slices)
        return [
            self._score_queries(
                None if labels is None else labels[i : i + step],
                embeddings[i : i + step],
                weights[i : i + step],
                None,
                summed,
            )
            for i in range(0, rows, step)
        ]

    def call(self, y_true=None, y_pred=None):
        """Per-query losses ``(B,)``, before weighting and reduction."""
        return self._reduce(y_true, y_pred, None, "none")

    def __call__(self, y_true=None, y_pred=None, sample_weight=None):
        """The reduced loss. ``y_true`` may be ``None`` (or anything) unless
        ``exclude_same_label``; it is never converted to a float tensor."""
        if y_pred is None:
            raise ValueError("InfoNCELoss needs y_pred: (batch_size, 2 + h, dim) embeddings.")
        with keras.name_scope(self.name):
            return ops.cast(self._reduce(y_true, y_pred, sample_weight, self.reduction), self.dtype)

    def anchor_triplets(self, *args, **kwargs):
        raise NotImplementedError("InfoNCELoss scores (query, document) pairs, not anchors.")

    def mine_batch(self, *args, **kwargs):
        raise NotImplementedError("InfoNCELoss scores (query, document) pairs, not anchors.")

    def get_config(self):
        config = super().get_config()
        config.pop("memory", None)
        return config
