"""The losses in a plain PyTorch training loop (torch backend only)."""

import numpy as np
import pytest

import reference as ref
from backend import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="plain PyTorch loop: torch backend")


def test_plain_torch_loop_trains_and_matches_reference_gradient():
    import torch

    from triplet_tools import triplet_batch_semihard_loss

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = torch.tensor(np.repeat(np.arange(8), 8), dtype=torch.int64)
    x = torch.tensor(rng.normal(size=(64, 10)).astype("float32"))
    x += labels[:, None].float() * 0.3
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = triplet_batch_semihard_loss(margin=0.2)

    # One step's gradient w.r.t. the embeddings equals the reference's numerical gradient.
    embeddings = model(x[:16]).detach().requires_grad_(True)
    loss = loss_fn(labels[:16], embeddings)
    loss.backward()
    want = ref.numerical_gradient(
        labels[:16].numpy(),
        embeddings.detach().numpy().astype(np.float64),
        distance_name="euclidean_norm",
        margin=0.2,
    )
    np.testing.assert_allclose(embeddings.grad.numpy(), want, rtol=1e-3, atol=2e-5)

    losses = []
    for _epoch in range(15):
        for start in range(0, 64, 32):
            optimizer.zero_grad()
            loss = loss_fn(labels[start : start + 32], model(x[start : start + 32]))
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(loss_fn(labels, model(x))))
    assert all(np.isfinite(losses))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert losses[-1] < losses[0]
