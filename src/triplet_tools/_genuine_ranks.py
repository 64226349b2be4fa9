"""The AUC's count of genuines under each impostor, for the exact verification metrics.

``2 #(gen < imp) + #(gen == imp)`` summed over a sorted block of impostor distances, either
by binary searches of every genuine in the block (few genuines: ``G log B <= B``) or by a
table of the genuines' ranks looked up once per impostor key (many genuines: at N = 100,000
there are 10⁷, and searching each of them in every block would cost ``G log B`` a block).
"""

import numpy as np

#: Buckets of the table that ranks impostors among the genuines (4 bytes each).
_RANK_TABLE = 2**25
#: The AUC binary-searches each genuine in a block when G log2 B <= this x B (few genuines).
_SEARCH_SHARE = 1.0
#: Impostor keys looked up at once (bounds the look-ups' temporaries).
_RANK_CHUNK = 2**22


def _searched(genuine, impostors):
    """Whether binary searches of the genuines (G log B) cost less than B table look-ups."""
    return genuine * np.log2(max(impostors, 2)) <= _SEARCH_SHARE * impostors


def _auc_twice_searched(genuine, sorted_values):
    """``2 #(gen < imp) + #(gen == imp)`` by binary searches of each genuine."""
    below = np.searchsorted(sorted_values, genuine, "left")
    upto = np.searchsorted(sorted_values, genuine, "right")
    return int(2 * (len(sorted_values) * len(genuine) - upto.sum()) + (upto - below).sum())


class _GenuineRanks:
    """``#(genuine < key)`` and ``#(genuine <= key)`` of any key by one table look-up.

    The table counts the genuines under the start of every bucket of ``2**shift`` keys over
    the genuines' key range (``shift`` 0, one bucket a key, unless that range passes
    ``_RANK_TABLE`` buckets); keys of buckets that hold genuines are binary-searched when
    ``shift > 0``.
    """

    def __init__(self, genuine_keys, histogram):
        self.keys = genuine_keys
        # the table spans the genuine keys within the impostors' (top bits ``histogram`` counts)
        filled = np.flatnonzero(histogram)
        top = 8 * genuine_keys.dtype.itemsize - (len(histogram).bit_length() - 1)
        low = max(int(genuine_keys[0]), int(filled[0]) << top)
        high = min(int(genuine_keys[-1]), ((int(filled[-1]) + 1) << top) - 1)
        low, high = min(low, high), max(low, high)
        self.shift = 0
        while (high >> self.shift) - (low >> self.shift) + 3 > _RANK_TABLE:
            self.shift += 1
        unsigned = genuine_keys.dtype.type
        self.first = (low >> self.shift) - 1  # the bucket of index 0: under the table
        last = high >> self.shift
        under = int(np.searchsorted(genuine_keys, unsigned(low >> self.shift << self.shift)))
        over = len(genuine_keys)
        if last < int(genuine_keys[-1]) >> self.shift:
            over = int(np.searchsorted(genuine_keys, unsigned((last + 1) << self.shift)))
        wide = np.uint32 if len(genuine_keys) < 2**32 else np.int64
        # table[j]: the genuines under bucket first + j
        self.table = np.empty(last - self.first + 3, wide)
        self.table[:2] = under
        self.table[-1] = len(genuine_keys)
        self.table[2:-1] = 0
        for chunk in range(under, over, _RANK_CHUNK):
            keys = genuine_keys[chunk : min(chunk + _RANK_CHUNK, over)]
            index = ((keys >> unsigned(self.shift)) - unsigned(self.first + 1)).astype(np.intp)
            runs = np.concatenate([[0], np.flatnonzero(np.diff(index)) + 1])  # sorted keys
            self.table[2:-1][index[runs]] += np.diff(np.append(runs, len(index))).astype(wide)
        np.cumsum(self.table[1:-1], dtype=wide, out=self.table[1:-1])

    def auc_twice(self, sorted_keys):
        """``2 #(gen < imp) + #(gen == imp)`` summed over the impostors of ``sorted_keys``
        (sorted: the keys under and over every genuine are a prefix and a suffix, and the
        look-ups walk the table in order)."""
        unsigned = sorted_keys.dtype.type
        low = unsigned(self.first + 1) << unsigned(self.shift)
        high = self.keys[-1]
        start = int(np.searchsorted(sorted_keys, low, "left"))
        stop = int(np.searchsorted(sorted_keys, high, "right"))
        # under the table: no genuine, or no impostor; over it: every genuine
        total = 2 * int(self.table[0]) * start + 2 * len(self.keys) * (len(sorted_keys) - stop)
        below_table, upto_table = self.table[1:-1], self.table[2:]
        for chunk in range(start, stop, _RANK_CHUNK):
            keys = sorted_keys[chunk : min(chunk + _RANK_CHUNK, stop)]
            index = ((keys >> unsigned(self.shift)) - unsigned(self.first + 1)).astype(np.intp)
            below = below_table[index]
            upto = upto_table[index]
            if self.shift == 0:
                total += int(below.sum(dtype=np.int64)) + int(upto.sum(dtype=np.int64))
                continue
            shared = np.flatnonzero(upto != below)  # buckets with genuines: search exactly
            inside = keys[shared]
            total += int(
                2 * (below.sum(dtype=np.int64) - below[shared].sum(dtype=np.int64))
                + np.searchsorted(self.keys, inside, "left").sum(dtype=np.int64)
                + np.searchsorted(self.keys, inside, "right").sum(dtype=np.int64)
            )
        return total
