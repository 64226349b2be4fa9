"""Row functions for the pair engine: what a pair loss writes, and the tools it writes with.

The pair engine (:mod:`triplet_tools.mining.engine`) hands a row function one
:class:`PairBlock` at a time: ``n`` anchors against all ``M`` references, their ``(n, M)``
distances and the masks ``P(a)`` (positives) and ``N(a)`` (negatives). A pair loss states
each anchor's value from that block and nothing else:

```
l_a = f(d(a, .), P(a), N(a); the loss's arguments)          a row function: block -> (n,)
```

and the engine differentiates it per block (:func:`with_slopes`: the slopes
``W_aj = dl_a / dd(a, j)`` by the backend's autodiff inside the block, so memory stays
``O(B*D + block*M)``). A built-in loss may add hand-derived slopes as a faster path; the
tests check them against the autodiff ones. Rules for a row function:

* no gradient leaves it except through ``block.distances`` (the masks are mining);
* a value of an anchor without positives or negatives is made finite (``ops.where``)
  before any nonlinearity, so that its gradient is 0, not NaN;
* :func:`masked_logsumexp` and :func:`masked_mean` are the usual reductions over a mask.

Example, a margin-based contrastive loss in four lines:

>>> import numpy as np
>>> from keras import ops
>>> from triplet_tools.losses import PairLoss
>>> class Contrastive(PairLoss):
...     def row(self, block):
...         d = block.distances
...         pull = ops.where(block.positive, ops.square(d), 0)
...         push = ops.where(block.negative, ops.square(ops.relu(1.0 - d)), 0)
...         return ops.sum(pull + push, axis=1)
>>> loss = Contrastive(distance="euclidean", name="contrastive", reduction="none")
>>> x = np.array([[0.0], [0.5], [0.75]], "float32")
>>> # anchor 0: 0.5^2 + (1 - 0.75)^2 = 0.3125
>>> round(float(np.asarray(loss([0, 0, 1], x))[0]), 4)
0.3125
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras

from triplet_tools._ops import ops, row_sum

_INF = float("inf")


class PairBlock(NamedTuple):
    """What a row function sees for a block of ``n`` anchors.

    Attributes:
        distances: ``(n, M)`` ``d(a, j)``, without gradient.
        positive: ``(n, M)`` bool, ``j in P(a)``.
        negative: ``(n, M)`` bool, ``j in N(a)``.
        anchors: ``(n, D)`` anchor features, without gradient.
        rows: ``(n,)`` int32 index of each anchor in the batch (padding rows: ``-1``).
        context: the tensors passed to the engine as ``context``.
        reference_order: ``(M,)`` int32 reference indices sorted by label, so that
            ``reference_order[same_start + k]``, ``k < same_count``, are the references of
            the anchor's class (its positives, itself and masked rows included).
        same_start, same_count: ``(n,)`` int32, where the anchor's class starts in that
            order and how many references it has.
        references: ``(M, D)`` reference features (non-finite rows zeroed), no gradient.
        weights: ``(n,)`` the anchors' weights ``w_a`` (0 for padding rows).
        form: the distance's ``ProductForm`` in the products mode, else ``None``: then a
            row function may pull its units back itself (:func:`pull_back_units`).
        statistics: whether the mean positive / negative distances are wanted.
        terms: ``(n, M)`` each reference's own term ``T_j`` (``PairLoss.reference_term``:
            a value of the reference's row, such as lifted structure's log-sum-exp over its
            negatives), the same in every row of the block, without gradient; ``None`` for
            a loss without them.
    """

    distances: Any
    positive: Any
    negative: Any
    anchors: Any
    rows: Any
    context: tuple = ()
    reference_order: Any = None
    same_start: Any = None
    same_count: Any = None
    references: Any = None
    weights: Any = None
    form: Any = None
    statistics: bool = True
    terms: Any = None


class RowScores(NamedTuple):
    """What the engine takes from a row function for its block of ``n`` anchors (no
    gradient anywhere).

    Attributes:
        loss: ``(n,)`` ``L_a`` (0 for an invalid anchor).
        count: ``(n,)`` ``c_a``, the anchor's counted units.
        valid: ``(n,)`` bool.
        active: ``(n,)`` the anchor's units with a positive loss.
        positive_distance, negative_distance: ``(n,)`` mean ``d(a, p)`` / ``d(a, n)`` of the
            anchor's units (statistics; zeros when ``block.statistics`` is off).
        slopes: ``(n, M)`` ``dL_a / dd(a, j)``, or ``None``.
        anchor_gradient, reference_gradient: ``(n, D)`` and ``(M, D)`` gradients of
            ``sum_a w_a L_a`` that the row function pulled back itself (products mode
            only), or ``None``.
        weighted: ``slopes`` already hold the anchors' weights (the engine multiplies
            them by ``block.weights`` otherwise).
        term_slopes: ``(n, M)`` ``dL_a / dT_j`` in the references' terms ``block.terms``,
            or ``None`` (linearized mode only).
    """

    loss: Any
    count: Any
    valid: Any
    active: Any
    positive_distance: Any
    negative_distance: Any
    slopes: Any = None
    anchor_gradient: Any = None
    reference_gradient: Any = None
    weighted: bool = False
    term_slopes: Any = None


class RowValues(NamedTuple):
    """What a value-only row function may return instead of its ``(n,)`` losses alone.

    Attributes:
        loss: ``(n,)`` ``l_a``, differentiable in ``block.distances``.
        count: ``(n,)`` ``c_a`` (default: 1 for a valid anchor).
        valid: ``(n,)`` bool (default: :func:`has_pairs`).
    """

    loss: Any
    count: Any = None
    valid: Any = None


def has_pairs(block):
    """``(n,)`` bool: the anchor has a positive and a negative among the references."""
    return ops.logical_and(ops.any(block.positive, axis=1), ops.any(block.negative, axis=1))


def with_slopes(row):
    """A value-only row function (``PairBlock -> (n,)`` or :class:`RowValues`) as one the
    engine runs (``PairBlock -> RowScores``), its slopes by autodiff within the block.

    ```
    W_aj = d l_a / d d(a, j)      (0 on invalid anchors)
    L_a  = l_a on valid anchors, else 0;   c_a = count (1) on valid anchors, else 0
    ```

    The derivative is the backend's own (``jax.vjp``, ``tf.GradientTape``,
    ``torch.autograd.grad``) of ``sum_a l_a`` in the block's distances, taken inside the
    block, so nothing of size ``n x M`` outlives it and it works under ``jit_compile``,
    ``jax.jit`` and in graph mode. With the references' terms (``block.terms``, ``(n,
    M)``) it also returns ``dl_a / dT_j`` (``RowScores.term_slopes``).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = ops.convert_to_tensor(np.array([[0.0, 1.0, 2.0]], "float32"))
    >>> block = PairBlock(d, d < 1.5, d > 1.5, None, None)
    >>> scores = with_slopes(lambda b: ops.sum(ops.square(b.distances), axis=1))(block)
    >>> ops.convert_to_numpy(scores.loss).tolist(), ops.convert_to_numpy(scores.slopes).tolist()
    ([5.0], [[0.0, 2.0, 4.0]])
    """

    def scored(block):
        def values(distances, *terms):
            found = row(block._replace(distances=distances, terms=terms[0] if terms else None))
            if not isinstance(found, RowValues):
                found = RowValues(found)
            valid = has_pairs(block) if found.valid is None else found.valid
            count = ops.ones_like(found.loss) if found.count is None else found.count
            return ops.where(valid, found.loss, 0), count, valid

        watched = [block.distances] + ([] if block.terms is None else [block.terms])
        (loss, count, valid), *slopes = value_and_slopes(values, *watched)
        valid_f = ops.cast(valid, loss.dtype)
        slopes = [ops.where(valid[:, None], s, 0) for s in slopes]
        active = ops.cast(loss > 0, loss.dtype) * valid_f
        return row_scores(
            block, loss, count * valid_f, valid, active, block.positive, slopes=slopes[0],
            term_slopes=slopes[1] if len(slopes) > 1 else None,
        )  # fmt: skip

    return scored


def value_and_slopes(values, *inputs):
    """``(values(*x), *(d sum(values(*x)[0]) / d x_i))`` at ``x = inputs``, by the
    backend's autodiff; no gradient reaches the caller. ``values`` returns a tuple whose
    first element is ``(n,)``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = ops.convert_to_tensor(np.array([[1.0, 2.0]], "float32"))
    >>> (value,), slopes = value_and_slopes(lambda x: (ops.sum(x * x, axis=1),), d)
    >>> ops.convert_to_numpy(slopes).tolist()
    [[2.0, 4.0]]
    """
    inputs = tuple(ops.stop_gradient(x) for x in inputs)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def split(*x):
            found = values(*x)
            return found[0], tuple(found[1:])

        first, pullback, rest = jax.vjp(split, *inputs, has_aux=True)
        return ((first, *rest), *pullback(ops.ones_like(first)))
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            for x in inputs:
                tape.watch(x)
            found = values(*inputs)
        slopes = tape.gradient(
            found[0], list(inputs), unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return (tuple(tf.stop_gradient(x) for x in found), *slopes)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            watched = [x.detach().requires_grad_(True) for x in inputs]
            found = values(*watched)
            if found[0].requires_grad:
                slopes = torch.autograd.grad(found[0].sum(), watched, allow_unused=True)
                slopes = [torch.zeros_like(w) if s is None else s for s, w in zip(slopes, watched)]
            else:
                slopes = [torch.zeros_like(w) for w in watched]
        return (tuple(x.detach() for x in found), *slopes)
    raise ValueError(f"The pair engine's autodiff needs jax, tensorflow or torch, not {backend}.")


def masked_logsumexp(values, mask):
    """``log sum_{j in mask(a)} exp(v_aj)`` per row, ``-inf`` for an empty mask; stable and
    with a finite gradient (0 on an empty row).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> v = np.array([[0.0, 1000.0], [1.0, 2.0]], "float32")
    >>> ops.convert_to_numpy(masked_logsumexp(v, np.array([[True, True], [False, False]]))).tolist()
    [1000.0, -inf]
    """
    values = ops.convert_to_tensor(values)
    peak = ops.stop_gradient(ops.max(ops.where(mask, values, -_INF), axis=1))
    peak = ops.where(ops.isfinite(peak), peak, ops.zeros_like(peak))
    total = row_sum(ops.where(mask, ops.exp(ops.where(mask, values - peak[:, None], 0)), 0))
    kept = total > 0
    safe = ops.where(kept, total, ops.ones_like(total))
    return ops.where(kept, ops.log(safe) + peak, -_INF)


def masked_exponentials(values, masks, peaks=None):
    """Stabilised log-sum-exps of one row over each of several disjoint masks, in one
    ``exp`` pass, with what their gradients need (for hand-derived slopes). No gradient
    flows through it.

    ```
    lse_k(a) = log sum_{j in mask_k(a)} exp(v_aj)        (-inf for an empty mask)
    e_aj     = exp(v_aj - peak_k(a))   for j in mask_k(a), 0 outside every mask
    softmax_k(a, j) = e_aj * inverse_k(a)      (= d lse_k / d v_aj on mask_k)
    ```

    Args:
        values: ``(n, M)``.
        masks: disjoint ``(n, M)`` bool masks.
        peaks: per mask, ``(n,)`` ``max_{mask_k(a)} v`` when the caller knows it (any
            finite value for an empty mask), or ``None`` to take the maxima here.

    Returns:
        ``(lses, e, inverses)``: a list of ``(n,)`` ``lse_k``, the ``(n, M)`` ``e``, and a
        list of ``(n,)`` ``1 / sum_{mask_k} e`` (0 for an empty mask).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> v = np.array([[0.0, 1000.0, 5.0], [1.0, 2.0, 3.0]], "float32")
    >>> m = np.array([[True, True, False], [False, False, False]])
    >>> (lse,), e, (inverse,) = masked_exponentials(v, [m])
    >>> ops.convert_to_numpy(lse).tolist(), ops.convert_to_numpy(e)[0].tolist()
    ([1000.0, -inf], [0.0, 1.0, 0.0])
    """
    values = ops.stop_gradient(ops.convert_to_tensor(values))
    masks = [ops.convert_to_tensor(mask) for mask in masks]
    if peaks is None:
        peaks = [ops.max(ops.where(mask, values, -_INF), axis=1) for mask in masks]
    peaks = [ops.where(ops.isfinite(peak), peak, ops.zeros_like(peak)) for peak in peaks]
    # Masked entries become exp(-inf) = 0 before the exp, never inf after it.
    shifted = ops.full_like(values, -_INF)
    for mask, peak in zip(reversed(masks), reversed(peaks)):
        shifted = ops.where(mask, values - peak[:, None], shifted)
    e = ops.exp(shifted)
    lses, inverses = [], []
    totals = [row_sum(e)] if len(masks) == 1 else [row_sum(ops.where(m, e, 0)) for m in masks]
    for total, peak in zip(totals, peaks):
        # A non-empty mask holds its peak, exp(0) = 1: total >= 1 exactly when non-empty.
        kept = total > 0
        safe = ops.where(kept, total, ops.ones_like(total))
        lses.append(ops.where(kept, ops.log(safe) + peak, -_INF))
        inverses.append(ops.where(kept, 1 / safe, ops.zeros_like(safe)))
    return lses, e, inverses


def masked_mean(values, mask):
    """Row means of ``values`` over ``mask`` ``(n, M)``; 0 for an empty row.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> m = masked_mean(np.array([[1.0, 3.0]], "float32"), np.array([[True, True]]))
    >>> ops.convert_to_numpy(m).tolist()
    [2.0]
    """
    values = ops.convert_to_tensor(values)
    kept = ops.cast(mask, values.dtype)
    return row_sum(values * kept) / ops.maximum(row_sum(kept), 1)


def row_scores(block, loss, count, valid, active, positives, **gradients):
    """A :class:`RowScores`, with the mean distances over ``positives`` ``(n, M)`` and
    ``N(a)`` when ``block.statistics`` (zeros otherwise: two passes over the block saved);
    ``gradients`` are the remaining fields (``slopes=``, ...)."""
    if block.statistics:
        means = (
            masked_mean(block.distances, positives),
            masked_mean(block.distances, block.negative),
        )
    else:
        means = (ops.zeros_like(block.distances[:, 0]),) * 2
    return RowScores(loss, count, valid, active, *means, **gradients)
