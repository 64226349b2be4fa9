"""Class-balanced batches (P classes x K samples) for online mining.

Online mining can only use a triplet whose positive is in the same batch. With plain random
batches most anchors of a many-class problem have no positive: drawing ``B`` samples from
``C`` equally frequent classes, an anchor finds no other sample of its class with probability
about ``(1 - 1/C)^(B - 1)``: 94% of the anchors for ``C = 1000`` and ``B = 64``. Such anchors
are *invalid*: they are left out of the loss and teach nothing. A batch of ``P`` classes with
``K >= 2`` samples each makes every anchor valid and gives each one ``K - 1`` positives and
``(P - 1) K`` negatives to mine from.
"""

import keras
import numpy as np

from triplet_tools._validation import as_label_vector, check_class_ids, check_int


class ClassBalancedBatches(keras.utils.PyDataset):
    """Batches of ``P`` distinct classes with ``K`` samples each, reproducible from a seed.

    ```
    batch = for each of P classes drawn without replacement from the eligible classes:
                K samples of that class
    ```

    Rules:

    * A class is *eligible* when it has at least 2 samples (one sample cannot form a
      positive pair); classes with a single sample are never drawn.
    * A class with at least ``K`` samples contributes ``K`` distinct samples.
    * A class with ``2 <= n < K`` samples contributes all ``n`` of them and fills the other
      ``K - n`` places by going through its samples again in a new random order, so each
      appears ``floor(K/n)`` or ``ceil(K/n)`` times. Every batch keeps the fixed shape
      ``(P*K, ...)``, so a compiled training step is traced once. The copies are exact
      duplicates at distance 0; hard-positive mining picks the farthest positive, which is
      a different sample whenever the class's samples differ.

    The batches depend only on ``(seed, e)``, where ``e`` (the ``epoch`` attribute) counts
    the calls to ``on_epoch_end``: ``__getitem__`` is a pure lookup into a table drawn when
    ``e`` changes, so the batches are reproducible and do not depend on the order in which
    Keras requests them. Keras calls ``on_epoch_end`` after every epoch (and once more when
    ``fit`` starts, after peeking at a batch), so every epoch gets new batches and the same
    seed repeats the same training. They are already in random order: pass
    ``shuffle=False`` to ``model.fit`` so that Keras does not reorder them with Python's
    unseeded ``random`` module.

    Args:
        x: ``(N, ...)`` inputs (a NumPy array or anything indexable by an index array), or
            a dict of them for a model with several inputs (batches then yield dicts).
        y: ``(N,)`` or ``(N, 1)`` integer class ids (floats holding whole numbers are
            accepted); batches yield them as ``(P*K,)``. String labels are refused, as the
            losses refuse them: map them to ids first, e.g.
            ``numpy.unique(y, return_inverse=True)[1]``.
        classes_per_batch: ``P >= 2``, at most the number of eligible classes.
        samples_per_class: ``K >= 2``.
        batches_per_epoch: batches in one epoch; default ``max(1, n_eligible // (P*K))``, so
            an epoch draws about as many samples as the eligible classes hold.
        seed: an int >= 0; the same seed gives the same batches.
        **kwargs: ``keras.utils.PyDataset`` arguments (``workers``, ``use_multiprocessing``,
            ``max_queue_size``).

    Raises:
        ValueError: for ``P < 2`` or ``K < 2``, mismatched lengths, labels that are not
            class ids (strings, fractions, NaN), a negative seed, or fewer than ``P``
            eligible classes (the message lists the class sizes).

    Example:

    >>> import numpy as np
    >>> y = np.repeat(np.arange(5), 4)
    >>> batches = ClassBalancedBatches(np.arange(20.0)[:, None], y, classes_per_batch=3,
    ...                                samples_per_class=2, seed=0)
    >>> len(batches), batches[0][0].shape
    (3, (6, 1))
    >>> np.unique(batches[0][1], return_counts=True)[1].tolist()
    [2, 2, 2]

    In training: ``model.fit(batches, epochs=10, shuffle=False)``.

    Reference:
        Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification", 2017 (P x K batches).
    """

    def __init__(
        self, x, y, classes_per_batch, samples_per_class, batches_per_epoch=None, seed=0, **kwargs
    ):
        super().__init__(**kwargs)
        classes_per_batch = check_int(classes_per_batch, "classes_per_batch", minimum=2)
        samples_per_class = check_int(samples_per_class, "samples_per_class", minimum=2)
        batches_per_epoch = check_int(
            batches_per_epoch, "batches_per_epoch", minimum=1, allow_none=True
        )
        seed = check_int(seed, "seed", minimum=0)
        labels = check_class_ids(as_label_vector(y, _count_rows(x), "y", "x"), "y")
        classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        eligible = np.flatnonzero(sizes >= 2)
        if len(eligible) < classes_per_batch:
            raise ValueError(
                f"classes_per_batch={classes_per_batch} needs that many classes with at least "
                f"2 samples; received {len(eligible)} such classes (class sizes: "
                f"{_describe_sizes(classes, sizes)})."
            )
        if batches_per_epoch is None:
            batches_per_epoch = max(
                1, int(sizes[eligible].sum()) // (classes_per_batch * samples_per_class)
            )
        self.batches_per_epoch = batches_per_epoch
        self.x, self.y = x, labels
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.seed = seed
        # Sample indices of every eligible class, in the order of np.unique.
        self.members = [np.flatnonzero(inverse == c) for c in eligible]
        self.epoch = 0
        self._table = self.epoch_indices(0)

    def __len__(self):
        return self.batches_per_epoch

    def __getitem__(self, index):
        rows = self._table[index]
        if isinstance(self.x, dict):
            return {name: inputs[rows] for name, inputs in self.x.items()}, self.y[rows]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        self.epoch += 1
        self._table = self.epoch_indices(self.epoch)

    def epoch_indices(self, epoch):
        """The ``(batches_per_epoch, P*K)`` sample indices of ``epoch``, from ``(seed, epoch)``."""
        rng = np.random.default_rng([self.seed, epoch])
        table = np.empty(
            (self.batches_per_epoch, self.classes_per_batch * self.samples_per_class), np.int64
        )
        for batch in range(self.batches_per_epoch):
            chosen = rng.choice(len(self.members), self.classes_per_batch, replace=False)
            table[batch] = np.concatenate([self._draw(self.members[c], rng) for c in chosen])
        return table

    def _draw(self, members, rng):
        if len(members) >= self.samples_per_class:
            return rng.choice(members, self.samples_per_class, replace=False)
        rounds = -(-self.samples_per_class // len(members))
        return np.concatenate([rng.permutation(members) for _ in range(rounds)])[
            : self.samples_per_class
        ]


def _count_rows(x):
    """The number of samples in ``x``: its length, or the common length of a dict's inputs."""
    if not isinstance(x, dict):
        if not hasattr(x, "__len__") or isinstance(x, (str, bytes)):
            raise ValueError(
                f"x must be an array of N inputs (or a dict of them); received {type(x).__name__}."
            )
        return len(x)
    sizes = {name: len(inputs) for name, inputs in x.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            "x must be a dict of inputs with the same number of rows; received "
            f"{sizes if sizes else 'no inputs'}."
        )
    return next(iter(sizes.values()))


def _describe_sizes(classes, sizes, shown=10):
    pairs = [f"{c}: {n}" for c, n in zip(classes[:shown], sizes[:shown])]
    more = f", ... ({len(classes) - shown} more)" if len(classes) > shown else ""
    return "{" + ", ".join(pairs) + more + "}"


__all__ = ["ClassBalancedBatches"]
