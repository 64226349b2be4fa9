"""Where each anchor's references come from: the batch, a cross-batch memory, the global batch.

Every loss, :class:`~triplet_tools.metrics.MiningStatistics` and both mining engines take
their references from :func:`gather`, which hands back plain data and never calls into a
loss:

```
in-batch               one set: the batch itself (an anchor is never its own positive)
memory=                one set: [batch ; stored rows], stored rows masked until written;
                       record() writes the batch into the memory after mining
global (data-parallel) one set: every replica's rows, gathered with gradient; the divisor
                       of the average is summed over replicas (sum_across)
global_mining=False    one set per device slice under JAX DataParallel (each slice alone)
```

See :mod:`triplet_tools.distributed` for the replica side and :mod:`triplet_tools.memory`
for the memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from triplet_tools import distributed
from triplet_tools._inputs import backend_has_int64
from triplet_tools._ops import ops


class ReferenceSet(NamedTuple):
    """The references of some anchors of the batch.

    Attributes:
        rows: the anchors served, a ``slice`` of the batch, or ``None`` for all of them.
        embeddings: ``(M, D)`` reference embeddings (with gradient where they come from
            this step), or ``None`` when the references are the anchors themselves.
        labels: ``(M,)`` class ids, or ``None`` with ``embeddings``.
        positions: ``(n,)`` int32 index of each anchor among the references (``-1``: not
            among them), or ``None`` with ``embeddings``.
        mask: ``(M,)`` bool, ``False`` for a reference that must never be chosen, or ``None``.
    """

    rows: slice | None
    embeddings: Any = None
    labels: Any = None
    positions: Any = None
    mask: Any = None


class References(NamedTuple):
    """What :func:`gather` hands a loss.

    Attributes:
        sets: the :class:`ReferenceSet` s, covering every anchor once, in row order.
        sum_across: sums a (stop-gradient) divisor over replicas, or ``None``.
        scale: factor on every reduced loss except ``reduction="none"`` (global mining).
        mean_scale: factor on the mean reductions only (Keras' per-replica convention
            under ``tf.distribute`` without global mining; 1 elsewhere).
        record: call once mining is done to write the batch into the memory, or ``None``.
    """

    sets: tuple[ReferenceSet, ...]
    sum_across: Callable | None = None
    scale: float = 1.0
    mean_scale: float = 1.0
    record: Callable | None = None


MEMORY_UNDER_REPLICAS_ERROR = (
    "A cross-batch memory works on one replica; under data-parallel training global mining "
    "already gives every anchor the whole global batch. Drop memory= when training "
    "data-parallel."
)


def gather(labels, embeddings, *, memory=None, global_mining=True, as_last_seen=False):
    """The references of a batch for one loss call.

    Args:
        labels: ``(B,)`` class ids, as prepared by the loss.
        embeddings: ``(B, D)`` embeddings in the compute dtype, with gradient.
        memory: a built ``CrossBatchMemory`` layer, or ``None``.
        global_mining: mine against the global batch when running data-parallel.
        as_last_seen: read the memory as the last loss call saw it (before it recorded
            its batch) and record nothing; what ``MiningStatistics`` needs, since Keras
            runs metrics after the loss.

    Returns:
        :class:`References`.

    Example:

    >>> import numpy as np
    >>> refs = gather(np.array([0, 1]), np.zeros((2, 3), "float32"))
    >>> len(refs.sets), refs.sets[0].rows, refs.record is None
    (1, None, True)
    """
    group = distributed.current_replica_group() if global_mining else None
    if group is not None:
        if memory is not None:
            raise ValueError(MEMORY_UNDER_REPLICAS_ERROR)
        rows = ops.shape(embeddings)[0]
        whole = ReferenceSet(
            None,
            group.gather(embeddings),
            group.gather_labels(labels),
            distributed.replica_positions(group, rows),
        )
        return References((whole,), sum_across=group.sum, scale=group.loss_scale)

    mean_scale = distributed.per_replica_loss_scale()
    if memory is not None:
        stored, stored_labels, written = memory.contents(before_last_record=as_last_seen)
        rows = ops.shape(embeddings)[0]
        label_dtype = "int64" if backend_has_int64() else "int32"
        with_memory = ReferenceSet(
            None,
            ops.concatenate([embeddings, ops.cast(stored, embeddings.dtype)], axis=0),
            ops.concatenate(
                [ops.cast(labels, label_dtype), ops.cast(stored_labels, label_dtype)], axis=0
            ),
            ops.arange(rows, dtype="int32"),
            ops.concatenate([ops.ones((rows,), "bool"), written], axis=0),
        )

        def record():
            memory.record(embeddings, labels)

        return References(
            (with_memory,), mean_scale=mean_scale, record=None if as_last_seen else record
        )

    num_slices = distributed.data_parallel_replicas()
    if not global_mining and num_slices > 1:
        rows = embeddings.shape[0]
        step = distributed.rows_per_slice(rows, num_slices)
        slices = tuple(ReferenceSet(slice(i, i + step)) for i in range(0, rows, step))
        return References(slices, mean_scale=mean_scale)
    return References((ReferenceSet(None),), mean_scale=mean_scale)
