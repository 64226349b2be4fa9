"""Re-identification helpers of ``retrieval_metrics``: the group rule and full-ranking AP.

With groups (camera ids), a reference with the query's label **and** the query's group is
removed from that query's ranking (Market-1501); the relevant references are the others with
the query's label. Full-ranking AP over the ``R`` relevant references at ranks
``rank_1 < ... < rank_R`` of the ranking (ties broken by reference index) is
``(1/R) sum_m m / rank_m``.
"""

import numpy as np


class Relevance:
    """Which references are relevant to, or removed for, each query, from label and group codes.

    Args:
        query_labels, reference_labels: ``(N,)``, ``(M,)`` label arrays (any comparable type).
        query_groups, reference_groups: ``(N,)``, ``(M,)`` group arrays, or both ``None``.
        leave_one_out: the references are the queries, and a query is never its own reference.
    """

    def __init__(
        self, query_labels, reference_labels, query_groups, reference_groups, leave_one_out
    ):
        self.leave_one_out = leave_one_out
        count = len(query_labels)
        _, labels = np.unique(np.concatenate([query_labels, reference_labels]), return_inverse=True)
        self.query_labels, self.reference_labels = labels[:count], labels[count:]
        self.grouped = query_groups is not None
        if self.grouped:
            _, groups = np.unique(
                np.concatenate([query_groups, reference_groups]), return_inverse=True
            )
            self.query_groups, self.reference_groups = groups[:count], groups[count:]

    def counts(self):
        """``R`` per query: its relevant references."""
        same_label = _occurrences(self.query_labels, self.reference_labels)
        if self.grouped:
            width = int(max(self.query_groups.max(), self.reference_groups.max())) + 1
            removed = _occurrences(
                self.query_labels * width + self.query_groups,
                self.reference_labels * width + self.reference_groups,
            )
            return same_label - removed  # the query itself is among the removed
        return same_label - 1 if self.leave_one_out else same_label

    def block(self, start, stop):
        """``(relevant, removed)`` boolean ``(stop - start, M)`` masks of queries start:stop;
        ``removed`` is None without groups (leave-one-out's query itself is not relevant)."""
        rows = np.arange(stop - start)
        relevant = self.reference_labels[None, :] == self.query_labels[start:stop, None]
        removed = None
        if self.grouped:
            same_group = self.reference_groups[None, :] == self.query_groups[start:stop, None]
            removed = relevant & same_group
            relevant &= ~same_group
        if self.leave_one_out:
            relevant[rows, rows + start] = False
        return relevant, removed


def _occurrences(queries, references):
    """For each query value, how many references hold it."""
    values, sizes = np.unique(references, return_counts=True)
    position = np.clip(np.searchsorted(values, queries), 0, len(values) - 1)
    return np.where(values[position] == queries, sizes[position], 0)


def average_precision_sum(block, relevant):
    """Sum over the rows of full-ranking AP; ``block`` (b, M) distances with the removed
    references already at +inf, ``relevant`` (b, M) bool, every row with at least one.

    A relevant reference's rank is 1 + the references before it: smaller distance, or equal
    distance and smaller index.
    """
    ordered = np.sort(block, axis=1)
    total = 0.0
    for row in range(len(block)):
        columns = np.flatnonzero(relevant[row])
        values = block[row, columns]
        before = np.searchsorted(ordered[row], values, "left")
        tied = np.searchsorted(ordered[row], values, "right") - before
        for i in np.flatnonzero(tied > 1):  # equal distances: the lower index ranks first
            before[i] += np.count_nonzero(block[row, : columns[i]] == values[i])
        ranks = np.sort(before) + 1
        total += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return total
