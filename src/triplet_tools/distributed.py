"""Mining against the global batch when training data-parallel.

With ``R`` replicas each holding ``B/R`` rows, every replica's anchors mine against the
embeddings and labels of *all* replicas, and gradients reach the chosen rows wherever they
live. Each replica returns its share of the global loss, normalised by the global number of
valid anchors, so that one step gives the same weights as one step on a single device with
the whole batch:

* **TensorFlow** (``tf.distribute.MirroredStrategy``, ``MultiWorkerMirroredStrategy``, Keras
  ``model.fit``): embeddings are gathered with ``ReplicaContext.all_gather``, whose gradient
  sums over replicas; Keras then sums the replicas' gradients.
* **PyTorch** (``torch.distributed``, ``DistributedDataParallel``): embeddings are gathered
  with a differentiable all-gather; DDP *averages* gradients over the ``R`` processes, so
  each rank returns ``R x`` its share (the mean of the ranks' values is the global loss).
* **JAX** (``keras.distribution.DataParallel``): the compiled step already sees the global,
  sharded batch, so mining is global with no communication written here.

Turn it off with ``global_mining=False`` on any loss: each replica then mines inside its own
slice, as every other library does, and the reduction follows the framework's convention.
A world of one replica behaves exactly like no distribution at all.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import keras
from keras import ops


class ReplicaGroup(NamedTuple):
    """How to talk to the other replicas from inside one replica's loss computation.

    Attributes:
        num_replicas: ``R`` (a Python int).
        replica_id: this replica's index, ``0 <= replica_id < R`` (int or scalar tensor).
        gather: ``x (n, ...) -> (R*n, ...)``, replicas in order, differentiable.
        gather_labels: the same for integer tensors, without gradient.
        sum: ``x -> sum over replicas of x``, without gradient.
        loss_scale: factor on the returned loss so that the framework's aggregation of
            gradients over replicas yields the single-device gradient.
    """

    num_replicas: int
    replica_id: object
    gather: Callable
    gather_labels: Callable
    sum: Callable
    loss_scale: float


def current_replica_group():
    """The :class:`ReplicaGroup` of the running replica, or ``None`` when not distributed.

    ``None`` for a single replica, outside a replica context, and for JAX, whose
    ``keras.distribution`` hands the loss the global batch.

    Example:

    >>> current_replica_group() is None   # nothing distributed here
    True
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_group()
    if backend == "torch":
        return _torch_group()
    return None


def rows_per_slice(rows, num_slices):
    """Rows of each device slice when ``global_mining=False`` splits a batch of ``rows`` over
    ``num_slices`` devices; a ``ValueError`` when they do not divide evenly.

    >>> rows_per_slice(12, 3)
    4
    """
    if rows is None or rows % num_slices:
        raise ValueError(
            f"global_mining=False splits the batch over {num_slices} devices; received a "
            f"batch of {rows} rows, which does not divide evenly."
        )
    return rows // num_slices


def data_parallel_replicas():
    """``R`` for JAX under ``keras.distribution.DataParallel`` (the batch is split in ``R``
    contiguous slices, one per device), else 1."""
    distribution = keras.distribution.distribution()
    if isinstance(distribution, keras.distribution.DataParallel):
        return int(distribution.device_mesh.devices.size)
    return 1


def per_replica_loss_scale():
    """The factor Keras applies to a replica's mean loss under ``tf.distribute`` (``1/R``)."""
    if keras.backend.backend() != "tensorflow":
        return 1.0
    import tensorflow as tf

    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def _tensorflow_group():
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None

    def total(x):
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(x))

    @tf.custom_gradient
    def gather(x):
        def gradient(upstream):
            # The loss gathers rows of the result, so the upstream gradient arrives as
            # IndexedSlices, which the built-in all_gather gradient cannot all-reduce.
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.convert_to_tensor(upstream))
            rows = tf.shape(x)[0]
            start = tf.cast(context.replica_id_in_sync_group, rows.dtype) * rows
            return summed[start : start + rows]

        return context.all_gather(x, axis=0), gradient

    return ReplicaGroup(
        num_replicas=context.num_replicas_in_sync,
        replica_id=context.replica_id_in_sync_group,
        gather=gather,
        # Class ids travel as int32 (SPEC's range): collective all-gather of int64 fails
        # under MultiWorkerMirroredStrategy ("destinations can not be empty").
        gather_labels=lambda x: context.all_gather(tf.cast(x, tf.int32), axis=0),
        sum=total,
        loss_scale=1.0,
    )


def _torch_group():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world == 1:
        return None
    return ReplicaGroup(
        num_replicas=world,
        replica_id=dist.get_rank(),
        gather=_torch_gather,
        gather_labels=_torch_gather_without_gradient,
        sum=_torch_sum,
        loss_scale=float(world),
    )


def _torch_gather_without_gradient(x):
    import torch
    import torch.distributed as dist

    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def _torch_sum(x):
    import torch.distributed as dist

    total = x.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def _torch_gather(x):
    return _torch_all_gather().apply(x)


@functools.cache
def _torch_all_gather():
    """The autograd Function, built on first use so that importing this module needs no torch."""
    import torch

    class TorchAllGather(torch.autograd.Function):
        """All-gather along rows whose backward sums the gradient over ranks and keeps the
        local rows (public ``torch.distributed`` calls only, so it runs on gloo)."""

        @staticmethod
        def forward(ctx, x):
            ctx.rows = x.shape[0]
            return _torch_gather_without_gradient(x)

        @staticmethod
        def backward(ctx, grad):
            import torch.distributed as dist

            total = _torch_sum(grad.contiguous())
            start = dist.get_rank() * ctx.rows
            return total[start : start + ctx.rows]

    return TorchAllGather


def replica_positions(group, local_rows):
    """Indices of this replica's rows within the gathered batch: ``id*n + arange(n)``."""
    offset = ops.cast(group.replica_id, "int32") * local_rows
    return offset + ops.arange(local_rows, dtype="int32")
