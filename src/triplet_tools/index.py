"""Search a trained embedding: :class:`EmbeddingIndex`, its :class:`Neighbors` and the
:class:`~triplet_tools.calibration.Calibration` that turns a distance into match or unknown.

```python
index = EmbeddingIndex(distance="cosine")
index.add(gallery, labels)                     # ids 0, 1, 2, ...
distances, ids, labels = index.search(queries, k=10)
cal = index.calibrate(held_out, held_out_labels, metric="precision", target=0.99)
predicted = index.match(queries, cal)          # the label, or -1 for unknown
index.save("gallery.index"); EmbeddingIndex.load("gallery.index")
```

The exact engine returns the brute-force answer over the distance's pairwise matrix: the
``k`` smallest distances ascending, ties broken by the smaller id, in the library's units
(``cosine``: ``1 - cos``). It searches in blocks of queries: peak memory O(block x N + N x D).
"""

from typing import Any, NamedTuple

import numpy as np

from triplet_tools import _search
from triplet_tools import calibration as _calibration
from triplet_tools import distances as distances_module
from triplet_tools._index_checks import as_ids, as_labels, as_rows, check_unknown, show
from triplet_tools._index_io import load_index, save_index
from triplet_tools._validation import check_choice, check_int
from triplet_tools.calibration import METRICS, VOTES, Calibration, calibrate_from_votes

ENGINES = ("exact", "faiss")


class Neighbors(NamedTuple):
    """The result of :meth:`EmbeddingIndex.search`: ``(Q, k)`` NumPy arrays.

    Attributes:
        distances: float32, ascending along each row, in the index's distance units.
        ids: int64 ids of the neighbours.
        labels: their labels, or ``None`` for an index without labels.
    """

    distances: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None


class EmbeddingIndex:
    """Embeddings with ids (and labels) to search, calibrate a threshold on, and match.

    Args:
        distance: a name or alias from ``triplet_tools.distances.DISTANCE_NAMES`` (default
            ``"cosine"``) or a :class:`~triplet_tools.distances.Distance`.
        engine: ``"exact"`` (default: exact blocked search, no dependency) or ``"faiss"``
            (approximate HNSW search from the optional ``faiss-cpu``: ``pip install
            "triplet-tools[faiss]"``; serves ``cosine`` and ``euclidean_norm`` by inner
            product of unit rows, ``euclidean`` and ``squared_euclidean`` by L2; the
            distances it returns are recomputed exactly).
        hnsw_m: faiss HNSW's ``M``, the links per node (default 32).
        ef_construction: faiss HNSW's ``efConstruction`` (default 64).
        ef_search: faiss HNSW's ``efSearch`` (default 256; at least ``k`` at each search).

    Attributes:
        calibration: the last :class:`~triplet_tools.calibration.Calibration` (``None``
            before :meth:`calibrate`); saved with the index.

    Raises:
        ValueError: for an unknown distance or engine, a distance faiss cannot serve
            (``manhattan``, a user-defined one) or bad HNSW parameters.
        ImportError: for ``engine="faiss"`` without faiss installed.

    Example:

    >>> import numpy as np
    >>> index = EmbeddingIndex(distance="euclidean")
    >>> index.add(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]), labels=["a", "b", "a"]).tolist()
    [0, 1, 2]
    >>> distances, ids, labels = index.search(np.array([[0.0, 1.0]]), k=2)
    >>> distances.tolist(), ids.tolist(), labels.tolist()
    ([[1.0, 1.4142135381698608]], [[0, 2]], [['a', 'a']])
    """

    def __init__(
        self, distance="cosine", engine="exact", *, hnsw_m=32, ef_construction=64, ef_search=256
    ):
        self.distance = distances_module.get(distance)
        self.engine = check_choice(engine, ENGINES, "engine")
        self.hnsw_m = check_int(hnsw_m, "hnsw_m", minimum=2)
        self.ef_construction = check_int(ef_construction, "ef_construction", minimum=1)
        self.ef_search = check_int(ef_search, "ef_search", minimum=1)
        if engine == "faiss":
            name = _search.builtin_name(self.distance)
            if name not in _search.FAISS_METRICS:
                raise ValueError(
                    f'engine="faiss" cannot serve distance {self.distance.name!r}; it serves '
                    f'{", ".join(_search.FAISS_METRICS)} (use engine="exact" for the others).'
                )
            _search.import_faiss()
        self.calibration: Calibration | None = None
        self._rows = np.zeros((0, 0), np.float32)  # sorted by id
        self._ids = np.zeros(0, np.int64)
        self._labels: np.ndarray | None = None
        self._has_labels: bool | None = None
        self._features: Any = None  # the rows as the engine compares them, made on demand
        self._faiss = None  # the faiss index, rebuilt on demand after a remove

    def __len__(self):
        return len(self._ids)

    def __repr__(self):
        return (
            f"EmbeddingIndex(distance={self.distance.name!r}, engine={self.engine!r}, "
            f"size={len(self)}, dim={self.dim})"
        )

    @property
    def dim(self):
        """The width ``D`` of the stored embeddings (``None`` before the first ``add``)."""
        return self._rows.shape[1] if self._has_labels is not None else None

    @property
    def ids(self):
        """The ``(N,)`` int64 ids, ascending."""
        return self._ids.copy()

    def add(self, embeddings, labels=None, ids=None):
        """Adds ``(N, D)`` embeddings; returns their ``(N,)`` int64 ids.

        Args:
            embeddings: ``(N, D)`` NumPy array or backend tensor, finite.
            labels: optional ``(N,)`` labels (integers or strings; finite floats too). An
                index holds labels for every entry or for none.
            ids: optional ``(N,)`` unique integer ids not in the index; default
                ``max(existing ids) + 1, + 2, ...`` (from 0 when empty).

        Raises:
            ValueError: naming the problem, with nothing added: a width other than the
                index's, a non-finite row, a duplicate or already-present id, a label count
                other than the row count, labels on an index without labels (or the reverse).
        """
        rows = as_rows(embeddings, "embeddings", self.dim)
        if labels is None and self._has_labels:
            raise ValueError(
                "labels are required: this index holds labels for every entry; received None."
            )
        if labels is not None and self._has_labels is False:
            raise ValueError(
                "this index was created without labels; received labels for "
                f"{len(rows)} rows (pass labels=None)."
            )
        new_labels = None if labels is None else as_labels(labels, len(rows), self._labels)
        new_ids = self._new_ids(ids, len(rows))
        if self._has_labels is None:
            self._rows = np.zeros((0, rows.shape[1]), np.float32)
            self._has_labels = labels is not None
            self._labels = None if new_labels is None else new_labels[:0]
        all_ids = np.concatenate([self._ids, new_ids])
        order = np.argsort(all_ids, kind="stable")
        self._rows = np.concatenate([self._rows, rows])[order]
        self._ids = all_ids[order]
        if self._labels is not None:
            self._labels = np.concatenate([self._labels, new_labels])[order]
        self._features = None
        if self._faiss is not None:  # faiss keeps our ids; only remove rebuilds its graph
            self._faiss.add_with_ids(_search.features(self.distance, rows), new_ids)
        return new_ids.copy()

    def remove(self, ids):
        """Removes the entries with these ids (unknown ids: ``ValueError``, nothing removed)."""
        ids = as_ids(ids, "ids")
        missing = np.setdiff1d(ids, self._ids)
        if len(missing):
            raise ValueError(
                f"{len(missing)} ids are not in the index: {show(missing)}; nothing removed."
            )
        keep = ~np.isin(self._ids, ids)
        self._rows, self._ids = self._rows[keep], self._ids[keep]
        if self._labels is not None:
            self._labels = self._labels[keep]
        self._features = self._faiss = None

    def search(self, queries, k=10):
        """The ``k`` nearest entries of every query (``k`` clipped to the index size).

        Args:
            queries: ``(Q, D)`` NumPy array or backend tensor, finite.
            k: positive int (default 10).

        Returns:
            :class:`Neighbors` of ``(Q, min(k, len(index)))`` arrays, ascending by distance,
            ties broken by the smaller id.

        Raises:
            ValueError: for an empty index, a bad ``k``, or queries of another width or not
                finite.
        """
        k = check_int(k, "k", minimum=1)
        if len(self) == 0:
            raise ValueError("the index is empty; add embeddings before searching it.")
        queries = as_rows(queries, "queries", self.dim, allow_empty=True)
        k = min(k, len(self))
        if self._features is None:
            self._features = _search.features(self.distance, self._rows)
        if self.engine == "faiss":
            distances, columns = self._faiss_search(queries, k)
        else:
            distances, columns = _search.exact_search(self.distance, queries, self._features, k)
        labels = None if self._labels is None else self._labels[columns]
        return Neighbors(distances.astype(np.float32), self._ids[columns], labels)

    def _faiss_search(self, queries, k):
        if self._faiss is None:
            self._faiss = _search.new_faiss_index(
                _search.builtin_name(self.distance), self.dim, self.hnsw_m, self.ef_construction
            )
            self._faiss.add_with_ids(self._features, self._ids)
        found = _search.faiss_candidates(
            self._faiss, _search.features(self.distance, queries), k, self.ef_search
        )
        columns = np.searchsorted(self._ids, np.where(found < 0, self._ids[0], found))
        distances = _search.paired_distances(self.distance, queries, self._features[columns])
        incomplete = np.flatnonzero(np.any(found < 0, axis=1))
        if len(incomplete):  # HNSW found fewer than k: those queries are searched exactly
            exact = _search.exact_search(self.distance, queries[incomplete], self._features, k)
            distances[incomplete], columns[incomplete] = exact
        return _search.sort_neighbors(distances, columns)

    def calibrate(self, embeddings, labels, metric="f1", target=None, k=1, vote="nearest"):
        """Chooses a distance threshold on labelled queries; stores it as ``calibration``.

        See :mod:`triplet_tools.calibration` for the definitions. Calibrate on held-out data:
        a query that is in the index matches itself at distance 0.

        Args:
            embeddings: ``(Q, D)`` calibration queries.
            labels: ``(Q,)`` their true labels (a label absent from the index is a query
                that should be refused).
            metric: ``"f1"`` (default), ``"precision"``, ``"recall"`` or ``"accuracy"``.
            target: ``None`` (default): the largest threshold maximising ``metric``. A number:
                for ``"precision"`` the largest threshold with precision ``>= target``, for the
                other metrics the smallest with the metric ``>= target``.
            k: neighbours per query (default 1).
            vote: ``"nearest"`` (default) or ``"majority"`` (mean of the ``k`` distances).

        Returns:
            The :class:`~triplet_tools.calibration.Calibration`.

        Raises:
            ValueError: for an index without labels, ``k < 1``, an unknown ``metric`` or
                ``vote``, labels of another count or kind, or an unreachable ``target``
                (giving the best value reached).

        Example:

        >>> import numpy as np
        >>> index = EmbeddingIndex("euclidean")
        >>> _ = index.add(np.array([[0.0], [10.0]]), labels=[0, 1])
        >>> cal = index.calibrate(np.array([[1.0], [9.0], [5.0]]), [0, 1, 2])
        >>> cal.threshold, cal.metric, cal.value
        (1.0, 'f1', 1.0)
        >>> index.match(np.array([[0.5], [4.0]])).tolist()
        [0, -1]
        """
        check_choice(metric, METRICS, "metric")
        check_choice(vote, VOTES, "vote")
        k = check_int(k, "k", minimum=1)
        if not self._has_labels:
            raise ValueError("calibrate needs an index with labels; this one has none.")
        neighbors = self.search(embeddings, k)
        truth = as_labels(labels, len(neighbors.ids), self._labels)
        predicted, distances = _calibration.vote(neighbors.distances, neighbors.labels, vote)
        self.calibration = calibrate_from_votes(
            distances, predicted == truth, metric, target, k=k, vote=vote
        )
        return self.calibration

    def match(self, queries, threshold=None, k=1, vote="nearest", unknown=-1):
        """The predicted label of each query where its distance is ``<= threshold``, else
        ``unknown``.

        Args:
            queries: ``(Q, D)`` embeddings.
            threshold: a float, a :class:`~triplet_tools.calibration.Calibration` (its
                threshold, ``k`` and ``vote`` are used) or ``None`` (``index.calibration``).
            k, vote: as in :meth:`calibrate`, when ``threshold`` is a float.
            unknown: the label of a refused query (default -1; a string for string labels).

        Returns:
            ``(Q,)`` NumPy array of labels.

        Raises:
            ValueError: for an index without labels, no threshold and no calibration, or an
                ``unknown`` of another kind than the labels.
        """
        if not self._has_labels:
            raise ValueError("match needs an index with labels; this one has none.")
        if threshold is None:
            if self.calibration is None:
                raise ValueError(
                    "match needs a threshold: pass threshold=<float> or a Calibration, or "
                    "call calibrate first; received threshold=None and no calibration."
                )
            threshold = self.calibration
        if isinstance(threshold, Calibration):
            threshold, k, vote = threshold.threshold, threshold.k, threshold.vote
        elif isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
            raise ValueError(
                f"threshold must be a number, a Calibration or None; received {threshold!r}."
            )
        check_choice(vote, VOTES, "vote")
        assert self._labels is not None
        check_unknown(unknown, self._labels)
        neighbors = self.search(queries, k)
        predicted, distances = _calibration.vote(neighbors.distances, neighbors.labels, vote)
        if self._labels.dtype.kind == "U":
            predicted = predicted.astype(np.result_type(predicted.dtype, np.asarray(unknown)))
        return np.where(distances <= float(threshold), predicted, unknown)

    def _new_ids(self, ids, count):
        if ids is None:
            first = int(self._ids[-1]) + 1 if len(self._ids) else 0
            return np.arange(first, first + count, dtype=np.int64)
        ids = as_ids(ids, "ids")
        if len(ids) != count:
            raise ValueError(f"ids must have shape ({count},); received shape {ids.shape}.")
        values, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"ids must be unique; received duplicates {show(values[counts > 1])}.")
        present = np.intersect1d(ids, self._ids)
        if len(present):
            raise ValueError(f"ids already in the index: {show(present)}; nothing added.")
        return ids

    def save(self, path):
        """Writes the index (and its calibration) to ``path``: NumPy arrays in a ``.npz``
        archive and JSON settings, no pickle."""
        save_index(self, path)

    @classmethod
    def load(cls, path):
        """The index saved at ``path``; a corrupt or foreign file is a ``ValueError``."""
        return load_index(cls, path)


__all__ = ["Calibration", "EmbeddingIndex", "Neighbors"]
