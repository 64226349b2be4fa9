"""The one pipeline behind every loss here.

```
labels, embeddings --_inputs--> checked tensors --references.gather--> reference sets
    --score (per set): mine under stop_gradient, measure with gradient--> L_a, c_a (B,)
    --reduction.reduce--> loss
```

A per-anchor loss sets ``rules`` (what to mine) and overrides a single hook,
``anchor_loss(d_ap, d_an)`` (``PNLoss`` also ``anchor_distances``); a loss that scores every
pair overrides ``score_set`` instead and has no ``rules``.
Argument checks live in ``_validation``, input conversion in ``_inputs``, the references in
``references``, the reduction in ``losses.reduction``; this module only wires them.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras

from triplet_tools import _inputs
from triplet_tools import distances as distances_module
from triplet_tools import memory as memory_module
from triplet_tools import references as references_module
from triplet_tools._ops import ops
from triplet_tools._validation import check_bool, check_int
from triplet_tools.losses import eager
from triplet_tools.losses import reduction as reduction_module
from triplet_tools.mining import MiningRules, mine_features
from triplet_tools.mining.results import AnchorTriplets

REDUCTIONS = reduction_module.REDUCTIONS


def _ones(embeddings):
    return ops.ones_like(ops.stop_gradient(embeddings)[:, 0])


def _concatenate(parts):
    if len(parts) == 1:
        return parts[0]
    carriers = [part.carrier for part in parts if part.carrier is not None]
    joined = AnchorTriplets(
        *(ops.concatenate(field, axis=0) for field in zip(*(part[:-1] for part in parts)))
    )
    return joined._replace(carrier=sum(carriers[1:], carriers[0]) if carriers else None)


class TripletFamilyLoss(keras.losses.Loss):
    """Base of every loss here: inputs, references, reduction and the common config.

    Per-anchor subclasses set :attr:`rules` and implement :meth:`anchor_loss` (and may
    override :meth:`anchor_distances`); losses over every pair override :meth:`score_set`
    and mine nothing per anchor (the mining strategies are ``TripletLoss``'s arguments). The
    default reduction averages over the counted units (valid anchors, for one unit per
    anchor): ``sum_a w_a * L_a / sum_a c_a``; see ``triplet_tools.losses.reduction``.

    Args:
        distance: a name (see ``triplet_tools.distances.DISTANCE_NAMES``) or a ``Distance``.
        name: the loss name.
        reduction: one of ``"sum_over_batch_size"`` (default), ``"sum"``, ``"none"``,
            ``"mean"`` (same as the default), ``"mean_with_sample_weight"`` or ``None``.
        dtype: the floating dtype of the returned loss; computation is in at least float32.
        block_size: anchors mined at once (``None``: automatic).
        global_mining: when training data-parallel, mine every replica's anchors against
            the global batch (default ``True``); ``False`` mines inside each replica's
            slice. See ``triplet_tools.distributed``.
        memory: an optional ``triplet_tools.memory.CrossBatchMemory`` layer of the model (or
            its name): its stored embeddings of earlier batches join the references.
    """

    #: What the default :meth:`score_set` mines for each anchor (distance, strategies,
    #: semi-hard offset): set by the losses that keep that default, ``TripletLoss`` from its
    #: arguments and ``PrimingLoss`` to the hardest pair. A loss that overrides
    #: :meth:`score_set` has none.
    rules: MiningRules

    def __init__(
        self,
        distance,
        name,
        reduction,
        dtype=None,
        block_size=None,
        global_mining=True,
        memory=None,
    ):
        reduction_module.check_reduction(reduction)
        if dtype is not None and isinstance(dtype, str):
            standard = keras.backend.standardize_dtype(dtype)
            if "float" not in standard:
                raise ValueError(
                    f"dtype must be a floating-point dtype (the loss is a real number); "
                    f"received dtype={dtype!r}."
                )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._distance = distances_module.get(distance)
        self.block_size = check_int(block_size, "block_size", minimum=1, allow_none=True)
        self.global_mining = check_bool(global_mining, "global_mining")
        self.memory = memory_module.check_memory(memory)
        # Bound now when the layer exists (after load_model: the one just loaded), else on
        # the first call; from then on this loss only ever uses that layer.
        self._memory_layer = memory_module.lookup(self.memory)
        self._explicit_dtype = dtype
        # MiningStatistics metrics that receive what each call mined (see report_to); weak,
        # and not a list, so that saving does not walk loss -> metric -> loss forever.
        self._statistics: weakref.WeakSet[Any] = weakref.WeakSet()

    def report_to(self, metric):
        """Hands every later call's mined :class:`AnchorTriplets` to ``metric.accumulate``."""
        self._statistics.add(metric)

    @property
    def distance(self):
        """The ``triplet_tools.distances.Distance``."""
        return self._distance

    # --- hooks ---------------------------------------------------------------------------

    def anchor_distances(self, anchors, positives, negatives):
        """``(d_ap, d_an)`` from the gathered feature rows (``distance.mining_features``),
        each ``(B,)``, with gradient."""
        paired = self.distance.paired_features
        return paired(anchors, positives), paired(anchors, negatives)

    def anchor_loss(self, positive_distance, negative_distance):
        """Per-anchor loss from ``d_ap`` and ``d_an``, each ``(B,)``."""
        raise NotImplementedError

    def counted(self, triplets):
        """``c_a`` of a per-anchor result: 1 for a valid anchor, else 0."""
        return ops.cast(triplets.valid, triplets.loss.dtype)

    def wants_statistics(self, summed=False):
        """Whether the pair engine computes each anchor's mean distances (``d_ap``, ``d_an``):
        when a :class:`~triplet_tools.metrics.MiningStatistics` reads them, or when the caller
        takes the per-anchor results (not ``summed``: :meth:`anchor_triplets`,
        :meth:`mine_batch`, ``reduction="none"``). A reduced call skips their two passes."""
        return bool(self._statistics) or not summed

    def score_set(
        self,
        features,
        labels,
        reference_features,
        reference_labels,
        anchor_positions,
        reference_mask,
        weights=None,
        summed=False,
    ):
        """Scores anchors against one reference set; returns an :class:`AnchorTriplets`.

        The default mines one positive and one negative per anchor and applies
        :meth:`anchor_loss`. ``reference_features`` is ``None`` for in-batch mining.
        ``summed`` says that only ``sum_a w_a L_a`` will be differentiated, with
        ``weights`` ``(B,)``: a loss may then return values and a ``carrier`` of that
        gradient. Otherwise every ``L_a`` keeps its own gradient (``weights`` unused).
        """
        mined = mine_features(
            features,
            labels,
            reference_features,
            reference_labels,
            anchor_positions,
            rules=self.rules,
            reference_mask=reference_mask,
            block_size=self.block_size,
        )
        pool = features if reference_features is None else reference_features
        positives = ops.take(pool, mined.positive, axis=0)
        negatives = ops.take(pool, mined.negative, axis=0)
        d_ap, d_an = self.anchor_distances(features, positives, negatives)
        valid = ops.cast(mined.valid, features.dtype)
        # A product, not a select: an invalid anchor gets 0 and zero gradient, yet NaN in
        # its embedding still reaches the loss.
        loss = self.anchor_loss(d_ap, d_an) * valid
        return AnchorTriplets(
            loss, mined.valid, d_ap, d_an, valid, ops.cast(loss > 0, features.dtype) * valid
        )

    # --- pipeline ------------------------------------------------------------------------

    def _inputs(self, y_true, y_pred):
        """Validated ``(labels, embeddings)``, embeddings in float64 if either the input or
        the loss dtype is float64, else in float32."""
        embeddings = ops.convert_to_tensor(y_pred)
        wide = "float64" in (self.dtype, keras.backend.standardize_dtype(embeddings.dtype))
        return _inputs.validate_inputs(y_true, embeddings, "float64" if wide else "float32")

    def _bound_memory(self):
        if self.memory is None:
            return None
        if self._memory_layer is None:
            self._memory_layer = memory_module.lookup(self.memory)
        return memory_module.resolve(self._memory_layer or self.memory)

    def anchor_triplets(
        self,
        y_true,
        y_pred,
        references=None,
        reference_labels=None,
        anchor_positions=None,
        reference_mask=None,
    ):
        """Runs the pipeline on explicit references; returns ``(B,)`` :class:`AnchorTriplets`.

        Args:
            y_true: ``(B,)`` or ``(B, 1)`` integer class ids.
            y_pred: ``(B, D)`` embeddings.
            references, reference_labels, anchor_positions, reference_mask: an optional
                explicit reference set, as in :func:`triplet_tools.mining.mine_triplets`;
                gradient flows into the references that are chosen. Without them the
                references are the batch.
        """
        labels, embeddings = self._inputs(y_true, y_pred)
        return self._score(
            labels,
            embeddings,
            references_module.ReferenceSet(
                None, references, reference_labels, anchor_positions, reference_mask
            ),
        )

    def _score(self, labels, embeddings, reference_set, weights=None, summed=False):
        # Each row is transformed once (normalised, for the normalised distances), with
        # gradient: mining reads these features under stop_gradient, the loss measures them.
        rows = reference_set.rows
        if rows is not None:
            labels, embeddings = labels[rows], embeddings[rows]
            weights = None if weights is None else weights[rows]
        features = self.distance.mining_features(embeddings)
        if features.shape[0] == 0:
            # An empty batch has no valid anchor: exactly 0, still connected to the input.
            nothing = ops.sum(features, axis=1) * 0
            return AnchorTriplets(
                nothing, ops.zeros((0,), "bool"), nothing, nothing, nothing, nothing
            )
        reference_features, reference_labels = None, None
        if reference_set.embeddings is not None:
            reference_features = self.distance.mining_features(
                ops.cast(ops.convert_to_tensor(reference_set.embeddings), embeddings.dtype)
            )
            reference_labels = _inputs.prepare_labels(reference_set.labels)
        # On JAX through a compiled function cached per loss and shapes (eager loops would
        # be compiled again at every call); elsewhere score_set itself.
        return eager.score_set(
            self,
            features,
            labels,
            reference_features,
            reference_labels,
            reference_set.positions,
            reference_set.mask,
            weights,
            summed,
        )

    def mine_batch(self, y_true, y_pred, as_last_seen=False):
        """Mines a batch against the references a call of this loss would use.

        Returns:
            ``(AnchorTriplets over the batch, References)``. With ``as_last_seen`` the
            memory is read as the last loss call saw it and nothing is recorded (what
            :class:`~triplet_tools.metrics.MiningStatistics` needs).
        """
        labels, embeddings = self._inputs(y_true, y_pred)
        return self._mine(labels, embeddings, as_last_seen)

    def _mine(self, labels, embeddings, as_last_seen=False, weights=None, summed=False):
        refs = references_module.gather(
            labels,
            embeddings,
            memory=self._bound_memory(),
            global_mining=self.global_mining,
            as_last_seen=as_last_seen,
        )
        triplets = _concatenate(
            [self._score(labels, embeddings, s, weights, summed) for s in refs.sets]
        )
        return triplets, refs

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
            labels, embeddings = self._inputs(y_true, y_pred)
            weights = _inputs.sample_weights(sample_weight, embeddings.shape[0], embeddings.dtype)
            # Unless each anchor's loss is returned, only the weighted sum is differentiated:
            # the pair engine may then hand back its gradient directly (the products mode).
            summed = self.reduction not in (None, "none")
            triplets, refs = self._mine(
                labels,
                embeddings,
                weights=_ones(embeddings) if weights is None else weights,
                summed=summed,
            )
            for metric in self._statistics:
                metric.accumulate(triplets)
            if refs.record is not None:
                refs.record()
            loss = reduction_module.reduce(
                triplets.loss,
                triplets.count,
                weights,
                self.reduction,
                sum_across=refs.sum_across,
                scale=refs.scale,
                mean_scale=refs.mean_scale,
                carrier=triplets.carrier,
            )
            return ops.cast(loss, self.dtype)

    # --- config --------------------------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "reduction": self.reduction,
            "distance": distances_module.serialize(self.distance),
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
