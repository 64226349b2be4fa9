"""Eager JAX: each loss's scoring step compiled once per shapes and settings, and reused.

Un-jitted JAX runs most ops one by one from a cache, but a loop (``while_loop``, ``scan``,
``map``: the pair engine's slots and blocks, blocked mining) is traced and compiled at every
call, because its body is a new closure each time; JAX keeps every such compilation
(measured at B = 16: 0.36 to 0.86 s and about 3 MB of resident memory per call, without
bound). So on JAX, once a call of the pipeline's scoring step
(``TripletFamilyLoss.score_set``: mining and the row functions, every loop) has run a loop
(``triplet_tools.mining.blocks.count_loop``), the next calls with the same shapes and
settings run it through ``jax.jit``. A step without loops (a per-anchor loss in one
block) stays op by op, whose kernels JAX caches already. The compiled functions are:

* kept per loss, at most :data:`CACHE_SIZE` of them (the least recently used goes first),
  in a table that holds the loss weakly: nothing here keeps a loss, a model or a tensor
  alive, and a loss that is garbage takes its compiled functions with it;
* keyed on static things only: the shapes and dtypes of the inputs, which of them are
  given, the loss's config, whether a ``MiningStatistics`` reads it, and the engine's
  module settings. The compiled function holds a weak reference to its loss and captures
  no tensor.

Under an outer ``jax.jit``, ``jax.grad`` or ``jax.value_and_grad`` the same function is
traced into the caller's computation, where JAX differentiates it as any other: the
values and gradients do not change. Other backends are left alone: eager TensorFlow runs
its loops in Python and torch has none to compile.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any

import keras

from triplet_tools._ops import ops
from triplet_tools.mining import blocks, engine

#: Compiled scoring functions kept per loss (input shapes, dtypes and settings).
CACHE_SIZE = 8

_JAX = keras.backend.backend() == "jax"

_compiled: weakref.WeakKeyDictionary[Any, collections.OrderedDict] = weakref.WeakKeyDictionary()


class _Scorer:
    """``loss.score_set`` with the loss held weakly (what ``jax.jit`` compiles)."""

    def __init__(self, loss, summed):
        self._loss = weakref.ref(loss)
        self._summed = summed

    def __call__(self, features, labels, reference_features, reference_labels, *rest):
        positions, mask, weights = rest
        loss = self._loss()
        assert loss is not None, "called by its loss, which is alive"
        return loss.score_set(
            features,
            labels,
            reference_features,
            reference_labels,
            positions,
            mask,
            weights=weights,
            summed=self._summed,
        )


def _signature(x):
    return None if x is None else (tuple(x.shape), str(x.dtype))


def score_set(loss, features, labels, reference_features, reference_labels, positions, mask,
              weights=None, summed=False):  # fmt: skip
    """``loss.score_set(...)``; on JAX through the loss's cached compiled function once a
    call with these shapes and settings has run a loop.

    Args:
        loss: a ``TripletFamilyLoss``.
        features, labels, reference_features, reference_labels, positions, mask, weights,
        summed: as for ``TripletFamilyLoss.score_set`` (``None`` where not given).

    Returns:
        The loss's ``AnchorTriplets``.

    Example:

    >>> import numpy as np
    >>> from triplet_tools import TripletLoss
    >>> loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard")
    >>> x = ops.convert_to_tensor(np.array([[0.0], [1.0], [3.0], [3.5]], "float32"))
    >>> labels = ops.convert_to_tensor(np.array([0, 0, 1, 1]))
    >>> scores = score_set(loss, x, labels, None, None, None, None)
    >>> np.round(ops.convert_to_numpy(scores.loss), 4).tolist()   # d_ap - d_an + 1
    [0.0, 0.0, 0.0, 0.0]
    """
    given = (features, labels, reference_features, reference_labels, positions, mask, weights)
    if not _JAX:
        return _Scorer(loss, summed)(*given)
    import jax

    tensors = tuple(None if x is None else ops.convert_to_tensor(x) for x in given)

    key = (
        tuple(_signature(x) for x in tensors),
        repr(loss.get_config()),
        bool(loss._statistics),
        summed,
        engine.REMAT_PAIRS,
        blocks.BLOCK_ELEMENTS,
    )
    table = _compiled.setdefault(loss, collections.OrderedDict())
    if key in table:
        table.move_to_end(key)
        compiled = table[key]
        return _Scorer(loss, summed)(*tensors) if compiled is None else compiled(*tensors)
    # The first call with this key runs un-jitted; only if it ran a loop is the step
    # compiled for the next ones. Without a loop, op-by-op dispatch is cached already and a
    # compilation per loss would cost more than it saves.
    loops = blocks.loops_counted()
    scores = _Scorer(loss, summed)(*tensors)
    table[key] = jax.jit(_Scorer(loss, summed)) if blocks.loops_counted() != loops else None
    while len(table) > CACHE_SIZE:
        table.popitem(last=False)
    return scores
