"""Mining statistics: what the miner of a triplet-family loss finds in each batch."""

import keras
from keras import ops

from triplet_tools._validation import check_string
from triplet_tools.losses.base import TripletFamilyLoss

#: The statistics :class:`MiningStatistics` reports, in order.
STATISTICS = ("valid_anchors", "active_triplets", "mean_d_ap", "mean_d_an")


@keras.saving.register_keras_serializable(package="triplet_tools")
class MiningStatistics(keras.metrics.Metric):
    """Share of valid anchors, share of active triplets and the mean mined distances.

    Mines every batch exactly as ``loss`` does, against the same references (the batch, its
    cross-batch memory as the loss saw it, or the global batch; ``loss.mine_batch``), and
    accumulates,
    over the batches of an epoch:

    ```
    valid_anchors   = #valid anchors / #anchors
    active_triplets = #{valid anchors with l_a > 0} / #valid anchors
    mean_d_ap       = sum_{valid a} d(a, p*) / #valid anchors
    mean_d_an       = sum_{valid a} d(a, n*) / #valid anchors     (PNLoss: min(d(a,n*), d(p*,n*)))
    ```

    An anchor is valid when its batch holds a positive and a negative for it (see
    ``triplet_tools.samplers`` for why this share matters). ``active_triplets`` is the share
    of valid anchors that still produce a gradient: it falls as the hinge is satisfied. With
    ``soft_margin=True`` or ``PrimingLoss`` every valid anchor is active by definition.
    Ratios are of sums over the epoch (not means of per-batch ratios); ``sample_weight`` is
    ignored, since these describe the mining and not the objective.

    ``result()`` returns a dict; Keras 3 flattens it into the logs on every backend, so the
    four values appear under their own names in the progress bar, ``History``,
    ``evaluate(return_dict=True)`` and (with ``val_``) for validation data. Use ``prefix``
    to tell two of them apart.

    Cost: a few sums per step. Inside ``fit`` and ``evaluate`` the loss hands the metric
    what it mined (Keras runs the loss first), so the counts are of the loss's own
    references (the batch, its cross-batch memory or the global batch). Used on its own,
    ``metric(y_true, y_pred)`` mines the batch as the loss would (one more mining pass).

    Args:
        loss: the :class:`~triplet_tools.losses.TripletFamilyLoss` whose mining to report
            (``TripletLoss``, ``PNLoss``, ``PrimingLoss`` or the 0.2.3 functions' results).
        name: the metric's name (default ``"mining_statistics"``); the logs use the keys
            of :data:`STATISTICS`, not this name.
        prefix: prepended to every key (default ``""``).
        dtype: the dtype of the accumulators and results (default: Keras' float type).

    Example:

    >>> import keras, numpy as np
    >>> from triplet_tools import TripletLoss
    >>> loss = TripletLoss(margin=0.5)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile("adam", loss, metrics=[MiningStatistics(loss)])
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> y = np.array([0, 0, 1, 1, 2, 2, 3, 4])          # classes 3 and 4 have no positive
    >>> logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    >>> sorted(logs), logs["valid_anchors"]
    (['active_triplets', 'loss', 'mean_d_an', 'mean_d_ap', 'valid_anchors'], 0.75)
    """

    def __init__(self, loss, name="mining_statistics", prefix="", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, TripletFamilyLoss):
            raise ValueError(
                "loss must be a triplet_tools loss (TripletLoss, PNLoss, PrimingLoss or "
                f"one of the triplet_batch_*_loss functions' results); received {loss!r}."
            )
        self.loss = loss
        self.prefix = check_string(prefix, "prefix")
        # Set by the loss when it hands over what it mined, read by the next update_state.
        self._fed_by_loss = False
        loss.report_to(self)
        counters = ("anchors", "valid", "active", "sum_d_ap", "sum_d_an")
        self._counters = {
            counter: self.add_variable(
                shape=(), initializer="zeros", dtype=self.dtype, name=counter
            )
            for counter in counters
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the counts of what the loss mined in this step; ``sample_weight`` is ignored.

        Inside ``fit`` / ``evaluate`` Keras calls the loss before the metrics, and the loss
        hands this metric what it mined (:meth:`accumulate`), so nothing is mined twice
        and the counts are those of the loss's own references (its memory, the global
        batch). Called on its own, the metric mines the batch as the loss would.
        """
        if self._fed_by_loss:
            self._fed_by_loss = False
            return
        triplets, _ = self.loss.mine_batch(y_true, y_pred, as_last_seen=True)
        self._add(triplets)

    def accumulate(self, triplets):
        """Called by the loss with the :class:`~triplet_tools.losses.AnchorTriplets` it mined."""
        self._add(triplets)
        self._fed_by_loss = True

    def _add(self, triplets):
        valid = ops.cast(triplets.valid, self.dtype)
        active = ops.cast(triplets.loss > 0, self.dtype) * valid
        increments = {
            "anchors": ops.sum(ops.ones_like(valid)),
            "valid": ops.sum(valid),
            "active": ops.sum(active),
            # where, not a product: an invalid anchor's distances may be anything.
            "sum_d_ap": ops.sum(
                ops.where(triplets.valid, ops.cast(triplets.positive_distance, self.dtype), 0)
            ),
            "sum_d_an": ops.sum(
                ops.where(triplets.valid, ops.cast(triplets.negative_distance, self.dtype), 0)
            ),
        }
        for counter, increment in increments.items():
            self._counters[counter].assign_add(ops.stop_gradient(increment))

    def result(self):
        # Tensors, not Variables: traced JAX functions reject a Keras Variable argument.
        counts = {name: ops.convert_to_tensor(v) for name, v in self._counters.items()}
        values = (
            ops.divide_no_nan(counts["valid"], counts["anchors"]),
            ops.divide_no_nan(counts["active"], counts["valid"]),
            ops.divide_no_nan(counts["sum_d_ap"], counts["valid"]),
            ops.divide_no_nan(counts["sum_d_an"], counts["valid"]),
        )
        return {self.prefix + key: value for key, value in zip(STATISTICS, values)}

    def reset_state(self):
        for variable in self._counters.values():
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {
            "loss": keras.saving.serialize_keras_object(self.loss),
            "name": self.name,
            "prefix": self.prefix,
            "dtype": self.dtype,
        }


__all__ = ["STATISTICS", "MiningStatistics"]
