"""Exact pair counts for the verification metrics, in blocks of rows, never the N² pairs.

How it stays exact in O(block x N + genuine pairs) memory: the distances are computed in
blocks of rows, twice. The genuine distances are few (sum over classes of n_c²) and kept,
sorted. The impostors are never kept. The first pass histograms them (``np.bincount``, no
sort) by the top 16 bits of an order-preserving integer key of the float; that locates, for
the EER crossing and for every target FAR, the bucket of keys that holds the answer. The
second pass sorts each block's keys and counts the AUC by looking each key up in a table of
the genuines' ranks (sequential, as the keys are sorted), and either collects the impostors
of each located bucket (when there are few) or histograms their next 16 bits; float32 keys
are resolved after two passes, float64 after at most four."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from keras import ops

from triplet_tools import _genuine_ranks
from triplet_tools import distances as distances_module
from triplet_tools._evaluation_checks import check_finite, check_sets
from triplet_tools._topk import query_block_rows
from triplet_tools._validation import check_int

#: Impostors of one located bucket that are collected rather than histogrammed again.
_COLLECT_LIMIT = 2**22
#: Bits of the key resolved per pass.
_STEP = 16
#: Distance-matrix elements computed at once (64 MB in float32): the backends' matrix
#: products run up to twice as fast per element on blocks of this size than of 4M.
_BLOCK_ELEMENTS = 2**24


def _check_pair_counts(genuine, impostors):
    if genuine == 0 or impostors == 0:
        raise ValueError(
            f"Verification needs genuine and impostor pairs; received {genuine} genuine "
            f"(same label) and {impostors} impostor (different labels) pairs."
        )


class _Codec:
    """Order-preserving unsigned keys of finite floats (``-0.0`` must be made ``+0.0`` first)."""

    def __init__(self, dtype):
        self.float = np.dtype(dtype)
        self.bits = 8 * self.float.itemsize
        self.unsigned = np.dtype(f"uint{self.bits}")
        self.top = self.unsigned.type(1 << (self.bits - 1))
        self.low = self.unsigned.type((1 << (self.bits - 1)) - 1)

    def keys(self, values):
        raw = values.view(self.unsigned)
        return raw ^ ((raw >> self.unsigned.type(self.bits - 1)) * self.low | self.top)

    def values(self, keys):
        """The floats of ``keys``; the key of -0.0 (which the values never hold) gives the
        negative float nearest zero, so that float comparisons do not meet +0.0 there."""
        keys = np.asarray(keys, self.unsigned)
        raw = np.where(keys & self.top, keys ^ self.top, ~keys).astype(self.unsigned)
        values = raw.view(self.float).copy()
        negative_zero = (values == 0) & np.signbit(values)
        values[negative_zero] = -np.finfo(self.float).smallest_subnormal
        return values

    def value(self, key):
        top = 1 << (self.bits - 1)
        raw = key ^ top if key & top else ~key & ((1 << self.bits) - 1)
        return float(np.array(raw, self.unsigned).view(self.float))


class _Pairs:
    """The pairs as blocks of rows: ``blocks()`` yields (genuine, impostor) distance arrays.

    Rows (and references) are sorted by label so that a row's genuine references are one
    contiguous run of columns. Every pass computes the same blocks with the same shapes, so
    a pair's distance is the same float in every pass.
    """

    def __init__(self, embeddings, labels, ref_embeddings, ref_labels, distance, block_size):
        queries, query_labels, references, reference_labels = check_sets(
            embeddings, labels, ref_embeddings, ref_labels
        )
        self.distance = distances_module.get(distance)
        self.leave_one_out = references is None
        if self.leave_one_out:
            references, reference_labels = queries, query_labels
        _, codes = np.unique(np.concatenate([query_labels, reference_labels]), return_inverse=True)
        query_codes, reference_codes = codes[: len(queries)], codes[len(queries) :]
        ref_order = np.argsort(reference_codes, kind="stable")
        reference_codes = reference_codes[ref_order]
        if self.leave_one_out:
            self.queries = references = references[ref_order]
            query_codes = reference_codes
        else:
            query_order = np.argsort(query_codes, kind="stable")
            self.queries, query_codes = queries[query_order], query_codes[query_order]
            references = references[ref_order]
        self.genuine_start = np.searchsorted(reference_codes, query_codes, side="left")
        self.genuine_stop = np.searchsorted(reference_codes, query_codes, side="right")
        if self.leave_one_out:  # the pairs i < j: genuine columns after the row itself
            self.genuine_start = np.arange(len(self.queries)) + 1
        self.references = ops.convert_to_tensor(references)
        size = check_int(block_size, "block_size", minimum=1, allow_none=True)
        self.rows = size or query_block_rows(
            len(self.queries), len(references), references.shape[1], self.distance, _BLOCK_ELEMENTS
        )

    def blocks(self, genuine=True):
        """Yields ``(genuine, impostors)`` of each block of rows (``genuine`` None if not asked)."""
        for start in range(0, len(self.queries), self.rows):
            stop = min(start + self.rows, len(self.queries))
            block = np.asarray(
                ops.convert_to_numpy(
                    self.distance.pairwise(
                        ops.convert_to_tensor(self.queries[start:stop]), self.references
                    )
                )
            )
            if block.dtype not in (np.float32, np.float64):
                block = block.astype(np.float32)
            check_finite(block, "distances", "(the embeddings are too large for this distance)")
            starts = self.genuine_start[start:stop]
            stops = self.genuine_stop[start:stop]
            parts = [
                part
                for row, first, last in zip(block, starts, stops)
                for part in ((row[last:],) if self.leave_one_out else (row[:first], row[last:]))
            ]
            impostors = np.concatenate(parts)
            impostors += 0.0  # -0.0 becomes +0.0: one key per value
            genuines = None
            if genuine:
                genuines = np.concatenate(
                    [row[first:last] for row, first, last in zip(block, starts, stops)]
                )
                genuines += 0.0
            yield genuines, impostors


def _first_pass(pairs):
    """The sorted genuine distances and the histogram of the impostors' top 16 key bits."""
    genuine_parts, histogram, codec = [], np.zeros(2**_STEP, np.int64), None
    for genuine, impostors in pairs.blocks():
        if codec is None:
            codec = _Codec(impostors.dtype)
        genuine_parts.append(genuine)
        for chunk in range(0, len(impostors), _genuine_ranks._RANK_CHUNK):
            keys = codec.keys(impostors[chunk : chunk + _genuine_ranks._RANK_CHUNK])
            top = (keys >> codec.unsigned.type(codec.bits - _STEP)).astype(np.intp)
            histogram += np.bincount(top, minlength=2**_STEP)
    return np.sort(np.concatenate(genuine_parts)), histogram


@dataclass
class _Search:
    """The first pair distance (as a key) where a monotone condition on the counts holds.

    ``lo..hi`` (keys, inclusive) holds the answer; ``below`` impostors lie under ``lo`` and
    ``inside`` within; ``max_below`` is the largest impostor key under ``lo`` (-1: none).
    """

    reached: object  # (impostors <= t, genuines <= t) arrays -> bool array
    lo: int
    hi: int
    below: int
    inside: int
    max_below: float = -np.inf
    collected: list = field(default_factory=list)
    sub_histogram: Any = None
    answer: tuple | None = None  # (key, #impostors < key, #impostors <= key, largest under it)


@dataclass
class _Counts:
    auc: float
    eer: float
    tar_at_far: dict


def _count(pairs, targets):
    genuine, histogram = _first_pass(pairs)
    impostors = int(histogram.sum())
    _check_pair_counts(len(genuine), impostors)
    codec = _Codec(genuine.dtype)
    genuine_keys = codec.keys(genuine)
    total = len(genuine) * impostors
    wide = np.int64 if total < 2**62 else object
    searches = {
        "eer": _Search(
            lambda imp_le, gen_le: (
                imp_le.astype(wide) * len(genuine) + gen_le.astype(wide) * impostors >= total
            ),
            0,
            2**codec.bits - 1,
            0,
            impostors,
        )
    }
    for target in targets:
        accepted = _largest_count(target, impostors)  # FAR(t) <= F  <=>  imp_le <= accepted
        searches[target] = _Search(
            lambda imp_le, gen_le, k=accepted: imp_le > k, 0, 2**codec.bits - 1, 0, impostors
        )
    for search in searches.values():
        _narrow(search, histogram, codec.bits - _STEP, genuine_keys)
    shift = codec.bits - 2 * _STEP
    auc_twice = 0  # 2 * (#(imp > gen) + #(imp == gen) / 2)
    first = True
    while first or any(s.answer is None for s in searches.values()):
        for search in searches.values():
            if search.answer is None and search.inside == 0:
                _resolve(
                    search, np.zeros(0, codec.unsigned), np.zeros(0, np.int64), genuine_keys, codec
                )
        pending = [s for s in searches.values() if s.answer is None]
        for search in pending:
            search.sub_histogram = None if search.inside <= _COLLECT_LIMIT else 0
            search.collected = []
        ranks = None
        for _, block in pairs.blocks(genuine=False):
            values = np.sort(block)  # sorted: the look-ups walk the table in order
            if first and _genuine_ranks._searched(len(genuine), len(values)):
                auc_twice += _genuine_ranks._auc_twice_searched(genuine, values)
            elif first:
                ranks = ranks or _genuine_ranks._GenuineRanks(genuine_keys, histogram)
                auc_twice += ranks.auc_twice(codec.keys(values))
            for search in pending:
                _refine(search, values, codec, shift)
        del ranks
        for search in pending:
            if search.sub_histogram is None:
                found, counts = np.unique(
                    np.concatenate([np.zeros(0, codec.unsigned), *search.collected]),
                    return_counts=True,
                )
                _resolve(search, found, counts, genuine_keys, codec)
            elif shift == 0:
                filled = np.flatnonzero(search.sub_histogram)
                found = (np.uint64(search.lo) + filled.astype(np.uint64)).astype(codec.unsigned)
                _resolve(search, found, search.sub_histogram[filled], genuine_keys, codec)
            else:
                _narrow(search, search.sub_histogram, shift, genuine_keys)
        shift -= _STEP
        first = False
    return _Counts(
        auc=auc_twice / (2 * total),
        eer=_eer(searches["eer"], genuine_keys, impostors),
        tar_at_far={
            target: _tar_at_far(searches[target], genuine, genuine_keys, codec)
            for target in targets
        },
    )


def _largest_count(target, impostors):
    """The largest ``c`` with ``c / impostors <= target`` in float64, as scikit-learn divides."""
    accepted = int(np.floor(target * impostors))
    while accepted + 1 <= impostors and (accepted + 1) / impostors <= target:
        accepted += 1
    while accepted > 0 and accepted / impostors > target:
        accepted -= 1
    return accepted


def _narrow(search, histogram, shift, genuine_keys):
    """Chooses the sub-bucket (of ``2**shift`` keys from ``search.lo``) that holds the answer."""
    ends = np.uint64(search.lo) + (
        (np.arange(1, len(histogram) + 1, dtype=np.uint64) << np.uint64(shift)) - np.uint64(1)
    )
    ends = np.minimum(ends, np.uint64(search.hi)).astype(genuine_keys.dtype)
    imp_le = search.below + np.cumsum(histogram)
    gen_le = np.searchsorted(genuine_keys, ends, side="right")
    index = int(np.argmax(search.reached(imp_le, gen_le)))
    search.below = int(imp_le[index] - histogram[index])
    search.inside = int(histogram[index])
    search.lo, search.hi = int(search.lo) + (index << shift), int(ends[index])


def _refine(search, sorted_values, codec, shift):
    """One block's share of a pass: the largest impostor under the bucket, and its contents."""
    lo, hi = codec.values([search.lo, search.hi])
    first = int(np.searchsorted(sorted_values, lo, "left"))
    last = int(np.searchsorted(sorted_values, hi, "right"))
    if first > 0:
        search.max_below = max(search.max_below, float(sorted_values[first - 1]))
    inside = codec.keys(sorted_values[first:last])  # a new array, not a view of the block
    if search.sub_histogram is None:
        search.collected.append(inside)
    else:
        offsets = (inside - codec.unsigned.type(search.lo)) >> codec.unsigned.type(shift)
        search.sub_histogram = search.sub_histogram + np.bincount(
            offsets.astype(np.intp), minlength=2**_STEP
        )


def _resolve(search, keys, counts, genuine_keys, codec):
    """The answer from the exact impostor keys (with counts) in the search's bucket."""
    inside_genuine = genuine_keys[
        np.searchsorted(genuine_keys, search.lo, "left") : np.searchsorted(
            genuine_keys, search.hi, "right"
        )
    ]
    candidates = np.union1d(keys, inside_genuine)
    cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    imp_le = search.below + cumulative[np.searchsorted(keys, candidates, "right")]
    gen_le = np.searchsorted(genuine_keys, candidates, side="right")
    key = int(candidates[int(np.argmax(search.reached(imp_le, gen_le)))])
    position = int(np.searchsorted(keys, key, "left"))
    imp_lt = search.below + int(counts[:position].sum())
    at = int(counts[position]) if position < len(keys) and int(keys[position]) == key else 0
    largest_below = codec.value(int(keys[position - 1])) if position > 0 else search.max_below
    search.answer = (key, imp_lt, imp_lt + at, largest_below)


def _eer(search, genuine_keys, impostors):
    key, imp_lt, imp_le, _ = search.answer
    genuine = len(genuine_keys)
    gen_lt = int(np.searchsorted(genuine_keys, genuine_keys.dtype.type(key), "left"))
    gen_le = int(np.searchsorted(genuine_keys, genuine_keys.dtype.type(key), "right"))
    far0, frr0 = imp_lt / impostors, 1.0 - gen_lt / genuine
    far1, frr1 = imp_le / impostors, 1.0 - gen_le / genuine
    gap0, gap1 = frr0 - far0, frr1 - far1  # gap0 > 0 >= gap1
    share = gap0 / (gap0 - gap1)
    return float(far0 + share * (far1 - far0))


def _tar_at_far(search, genuine, genuine_keys, codec):
    key, _, _, largest_impostor_below = search.answer  # key: the first impostor over the FAR
    position = int(np.searchsorted(genuine_keys, genuine_keys.dtype.type(key), "left"))
    threshold = largest_impostor_below
    if position > 0:
        threshold = max(threshold, float(genuine[position - 1]))
    return position / len(genuine), float(threshold)
