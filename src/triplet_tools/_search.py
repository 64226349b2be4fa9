"""The search engines behind :class:`~triplet_tools.index.EmbeddingIndex`.

The exact engine compares blocks of queries with every stored row and keeps the ``k``
nearest with the blocked top-k that :func:`~triplet_tools.evaluation.retrieval_metrics`
uses (:mod:`triplet_tools._topk`). The built-in distances compute their blocks in NumPy:
measured faster than the Keras backends on CPU (docs/performance.md, "Search"), and the
same bits on every backend, so a saved index answers alike wherever it is loaded. A
user-defined :class:`~triplet_tools.distances.Distance` runs its own ``keras.ops``.

The faiss engine (optional) finds candidates with an HNSW graph; the distances of the ids
it returns are then recomputed here, exactly, in the library's units.
"""

import os

import numpy as np
from keras import ops

from triplet_tools import distances as distances_module
from triplet_tools._topk import query_block_rows, top_k

INSTALL_FAISS = 'pip install "triplet-tools[faiss]"'

#: The built-in distances whose rows are normalised before comparing.
_NORMALISED = ("cosine", "euclidean_norm")
#: How faiss serves each built-in distance: unit rows by inner product, or plain L2.
FAISS_METRICS = {
    "cosine": "inner_product",
    "euclidean_norm": "inner_product",
    "euclidean": "l2",
    "squared_euclidean": "l2",
}


def builtin_name(distance):
    """The name of a built-in distance, or ``None`` for a user-defined one."""
    if distances_module.serialize(distance) == distance.name:
        return distance.name
    return None


def unit_rows(x):
    """Rows scaled to unit length (the zero row stays zero), as the library normalises."""
    largest = np.max(np.abs(x), axis=1, keepdims=True)
    scaled = x / np.where(largest > 0, largest, 1)
    norms = np.sqrt(np.sum(scaled * scaled, axis=1, keepdims=True))
    return (scaled / np.where(norms > 0, norms, 1)).astype(x.dtype, copy=False)


def features(distance, rows):
    """The stored form of ``rows`` for ``distance``: unit rows for the normalised
    distances, the rows themselves for the others, a backend tensor for a user-defined one."""
    name = builtin_name(distance)
    if name in _NORMALISED:
        return unit_rows(rows)
    if name is not None:
        return rows
    return distance.mining_features(ops.convert_to_tensor(rows))


#: Distances the exact engine computes at once for the built-in distances (64 MB in
#: float32): larger blocks than ``retrieval_metrics``' read the stored rows fewer times.
BLOCK_ELEMENTS = 2**24
#: Threads that select the k nearest within a block.
WORKERS = max(1, min(4, os.cpu_count() or 1))


def _block_scores(name, positions, all_queries, references, reference_norms):
    """``(b, N)`` scores of the feature rows ``all_queries[positions]`` against every
    reference, increasing with the distance along each row: ``-q.x`` (cosine),
    ``||x||^2 - 2 q.x`` (the Euclidean family: ``||q||^2`` is the same along a row), the
    distance itself (Manhattan). The factor goes on the few query rows, not on the block,
    and the norms are added in place: one pass over the block after the product."""
    queries = all_queries[positions]
    if name == "manhattan":
        return np.sum(np.abs(queries[:, None, :] - references[None, :, :]), axis=-1)
    if name == "cosine":
        return (-queries) @ references.T
    scores = (-2 * queries) @ references.T
    scores += reference_norms
    return scores


def exact_search(distance, queries, references, k):
    """``(distances, columns)`` of the ``k`` nearest ``references`` (features) per query."""
    name = builtin_name(distance)
    if name is None:
        return top_k(
            lambda block: ops.convert_to_numpy(
                distance.pairwise_features(
                    distance.mining_features(ops.convert_to_tensor(block)), references
                )
            ),
            queries,
            int(references.shape[0]),
            k,
            query_block_rows(len(queries), int(references.shape[0]), queries.shape[1], distance),
        )
    unit_queries = features(distance, queries)
    norms = np.sum(references * references, axis=1)
    _, columns = top_k(
        lambda block: _block_scores(name, block, unit_queries, references, norms),
        np.arange(len(queries)),
        len(references),
        k,
        query_block_rows(len(queries), len(references), queries.shape[1], distance, BLOCK_ELEMENTS),
        WORKERS,
    )
    # The k found are measured again, directly: the products above rank well but lose small
    # distances to cancellation (a row found again at 1e-3 from itself instead of 0).
    return sort_neighbors(paired_distances(distance, queries, references[columns]), columns)


def sort_neighbors(distances, columns):
    """Each row's neighbours ordered by (distance, column), as float32."""
    distances = distances.astype(np.float32)
    order = np.lexsort((columns, distances), axis=1)
    return np.take_along_axis(distances, order, 1), np.take_along_axis(columns, order, 1)


def paired_distances(distance, queries, references):
    """``(Q, k)`` distances of each query ``(Q, D)`` to its ``(Q, k, D)`` rows (features)."""
    name = builtin_name(distance)
    queries = features(distance, queries)
    if name == "cosine":
        return 1 - np.einsum("qd,qkd->qk", queries, references)
    difference = queries[:, None, :] - references
    if name == "manhattan":
        return np.sum(np.abs(difference), axis=-1)
    squared = np.einsum("qkd,qkd->qk", difference, difference)
    return squared if name == "squared_euclidean" else np.sqrt(squared)


def import_faiss():
    """The ``faiss`` module, or an ``ImportError`` that gives the install command."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency)
    except ImportError as error:
        raise ImportError(
            f'engine="faiss" needs faiss, which is not installed: {INSTALL_FAISS}'
        ) from error
    return faiss


def new_faiss_index(distance_name, dim, hnsw_m, ef_construction):
    """An empty ``IndexIDMap2(IndexHNSWFlat)`` for ``distance_name``."""
    faiss = import_faiss()
    metric = (
        faiss.METRIC_INNER_PRODUCT
        if FAISS_METRICS[distance_name] == "inner_product"
        else faiss.METRIC_L2
    )
    graph = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
    graph.hnsw.efConstruction = ef_construction
    return faiss.IndexIDMap2(graph)


def faiss_candidates(faiss_index, queries, k, ef_search):
    """The ids faiss returns for ``queries`` (feature rows); -1 where it found fewer."""
    faiss = import_faiss()
    parameters = faiss.SearchParametersHNSW()
    parameters.efSearch = max(ef_search, k)
    _, ids = faiss_index.search(np.ascontiguousarray(queries, np.float32), k, params=parameters)
    return ids.astype(np.int64, copy=False)


def serialize_faiss(faiss_index):
    """The faiss index as a ``uint8`` array (faiss' own format, no pickle)."""
    return np.asarray(import_faiss().serialize_index(faiss_index), np.uint8)


def deserialize_faiss(data):
    return import_faiss().deserialize_index(np.ascontiguousarray(data, np.uint8))
