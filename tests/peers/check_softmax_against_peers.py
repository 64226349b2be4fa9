"""Checks the NumPy reference of SPEC's "In-batch softmax losses at any batch size"
(``tests/reference_softmax.py``) against the peers SPEC names, each in its own environment
(not collected by pytest):

- ``pml``: ``bench/peers/pytorch-metric-learning-2.9.0.txt`` (``torch==2.13.0``):
  ``SupConLoss`` with its cosine similarity and ``LpDistance(normalize_embeddings=False)``,
  its default reducer (``AvgNonZeroReducer``), ``SumReducer`` and ``DoNothingReducer``;
- ``st``: ``bench/peers/sentence-transformers-6.3.0.txt``: ``MultipleNegativesRankingLoss``
  (``scale = 1 / T``; symmetric: ``directions=("query_to_doc", "doc_to_query")``,
  ``partition_mode="per_direction"``), called on embeddings (``model=None``).

    python tests/peers/check_softmax_against_peers.py pml   # or st

Both peers run in float64 here; the output format and the tolerances are those of
``check_reference_against_peers.py`` (values 1e-5, gradients 1e-4 relative); exits non-zero
when a claimed equality fails.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import check_reference_against_peers as common  # noqa: E402

import reference_softmax as rs  # noqa: E402


def labelled_batches():
    """The common batches (every anchor valid), and one with a singleton class (an invalid
    anchor: PML's default reducer leaves its 0 out, as our default does)."""
    yield from common.batches()
    rng = np.random.default_rng(300)
    yield "singleton", np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4]), rng.normal(size=(12, 4))


def check_pml():
    import torch
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import SupConLoss
    from pytorch_metric_learning.reducers import DoNothingReducer, SumReducer

    cases = [
        ("cosine", 0.1, {}),
        ("cosine", 0.5, {}),
        ("euclidean", 0.5, {"distance": LpDistance(normalize_embeddings=False)}),
    ]
    reducers = [
        ("default", {}, "sum_over_batch_size"),
        ("SumReducer", {"reducer": SumReducer()}, "sum"),
        ("DoNothingReducer", {"reducer": DoNothingReducer()}, "none"),
    ]
    for batch, labels, x in labelled_batches():
        for name, temperature, extra in cases:
            for reducer_name, reducer, reduction in reducers:
                t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                loss = SupConLoss(temperature=temperature, **extra, **reducer)
                value = loss(t, torch.tensor(labels))
                kwargs = {"temperature": temperature, "distance_name": name}
                if reduction == "none":
                    peer = value["loss"]["losses"].detach().numpy()
                    want = rs.supcon_loss(labels, x, reduction="none", **kwargs)
                    grad = want_grad = None
                else:
                    (grad,) = torch.autograd.grad(value, t)
                    grad = grad.numpy()
                    peer = value.item()
                    want = rs.supcon_loss(labels, x, reduction=reduction, **kwargs)
                    want_grad = rs.supcon_gradient(labels, x, reduction=reduction, **kwargs)
                what = f"SupConLoss({name}, T={temperature}) {reducer_name}"
                common.report("pml", what, batch, peer, want, grad, want_grad)


def paired_batches():
    for seed, (rows, hard) in enumerate([(6, 0), (5, 1), (4, 3)]):
        rng = np.random.default_rng(200 + seed)
        yield f"B{rows}h{hard}", rng.normal(size=(rows, 2 + hard, 4))


def check_st():
    import torch
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    for batch, x in paired_batches():
        for temperature in (0.05, 0.5):
            for symmetric in (False, True):
                directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
                loss = MultipleNegativesRankingLoss(
                    None,
                    scale=1 / temperature,
                    directions=directions,
                    partition_mode="per_direction",
                )
                t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                value = loss.compute_loss_from_embeddings(
                    [t[:, k] for k in range(x.shape[1])], None
                )
                (grad,) = torch.autograd.grad(value, t)
                kwargs = {"temperature": temperature, "symmetric": symmetric}
                common.report(
                    "st",
                    f"MNRL(scale={1 / temperature:g}, {'+'.join(directions)})",
                    batch,
                    value.item(),
                    rs.infonce_loss(x, **kwargs),
                    grad.numpy(),
                    rs.infonce_gradient(x, **kwargs),
                )


SECTIONS = {"pml": check_pml, "st": check_st}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
    if common.FAILURES:
        print(f"{len(common.FAILURES)} claimed equalities failed: {common.FAILURES}")
        sys.exit(1)
    print("every claimed equality holds")
