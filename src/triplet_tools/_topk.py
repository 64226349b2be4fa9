"""The exact blocked top-k shared by :func:`~triplet_tools.evaluation.retrieval_metrics` and
:class:`~triplet_tools.index.EmbeddingIndex`.

Queries are compared with every reference in blocks of rows, so that peak memory is
O(block x N + N x D), never O(Q x N). Within a block the ``k`` smallest distances of each row
are found with ``argpartition`` (O(N) per row) and ordered by (distance, column): of equal
distances the lower column ranks first.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from triplet_tools.mining.blocks import rows_per_block, scores_per_row

#: Distance-matrix elements computed at once (16 MB in float32).
BLOCK_ELEMENTS = 2**22


def query_block_rows(num_queries, num_references, dim, distance, elements=None):
    """Queries per block so that one block's distances stay near ``elements`` (4M by default).

    :func:`~triplet_tools.mining.blocks.rows_per_block` over the distance's row width
    (:func:`~triplet_tools.mining.blocks.scores_per_row`: a distance whose ``pairwise``
    builds ``(n, m, D)`` differences, Manhattan, gets blocks ``D`` times smaller), and at
    least one query even when there are none (a ``range`` step).

    Example:

    >>> from triplet_tools.distances import get
    >>> query_block_rows(100_000, 100_000, 64, get("cosine"))
    41
    """
    per_row = scores_per_row(num_references, dim, distance)
    return max(1, rows_per_block(num_queries, per_row, elements or BLOCK_ELEMENTS))


#: The bound of :func:`nearest` splits a row into this many chunks per neighbour sought, and
#: is used when each chunk holds at least MIN_CHUNK_WIDTH columns.
CHUNKS_PER_NEIGHBOR = 4
MIN_CHUNK_WIDTH = 16
#: Above this many candidates per neighbour sought (many ties), the partition is cheaper.
MAX_CANDIDATES_PER_NEIGHBOR = 64


def nearest(block, depth):
    """Column indices of the ``depth`` smallest entries of each row, ordered by (value, index).

    Rows much longer than ``depth`` take a bound first: split into ``4 x depth`` chunks, the
    ``depth``-th smallest chunk minimum ``t`` is at least the row's ``depth``-th smallest
    value (those ``depth`` minima are distinct entries ``<= t``), so every entry ``<= t`` —
    ties at the boundary included — holds the answer: three vectorised passes (minima,
    compare, nonzero) and a sort of the few candidates, instead of a partition of the row.
    Otherwise :func:`nearest_by_partition`. Either way the lower index wins a tie.

    Example:

    >>> nearest(np.array([[3.0, 1.0, 1.0, 0.0]]), 3).tolist()
    [[3, 1, 2]]
    """
    if depth == 0 or len(block) == 0:
        return np.zeros((len(block), depth), np.int64)
    rows, width = block.shape
    chunks = CHUNKS_PER_NEIGHBOR * depth
    if width // chunks < MIN_CHUNK_WIDTH:
        return nearest_by_partition(block, depth)
    span = chunks * (width // chunks)
    minima = np.min(block[:, :span].reshape(rows, chunks, -1), axis=2)
    bound = np.partition(minima, depth - 1, axis=1)[:, depth - 1 : depth]
    row, column = np.nonzero(block <= bound)
    if len(row) > MAX_CANDIDATES_PER_NEIGHBOR * depth * rows:
        return nearest_by_partition(block, depth)
    order = np.lexsort((column, block[row, column], row))
    row, column = row[order], column[order]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(rows))[row]
    return column[rank < depth].reshape(rows, depth).astype(np.int64, copy=False)


def nearest_by_partition(block, depth):
    """:func:`nearest` by ``argpartition`` (O(M) per row), which may pick any of the entries
    tied with the ``depth``-th value; rows with such a tie are redone exactly (a stable sort of
    every entry up to that value), so the lower index always wins.

    Example:

    >>> nearest_by_partition(np.array([[3.0, 1.0, 1.0, 0.0]]), 3).tolist()
    [[3, 1, 2]]
    """
    if depth == 0 or len(block) == 0:
        return np.zeros((len(block), depth), np.int64)
    if depth < block.shape[1]:
        candidates = np.argpartition(block, depth - 1, axis=1)[:, :depth]
    else:
        candidates = np.broadcast_to(np.arange(block.shape[1]), block.shape)
    values = np.take_along_axis(block, candidates, axis=1)
    order = np.lexsort((candidates, values), axis=1)
    ranked = np.take_along_axis(candidates, order, axis=1)
    boundary = np.take_along_axis(values, order[:, -1:], axis=1)
    for row in np.flatnonzero(np.count_nonzero(block <= boundary, axis=1) > depth):
        within = np.flatnonzero(block[row] <= boundary[row, 0])
        ranked[row] = within[np.argsort(block[row, within], kind="stable")][:depth]
    return ranked.astype(np.int64, copy=False)


def top_k(block_scores, queries, num_references, k, rows, workers=1):
    """The ``k`` smallest scores of every query, exactly, in blocks of ``rows`` queries.

    Args:
        block_scores: maps a block of ``queries`` (a slice) to its ``(b, N)`` NumPy scores
            against every reference: the distances, or any per-row increasing function of
            them. It may return a fresh array that this function then overwrites.
        queries: ``(Q, ...)`` array (only sliced here).
        num_references: ``N``.
        k: neighbours per query, ``1 <= k <= N``.
        rows: queries per block (:func:`query_block_rows`).
        workers: threads that select within a block (NumPy's partition releases the GIL).

    Returns:
        ``(scores (Q, k) float32, columns (Q, k) int64)``, ascending, ties by the lower
        column.

    Example:

    >>> refs = np.array([2.0, -1.0, 1.0])
    >>> d, i = top_k(lambda q: np.abs(q - refs), np.array([[0.0]]), 3, 2, rows=1)
    >>> d.tolist(), i.tolist()
    ([[1.0, 1.0]], [[1, 2]])
    """
    scores = np.empty((len(queries), k), np.float32)
    columns = np.empty((len(queries), k), np.int64)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, len(queries), rows):
            stop = min(start + rows, len(queries))
            block = np.asarray(block_scores(queries[start:stop]))
            if block.shape != (stop - start, num_references):
                raise ValueError(
                    f"a block of distances must have shape {(stop - start, num_references)}; "
                    f"received {block.shape}."
                )
            if pool is None or len(block) < 2 * workers:
                ranked = nearest(block, k)
            else:
                bounds = np.linspace(0, len(block), workers + 1).astype(int)
                views = [block[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # no copies
                ranked = np.concatenate(list(pool.map(nearest, views, [k] * workers)))
            columns[start:stop] = ranked
            scores[start:stop] = np.take_along_axis(block, ranked, axis=1)
    finally:
        if pool is not None:
            pool.shutdown()
    return scores, columns
