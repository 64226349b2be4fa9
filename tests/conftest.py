import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from backend import BACKEND  # noqa: E402  (imports keras, after the log level is set)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


#: Under PyTorch, mining-heavy modules run once per eager miner of ``_torch_mining``.
MINERS = ["dense", "label-sorted"] if BACKEND == "torch" else [BACKEND]


@pytest.fixture(params=MINERS)
def each_torch_miner(request, monkeypatch):
    """Under PyTorch, runs the test with each eager miner of ``triplet_tools.mining.torch_kernel``
    (the dense one serves small problems, the label-sorted one large ones); elsewhere once.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("each_torch_miner")``.
    """
    if request.param in ("dense", "label-sorted"):
        from triplet_tools.mining import torch_kernel as _torch_mining

        limit = 2**62 if request.param == "dense" else -1
        monkeypatch.setattr(_torch_mining, "DENSE_MAX_SCORES", limit)


@pytest.fixture
def recomputed_blocks(monkeypatch):
    """The pair engine takes its recomputed-blocks path (``keras.remat``, normally above
    ``engine.REMAT_PAIRS`` anchor-reference pairs) for every batch. Returns the list of block
    functions wrapped, so that a test can tell the path was taken."""
    import keras

    from triplet_tools.mining import engine

    wrapped = []
    remat = keras.remat
    only_linearized(monkeypatch)  # the recomputation is the linearized mode's
    monkeypatch.setattr(engine, "REMAT_PAIRS", 0)
    monkeypatch.setattr(keras, "remat", lambda f: wrapped.append(f) or remat(f))
    return wrapped


@pytest.fixture(params=["products", "linearized"])
def engine_mode(request, monkeypatch):
    """Runs the test with each mode of the pair engine (``triplet_tools.mining.engine``): the
    closed-form products the reductions take, and the linearized blocks of
    ``reduction="none"`` and user-defined distances."""
    if request.param == "linearized":
        only_linearized(monkeypatch)
    return request.param


def only_linearized(monkeypatch):
    """Every loss picks the pair engine's linearized mode (``engine.choose_mode``), even
    where its reduction would take the products mode."""
    from triplet_tools.mining import engine

    monkeypatch.setattr(engine, "choose_mode", lambda *args, **kwargs: engine.Mode.LINEARIZED)
