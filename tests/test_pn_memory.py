"""Issue 23, item 5: ``PNLoss`` with the strategies ``"all"`` keeps bounded memory.

Its units are ``n x M x M`` per block of ``n`` anchors, and the linearized mode keeps one
slope per unit for the backward pass unless the blocks are recomputed: deciding that from
the ``B * M`` pairs kept ``B^3`` floats (1.9 GB at B = 768, D = 8). The decision must count
``B * M * M``, and a block must hold about ``BLOCK_ELEMENTS`` units.
"""

import keras
import numpy as np

import reference_pairs as R
from backend import value_and_grad
from pair_support import GRAD_TOL, VALUE_TOL
from triplet_tools import PNLoss, TripletLoss
from triplet_tools.mining import blocks, engine

LABELS = np.tile(np.arange(4), 3)
X = np.random.default_rng(11).normal(size=(12, 3)).astype("float32")
ALL = {"positive_mining_strategy": "all", "negative_mining_strategy": "all"}


def _count_remat(monkeypatch, limit):
    wrapped = []
    remat = keras.remat
    monkeypatch.setattr(engine, "REMAT_PAIRS", limit)
    monkeypatch.setattr(keras, "remat", lambda f: wrapped.append(f) or remat(f))
    return wrapped


def test_pn_all_recomputes_once_its_units_exceed_the_limit(monkeypatch):
    # 12 anchors x 12 references: 144 pairs, 1,728 units; the limit lies between.
    wrapped = _count_remat(monkeypatch, 1000)
    loss = PNLoss(distance="euclidean", **ALL)
    value, gradient = value_and_grad(lambda x: loss(LABELS, x), X)
    assert wrapped, "PNLoss's n x M x M units were kept for the backward pass"
    spec = {"distance_name": "euclidean", "positive": "all", "negative": "all", "loss": "pn"}
    np.testing.assert_allclose(value, R.triplet_loss(LABELS, X, **spec), **VALUE_TOL)
    np.testing.assert_allclose(gradient, R.triplet_gradient(LABELS, X, **spec), **GRAD_TOL)


def test_pairs_below_the_limit_are_kept(monkeypatch):
    wrapped = _count_remat(monkeypatch, 1000)
    loss = TripletLoss(distance="euclidean", reduction="none", **ALL)  # linearized, 144 pairs
    value_and_grad(lambda x: keras.ops.sum(loss(LABELS, x)), X)
    assert not wrapped


def test_cubic_blocks_hold_about_block_elements_units():
    for size in (64, 768, 1024, 4096):
        rows = engine.block_rows(size, size, cubic=True)
        assert rows * size * size <= max(blocks.BLOCK_ELEMENTS, size * size)
        assert rows in (1, size) or 2 * rows * size * size > blocks.BLOCK_ELEMENTS
