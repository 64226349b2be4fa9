"""The base of the metrics callbacks (:class:`~triplet_tools.evaluation.RetrievalMetricsCallback`,
:class:`~triplet_tools.evaluation.VerificationMetricsCallback`): one home for their data
checks, ``every``, ``epochs`` / ``history`` and what they write into ``logs``."""

import keras

from triplet_tools import distances as distances_module
from triplet_tools._evaluation_checks import as_labels, count_inputs, describe
from triplet_tools._validation import check_int, check_string


class EmbeddingMetricsCallback(keras.callbacks.Callback):
    """What the metrics callbacks share: the held-out data and its checks, ``every``, the
    epochs and ``history``, and the values written into ``logs``. A subclass calls
    :meth:`_set_names` with its metric names and computes them in :meth:`_compute`."""

    def __init__(self, x, y, ref_x, ref_y, *, every, distance, batch_size, prefix):
        super().__init__()
        self.every = check_int(every, "every", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.prefix = check_string(prefix, "prefix")
        if (ref_x is None) != (ref_y is None):
            raise ValueError(
                "ref_x and ref_y must be given together; received "
                f"ref_x={describe(ref_x)} and ref_y={describe(ref_y)}."
            )
        self.x, self.ref_x = x, ref_x
        self.y = as_labels(y, count_inputs(x, "x"), "y", "x")
        self.ref_y = (
            None
            if ref_x is None
            else as_labels(ref_y, count_inputs(ref_x, "ref_x"), "ref_y", "ref_x")
        )
        self.distance = distances_module.get(distance)

    def _set_names(self, names, log_metrics):
        self._names = list(names)
        self.log_metrics = self._names if log_metrics is None else list(log_metrics)
        unknown = [name for name in self.log_metrics if name not in self._names]
        if unknown or not self.log_metrics:
            raise ValueError(
                f"log_metrics must name some of {', '.join(self._names)}; received {log_metrics!r}."
            )
        self.epochs: list[int] = []
        self.history: dict[str, list[float]] = {name: [] for name in self._names}

    def _compute(self, embeddings, references):
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self.epochs = []
        self.history = {name: [] for name in self._names}

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == (self.params or {}).get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        metrics = self.evaluate()
        self.epochs.append(epoch)
        for name, value in metrics.items():
            self.history[name].append(value)
        if logs is not None:
            logs.update({self.prefix + name: metrics[name] for name in self.log_metrics})

    def evaluate(self):
        """The metrics of the current model on the callback's data, as a dict."""
        embed = lambda inputs: self.model.predict(  # noqa: E731
            inputs, batch_size=self.batch_size, verbose=0
        )
        references = None if self.ref_x is None else embed(self.ref_x)
        return self._compute(embed(self.x), references)
