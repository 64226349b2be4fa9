"""The one pipeline behind every triplet-family loss.

```
labels, embeddings --validate--> mine (no gradient) --gather p*, n*--> d_ap, d_an
    --anchor_loss hook--> l_a --reduce over valid anchors--> loss
```

A concrete loss overrides a single hook: ``anchor_loss(d_ap, d_an)`` (and ``PNLoss`` also
``anchor_distances``). Reduction, sample weights, validation, dtypes and config live here.
"""

from typing import NamedTuple

import keras
import numpy as np

from triplet_tools import distances as distances_module
from triplet_tools import distributed, mining
from triplet_tools import memory as memory_module
from triplet_tools._ops import ops

REDUCTIONS = ("sum_over_batch_size", "sum", "none", "mean", "mean_with_sample_weight")


class AnchorTriplets(NamedTuple):
    """Per-anchor results of the pipeline, each of shape ``(B,)``.

    Attributes:
        loss: ``l_a`` (0 for invalid anchors; NaN in an embedding stays NaN).
        valid: bool, the anchor has a positive and a negative.
        positive_distance: ``d_ap`` with gradient.
        negative_distance: ``d_an`` with gradient (for ``PNLoss``, ``min(d(a,n*), d(p*,n*))``).
    """

    loss: object
    valid: object
    positive_distance: object
    negative_distance: object


def _is_backend_tensor(x):
    return not isinstance(x, (np.ndarray, np.generic, list, tuple, int, float))


def prepare_labels(y_true):
    """Converts ``y_true`` to a ``(B,)`` integer tensor without going through a float dtype.

    Integer dtypes are kept (int64 stays int64 where the backend has it, so ids up to
    2**31-1 stay distinct everywhere); floats holding integers are accepted. Host arrays
    are converted to integers before they reach the device.
    """
    if not _is_backend_tensor(y_true):
        y_true = np.asarray(y_true)
        if y_true.dtype.kind == "f":
            y_true = y_true.astype(np.int64)
        elif y_true.dtype.kind == "b":
            y_true = y_true.astype(np.int32)
    labels = ops.convert_to_tensor(y_true)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" not in dtype:
        labels = ops.cast(labels, "int64" if dtype in ("float64",) else "int32")
    return labels


def validate_inputs(y_true, y_pred, compute_dtype=None):
    """Checks ranks and batch sizes; returns ``(labels (B,), embeddings (B, D))``.

    Embeddings are cast to ``compute_dtype`` if given, else to at least float32
    (float16 / bfloat16 are computed in float32; float64 stays float64).

    Raises:
        ValueError: when ``y_pred`` is not ``(B, D)``, ``y_true`` is not ``(B,)`` or
            ``(B, 1)``, or the two batch sizes differ; the message names both shapes.
    """
    labels = prepare_labels(y_true)
    embeddings = ops.convert_to_tensor(y_pred)
    shapes = (
        f"received y_true.shape={tuple(labels.shape)} and "
        f"y_pred.shape={tuple(embeddings.shape)}"
    )
    if len(embeddings.shape) != 2:
        raise ValueError(f"y_pred must be embeddings of shape (batch_size, dim); {shapes}.")
    if len(labels.shape) == 2 and labels.shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    if len(labels.shape) != 1:
        raise ValueError(
            f"y_true must be class ids of shape (batch_size,) or (batch_size, 1); {shapes}."
        )
    if (
        labels.shape[0] is not None
        and embeddings.shape[0] is not None
        and labels.shape[0] != embeddings.shape[0]
    ):
        raise ValueError(f"y_true and y_pred must have the same batch size; {shapes}.")
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    if compute_dtype is None:
        compute_dtype = "float64" if dtype == "float64" else "float32"
    if dtype != compute_dtype:
        embeddings = ops.cast(embeddings, compute_dtype)
    return labels, embeddings


class TripletFamilyLoss(keras.losses.Loss):
    """Base of the triplet-family losses: mining, gathering, reduction and config.

    Subclasses implement :meth:`anchor_loss` and may override :meth:`anchor_distances`.
    The default reduction averages over *valid* anchors (those with a positive and a
    negative): ``sum_a w_a * l_a / #valid``; see the class docs of the concrete losses.

    Args:
        distance: a name (see ``triplet_tools.distances.DISTANCE_NAMES``) or a ``Distance``.
        positive_mining_strategy: ``"hard"`` or ``"easy"``.
        negative_mining_strategy: ``"hard"``, ``"semi-hard"`` or ``"easy"``.
        semi_margin: the semi-hard offset.
        name: the loss name.
        reduction: one of ``"sum_over_batch_size"`` (default), ``"sum"``, ``"none"``,
            ``"mean"`` (same as the default), ``"mean_with_sample_weight"`` or ``None``.
        dtype: the dtype of the returned loss; computation is in at least float32.
        block_size: anchors mined at once (``None``: automatic).
        global_mining: when training data-parallel, mine every replica's anchors against
            the global batch (default ``True``); ``False`` mines inside each replica's
            slice. See ``triplet_tools.distributed``.
        memory: an optional ``triplet_tools.memory.CrossBatchMemory`` layer of the model (or
            its name): its stored embeddings of earlier batches join the references.
    """

    def __init__(
        self,
        distance,
        positive_mining_strategy,
        negative_mining_strategy,
        semi_margin,
        name,
        reduction,
        dtype=None,
        block_size=None,
        global_mining=True,
        memory=None,
    ):
        if reduction is not None and reduction not in REDUCTIONS:
            raise ValueError(
                f"Invalid reduction: received {reduction!r}; allowed values are "
                f"{', '.join(repr(r) for r in REDUCTIONS)} or None."
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.distance = distances_module.get(distance)
        self.positive_mining_strategy = mining.check_choice(
            positive_mining_strategy, mining.POSITIVE_STRATEGIES, "positive_mining_strategy"
        )
        self.negative_mining_strategy = mining.check_choice(
            negative_mining_strategy, mining.NEGATIVE_STRATEGIES, "negative_mining_strategy"
        )
        self.semi_margin = check_number(semi_margin, "semi_margin")
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise ValueError(f"block_size must be a positive int or None; received {block_size!r}.")
        self.block_size = block_size
        if not isinstance(global_mining, bool):
            raise ValueError(f"global_mining must be True or False; received {global_mining!r}.")
        self.global_mining = global_mining
        self.memory = memory_module.check_memory(memory)
        self._explicit_dtype = dtype

    # --- hooks ---------------------------------------------------------------------------

    def anchor_distances(self, anchors, positives, negatives):
        """``(d_ap, d_an)`` from the gathered feature rows (``distance.mining_features``),
        each ``(B,)``, with gradient."""
        paired = self.distance.paired_features
        return paired(anchors, positives), paired(anchors, negatives)

    def anchor_loss(self, positive_distance, negative_distance):
        """Per-anchor loss from ``d_ap`` and ``d_an``, each ``(B,)``."""
        raise NotImplementedError

    # --- pipeline ------------------------------------------------------------------------

    def _inputs(self, y_true, y_pred):
        """Validated ``(labels, embeddings)``, embeddings in float64 if either the input or
        the loss dtype is float64, else in float32."""
        embeddings = ops.convert_to_tensor(y_pred)
        wide = "float64" in (self.dtype, keras.backend.standardize_dtype(embeddings.dtype))
        return validate_inputs(y_true, embeddings, "float64" if wide else "float32")

    def anchor_triplets(self, y_true, y_pred, references=None, reference_labels=None,
                        anchor_positions=None, reference_mask=None):
        """Runs the pipeline and returns an :class:`AnchorTriplets` of ``(B,)`` tensors.

        Args:
            y_true: ``(B,)`` or ``(B, 1)`` integer class ids.
            y_pred: ``(B, D)`` embeddings.
            references, reference_labels, anchor_positions, reference_mask: an optional
                explicit reference set, as in :func:`triplet_tools.mining.mine_triplets`;
                gradient flows into the references that are chosen.
        """
        labels, embeddings = self._inputs(y_true, y_pred)
        # Each row is transformed once (normalised, for the normalised distances), with
        # gradient: mining reads these features under stop_gradient, the loss measures them.
        features = self.distance.mining_features(embeddings)
        if references is None:
            reference_features = features
        else:
            reference_features = self.distance.mining_features(
                ops.cast(ops.convert_to_tensor(references), embeddings.dtype))
            reference_labels = prepare_labels(reference_labels)
        mined = mining.mine_features(
            features, labels,
            None if references is None else reference_features, reference_labels,
            anchor_positions,
            reference_mask=reference_mask,
            distance=self.distance,
            positive_strategy=self.positive_mining_strategy,
            negative_strategy=self.negative_mining_strategy,
            semi_margin=self.semi_margin,
            block_size=self.block_size,
        )
        positives = ops.take(reference_features, mined.positive, axis=0)
        negatives = ops.take(reference_features, mined.negative, axis=0)
        d_ap, d_an = self.anchor_distances(features, positives, negatives)
        valid = ops.cast(mined.valid, embeddings.dtype)
        # A product, not a select: an invalid anchor gets 0 and zero gradient, yet NaN in
        # its embedding still reaches the loss.
        loss = self.anchor_loss(d_ap, d_an) * valid
        return AnchorTriplets(loss, mined.valid, d_ap, d_an)

    def call(self, y_true, y_pred):
        """Per-anchor losses ``(B,)`` (0 for invalid anchors), before weighting and reduction."""
        return self.anchor_triplets(y_true, y_pred).loss

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The reduced loss; see the class docstring for the reductions.

        Unlike ``keras.losses.Loss``, ``y_true`` is never cast to a float dtype, so large
        class ids stay distinct. Under data-parallel training the references are the global
        batch (see ``triplet_tools.distributed``); with a ``memory`` they include the
        embeddings of earlier batches.
        """
        with keras.name_scope(self.name):
            group = distributed.current_replica_group() if self.global_mining else None
            if group is not None:
                if self.memory is not None:
                    raise ValueError(
                        "A cross-batch memory works on one replica; under data-parallel "
                        "training global mining already gives every anchor the whole "
                        "global batch. Drop memory= when training data-parallel."
                    )
                return self._replica_share(group, y_true, y_pred, sample_weight)
            if self.memory is not None:
                triplets = self._with_memory(y_true, y_pred)
            elif not self.global_mining and distributed.data_parallel_replicas() > 1:
                triplets = self._per_slice(y_true, y_pred, distributed.data_parallel_replicas())
            else:
                triplets = self.anchor_triplets(y_true, y_pred)
            loss = self.reduce(triplets.loss, triplets.valid, sample_weight)
            if self.reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
                # Keras' convention for a replica's mean under tf.distribute (1 elsewhere).
                scale = distributed.per_replica_loss_scale()
                if scale != 1:
                    loss = loss * scale
            return loss

    def _replica_share(self, group, y_true, y_pred, sample_weight):
        """This replica's share of the loss of the global batch (see ``distributed``)."""
        labels, embeddings = self._inputs(y_true, y_pred)
        triplets = self.anchor_triplets(
            labels, embeddings, group.gather(embeddings), group.gather_labels(labels),
            distributed.replica_positions(group, ops.shape(embeddings)[0]),
        )
        loss = self.reduce(triplets.loss, triplets.valid, sample_weight, across=group.sum)
        if self.reduction in (None, "none"):
            return loss
        return loss * group.loss_scale

    def _per_slice(self, y_true, y_pred, num_slices):
        """Mining inside each of ``num_slices`` contiguous slices (one per device)."""
        labels, embeddings = self._inputs(y_true, y_pred)
        rows = embeddings.shape[0]
        if rows is None or rows % num_slices:
            raise ValueError(
                f"global_mining=False splits the batch over {num_slices} devices; received "
                f"a batch of {rows} rows, which does not divide evenly."
            )
        step = rows // num_slices
        parts = [
            self.anchor_triplets(labels[i:i + step], embeddings[i:i + step])
            for i in range(0, rows, step)
        ]
        return AnchorTriplets(*(ops.concatenate(field, axis=0) for field in zip(*parts)))

    def _with_memory(self, y_true, y_pred):
        """Mines against the batch followed by the memory's stored rows, then records the batch."""
        labels, embeddings = self._inputs(y_true, y_pred)
        memory = memory_module.resolve(self.memory)
        stored, stored_labels, stored_valid = memory.contents()
        rows = ops.shape(embeddings)[0]
        triplets = self.anchor_triplets(
            labels, embeddings,
            ops.concatenate([embeddings, ops.cast(stored, embeddings.dtype)], axis=0),
            ops.concatenate([labels, ops.cast(stored_labels, labels.dtype)], axis=0),
            ops.arange(rows, dtype="int32"),
            ops.concatenate([ops.ones((rows,), "bool"), stored_valid], axis=0),
        )
        memory.record(embeddings, labels)
        return triplets

    def reduce(self, losses, valid, sample_weight=None, across=None):
        """Applies ``sample_weight`` and the reduction; averages run over valid anchors.

        ``across`` sums the divisor over replicas (global mining), so that every replica
        divides its share by the global number (or weight) of valid anchors.
        """
        valid = ops.cast(valid, losses.dtype)
        weights = valid
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), losses.dtype)
            if len(sample_weight.shape) == 2 and sample_weight.shape[1] == 1:
                sample_weight = ops.reshape(sample_weight, (-1,))
            if len(sample_weight.shape) > 1:
                raise ValueError(
                    "sample_weight must have shape (batch_size,) or (batch_size, 1); "
                    f"received sample_weight.shape={tuple(sample_weight.shape)} for "
                    f"losses of shape {tuple(losses.shape)}."
                )
            weights = weights * sample_weight
        weighted = losses * weights if sample_weight is not None else losses
        if self.reduction in (None, "none"):
            return ops.cast(weighted, self.dtype)
        total = ops.sum(weighted)
        if self.reduction == "sum":
            return ops.cast(total, self.dtype)
        by_weight = self.reduction == "mean_with_sample_weight"
        divisor = ops.sum(weights if by_weight else valid)
        divisor = ops.stop_gradient(divisor if across is None else across(divisor))
        # No valid anchor: total is an exact 0 (or NaN from a NaN embedding), divided by 1.
        if by_weight:
            divisor = ops.where(ops.equal(divisor, 0), ops.ones_like(divisor), divisor)
        else:
            divisor = ops.maximum(divisor, 1)  # a count: 0 or at least 1
        return ops.cast(total / divisor, self.dtype)

    # --- config --------------------------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "reduction": self.reduction,
            "distance": distances_module.serialize(self.distance),
            "positive_mining_strategy": self.positive_mining_strategy,
            "negative_mining_strategy": self.negative_mining_strategy,
            "semi_margin": self.semi_margin,
            "block_size": self.block_size,
            "global_mining": self.global_mining,
        }
        if self.memory is not None:
            config["memory"] = memory_module.memory_name(self.memory)
        if self._explicit_dtype is not None:
            config["dtype"] = keras.backend.standardize_dtype(self.dtype)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def check_number(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{argument} must be a number; received {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"{argument} must be finite; received {value!r}.")
    return float(value)
