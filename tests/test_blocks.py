"""The one block-size rule (``mining.blocks.rows_per_block``) and its callers.

The table holds the values the three former copies of the arithmetic gave, worked by hand:
the per-anchor miner (``auto_block_rows``: power of two, a batch that fits stays whole), the
pair engine (``pairs.block_rows``: power of two always) and the evaluation / index
(``query_block_rows``: plain, at least one). The grid compares against those former copies,
restated here.
"""

import itertools

import pytest

from triplet_tools import _topk
from triplet_tools.distances import get
from triplet_tools.mining import blocks
from triplet_tools.mining.blocks import auto_block_rows, rows_per_block

E20, E22, E24 = 2**20, 2**22, 2**24

# (num_rows, elements_per_row, budget, power_of_two, whole) -> rows, worked by hand.
TABLE = [
    # the per-anchor miner: power_of_two=True, whole=True
    ((1024, 1024, E20, True, True), 1024),  # 2**20 scores fit exactly
    ((1040, 1000, E20, True, True), 1040),  # 1,040,000 <= 2**20: whole, not a power of two
    ((65536, 65536, E20, True, True), 16),  # 2**20 // 2**16
    ((65536, 65536, E22, True, True), 64),
    ((8192, 8192, E20, True, True), 128),
    ((3000, 3000, E20, True, True), 256),  # 2**20 // 3000 = 349 -> 256
    ((4096, 4096 * 128, E20, True, True), 2),  # Manhattan, D = 128
    ((3, 10**7 * 128, E20, True, True), 1),  # a row over budget: still one row
    ((2**21, 0, E20, True, True), 2**21),  # no references: everything fits
    ((0, 100, E20, True, True), 0),
    ((None, 10, E20, True, True), None),
    # the pair engine: power_of_two=True, per_row = max(M, 1) ** (2 if cubic else 1)
    ((1040, 1000, E20, True, False), 1024),  # 2**20 // 1000 = 1048 -> 1024 < 1040
    ((1000, 1000, E20, True, False), 1000),  # 1048 -> 1024 > 1000
    ((65536, 65536, E20, True, False), 16),
    ((3000, 3000, E22, True, False), 1024),  # 2**22 // 3000 = 1398 -> 1024
    ((512, 512 * 512, E20, True, False), 4),  # cubic: 2**20 // 2**18
    ((4096, 4096 * 4096, E20, True, False), 1),  # cubic, 2**24 units a row
    ((2**21, 1, E20, True, False), E20),  # M = 0 counts as 1
    ((0, 100, E20, True, False), 0),
    ((None, 10, E20, True, False), None),
    # the evaluation and the index: plain (the callers add "at least one")
    ((100_000, 100_000, E22, False, False), 41),  # 4,194,304 // 100,000
    ((100_000, 6_400_000, E22, False, False), 1),  # Manhattan, D = 64
    ((3000, 3000, E22, False, False), 1398),
    ((10, 0, E22, False, False), 10),
    ((5 * 10**6, 0, E22, False, False), E22),
    ((100_000, 100_000, E24, False, False), 167),
    ((10, 200, 1400, False, False), 7),
    ((0, 100, E22, False, False), 0),
]


@pytest.mark.parametrize("args,expected", TABLE)
def test_rows_per_block_table(args, expected):
    num_rows, per_row, budget, power_of_two, whole = args
    got = rows_per_block(num_rows, per_row, budget, power_of_two=power_of_two, whole=whole)
    assert got == expected


def test_callers_table():
    cosine, manhattan = get("cosine"), get("manhattan")
    assert auto_block_rows(1040, 1000, 8, cosine, elements=E20) == 1040
    assert auto_block_rows(4096, 4096, 128, manhattan, elements=E20) == 2
    assert auto_block_rows(None, 10, 3, cosine) is None
    assert auto_block_rows(10, None, 3, cosine) == 10
    assert _topk.query_block_rows(100_000, 100_000, 64, cosine) == 41
    assert _topk.query_block_rows(100_000, 100_000, 64, manhattan) == 1
    assert _topk.query_block_rows(0, 100, 4, cosine) == 1  # a range step: never 0
    assert _topk.query_block_rows(100_000, 100_000, 64, cosine, E24) == 167


def test_default_budget_is_read_at_call_time(monkeypatch):
    assert rows_per_block(65536, 65536) == blocks.BLOCK_ELEMENTS // 65536
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 4 * 65536)
    assert rows_per_block(65536, 65536) == 4
    assert auto_block_rows(65536, 65536, 8, get("cosine")) == 4


# The former copies, as they were written before rows_per_block.
def _former_auto(num_anchors, num_references, dim, materializes, elements):
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = num_references * (dim if materializes else 1)
    if num_anchors * per_row <= elements:
        return num_anchors
    rows = max(1, elements // max(per_row, 1))
    return min(num_anchors, 1 << (rows.bit_length() - 1))


def _former_pairs(num_anchors, num_references, cubic, elements):
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = max(num_references, 1) ** (2 if cubic else 1)
    rows = max(1, elements // per_row)
    return min(num_anchors, 1 << (rows.bit_length() - 1))


def _former_query(num_queries, num_references, dim, materializes, elements):
    per_row = num_references * (dim if materializes else 1)
    return max(1, min(num_queries, elements // max(per_row, 1)))


SIZES = (None, 0, 1, 2, 3, 7, 100, 1000, 1023, 1024, 1040, 3000, 4096, 65536, 100_000, 2**21)


def test_rows_per_block_matches_the_former_copies():
    budgets = (1400, E20, E22, E24)
    for n, m, budget in itertools.product(SIZES, SIZES, budgets):
        for name, dim in (("cosine", 64), ("manhattan", 64), ("manhattan", 1)):
            distance = get(name)
            materializes = distance.materializes_differences
            expected = _former_auto(n, m, dim, materializes, budget)
            assert auto_block_rows(n, m, dim, distance, elements=budget) == expected
            if n is not None and m is not None:
                expected = _former_query(n, m, dim, materializes, budget)
                assert _topk.query_block_rows(n, m, dim, distance, budget) == expected
        for cubic in (False, True):
            # The call that reproduces pairs.block_rows.
            per_row = None if m is None else max(m, 1) ** (2 if cubic else 1)
            got = n if m is None else rows_per_block(n, per_row, budget, power_of_two=True)
            assert got == _former_pairs(n, m, cubic, budget)


def test_pair_engine_block_rows_agrees():
    from triplet_tools.mining import blocks, engine

    for n, m in itertools.product(SIZES, SIZES):
        for cubic in (False, True):
            expected = _former_pairs(n, m, cubic, blocks.BLOCK_ELEMENTS)
            assert engine.block_rows(n, m, cubic) == expected
