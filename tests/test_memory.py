"""Cross-batch memory: stored earlier batches join the references, as a ring buffer."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reference as ref
import reference_pairs as rp
import reference_softmax as rs
from backend import to_numpy
from triplet_tools.losses import (
    CircleLoss,
    LiftedStructLoss,
    MultiSimilarityLoss,
    PNLoss,
    SoftNearestNeighborLoss,
    SupConLoss,
    TripletLoss,
)
from triplet_tools.memory import CrossBatchMemory
from triplet_tools.tfa import TripletSemiHardLoss

# Under PyTorch, each test runs with both eager miners (see conftest.py).
pytestmark = pytest.mark.usefixtures("each_torch_miner")


def _memory(size, dim=3, recording=True):
    layer = CrossBatchMemory(size)
    layer.build((None, dim))
    layer(np.zeros((1, dim), "float32"), training=recording)
    return layer


def _batches(count, rows=4, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 3, size=rows), (rng.normal(size=(rows, dim)) + 5).astype("float32"))
        for _ in range(count)
    ]


@pytest.mark.parametrize("negative", ["hard", "easy", "semi-hard"])
def test_references_include_earlier_batches(negative):
    """Batch 2 mines against [batch 2; batch 1]. The data sit around (5, 5, 5), so the
    zero rows of unwritten slots would be the farthest negatives if they were not masked."""
    (l1, x1), (l2, x2) = _batches(2)
    memory = _memory(size=10)
    loss = TripletLoss(
        distance="euclidean", negative_mining_strategy=negative, memory=memory, reduction="none"
    )
    kwargs = {"distance_name": "euclidean", "negative": negative}
    first = to_numpy(loss(l1, x1))
    np.testing.assert_allclose(first, ref.per_anchor(l1, x1, **kwargs)[0], rtol=1e-5)
    second = to_numpy(loss(l2, x2))
    want = ref.per_anchor(
        l2,
        x2,
        references=np.concatenate([x2, x1]),
        reference_labels=np.concatenate([l2, l1]),
        anchor_positions=list(range(len(l2))),
        **kwargs,
    )[0]
    np.testing.assert_allclose(second, want, rtol=1e-5)
    plain = ref.per_anchor(l2, x2, **kwargs)[0]
    assert not np.allclose(want, plain), "batch 1 must change the mining of batch 2"


#: SPEC's last part: each new loss with a memory, and its brute-force ``(L_a, c_a)`` from
#: tests/reference_pairs.py (whose references are the rows it is given).
NEW_LOSSES = {
    # triplet_batch_all_loss has a fixed (margin, metric) signature: its TripletLoss equivalent.
    "batch-all": (
        lambda **kw: TripletLoss(
            distance="euclidean",
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            margin=1.0,
            average="active",
            **kw,
        ),
        lambda y, x: rp.triplet_per_anchor(
            y, x, distance_name="euclidean", positive="all", negative="all", average="active"
        ),
    ),
    "tfa-semihard": (
        lambda **kw: TripletSemiHardLoss(margin=1.0, **kw),
        lambda y, x: rp.triplet_per_anchor(
            y, x, distance_name="euclidean", positive="all", negative="semi-hard"
        ),
    ),
    "multi-similarity": (
        lambda **kw: MultiSimilarityLoss(**kw),
        lambda y, x: rp.multi_similarity_per_anchor(y, x, distance_name="cosine"),
    ),
    "circle": (
        lambda **kw: CircleLoss(gamma=10.0, **kw),
        lambda y, x: rp.circle_per_anchor(y, x, distance_name="cosine", gamma=10.0),
    ),
    "soft-nn": (
        lambda **kw: SoftNearestNeighborLoss(**kw),
        lambda y, x: rp.soft_nearest_neighbor_per_anchor(y, x, distance_name="squared_euclidean"),
    ),
    "supcon": (
        lambda **kw: SupConLoss(temperature=0.5, **kw),
        lambda y, x: rs.supcon_per_anchor(y, x, temperature=0.5),
    ),
    "lifted": (
        lambda **kw: LiftedStructLoss(margin=1.0, **kw),
        lambda y, x: rp.lifted_struct_per_anchor(y, x, distance_name="euclidean"),
    ),
}


def _with_references(per_anchor, labels, x, stored_labels, stored):
    """``(L_a, c_a)`` of the batch's anchors against references [batch ; stored rows]: the
    reference's in-batch computation on the concatenation, restricted to the first rows
    (an anchor is never its own positive; every other row is a reference)."""
    totals, counts = per_anchor(
        np.concatenate([labels, stored_labels]), np.concatenate([x, stored])
    )
    return totals[: len(labels)], counts[: len(labels)]


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_new_losses_mine_against_batch_and_memory(name):
    """Batch 2 is scored against [batch 2; batch 1]: per anchor (reduction="none") and
    averaged (the default, whose divisor counts the units found among the memory too).
    The memory has 10 slots and holds 6 rows: the 4 unwritten zero rows (class 0, near the
    data) must not count."""
    make, per_anchor = NEW_LOSSES[name]
    rng = np.random.default_rng(7)
    (l1, l2) = (rng.integers(0, 3, size=6) for _ in range(2))
    (x1, x2) = (rng.normal(size=(6, 3)).astype("float32") for _ in range(2))
    for reduction in ("none", "sum_over_batch_size"):
        memory = _memory(size=10)
        loss = make(memory=memory, reduction=reduction)
        first = to_numpy(loss(l1, x1))
        np.testing.assert_allclose(
            first, rp.reduce(*per_anchor(l1, x1), reduction=reduction), rtol=1e-4, atol=1e-5
        )
        assert int(to_numpy(memory.filled.value)) == 6
        second = to_numpy(loss(l2, x2))
        totals, counts = _with_references(per_anchor, l2, x2, l1, x1)
        want = rp.reduce(totals, counts, reduction=reduction)
        np.testing.assert_allclose(second, want, rtol=1e-4, atol=1e-5, err_msg=reduction)
        plain = rp.reduce(*per_anchor(l2, x2), reduction=reduction)
        assert not np.allclose(want, plain, rtol=1e-3), "batch 1 must change batch 2's loss"


def test_ring_buffer_wraps_around():
    """size 5, three batches of 3 rows: slots 0,1,2 | 3,4,0 | 1,2,3."""
    batches = _batches(3, rows=3)
    memory = _memory(size=5)
    loss = PNLoss(memory=memory)
    for labels, x in batches:
        loss(labels, x)
    stored, stored_labels, written = (to_numpy(t) for t in memory.contents())
    (_, x1), (l2, x2), (l3, x3) = batches
    want = np.stack([x2[2], x3[0], x3[1], x3[2], x2[1]])
    np.testing.assert_allclose(stored, want, rtol=1e-6)
    np.testing.assert_array_equal(stored_labels, [l2[2], l3[0], l3[1], l3[2], l2[1]])
    assert written.all()
    assert int(to_numpy(memory.position.value)) == 4 and int(to_numpy(memory.filled.value)) == 5


def test_batch_larger_than_memory_keeps_its_last_rows():
    labels, x = _batches(1, rows=7)[0]
    memory = _memory(size=4)
    TripletLoss(memory=memory)(labels, x)
    np.testing.assert_allclose(to_numpy(memory.contents()[0]), x[-4:], rtol=1e-6)


def test_size_zero_is_the_plain_loss():
    ((labels, x),) = _batches(1, rows=8)
    memory = _memory(size=0)
    with_memory = TripletLoss(memory=memory)
    np.testing.assert_allclose(to_numpy(with_memory(labels, x)), to_numpy(TripletLoss()(labels, x)))


def test_not_recorded_outside_training():
    ((labels, x),) = _batches(1)
    memory = _memory(size=6, recording=False)
    TripletLoss(memory=memory)(labels, x)
    assert int(to_numpy(memory.filled.value)) == 0


def test_bad_memory_arguments():
    with pytest.raises(ValueError, match="size must be an int >= 0; received size=-1"):
        CrossBatchMemory(-1)
    with pytest.raises(ValueError, match="memory must be a triplet_tools.memory.CrossBatchMemory"):
        TripletLoss(memory=3)
    with pytest.raises(ValueError, match="No CrossBatchMemory layer named 'nowhere'"):
        TripletLoss(memory="nowhere")([0, 0, 1, 1], np.ones((4, 2), "float32"))


def _model(memory):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), memory])
    model.compile(keras.optimizers.SGD(0.01), TripletLoss(memory=memory, margin=0.5))
    return model


def test_fit_fills_the_memory_in_compiled_training_steps(tmp_path):
    """model.fit runs compiled steps (jax.jit on JAX); the memory is carried through them.
    Evaluation uses the memory but leaves it unchanged; save/load keeps it, and the loaded
    loss finds the memory again by the layer's name."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 6)).astype("float32")
    labels = np.arange(48) % 6
    memory = CrossBatchMemory(size=20, name="xbm")
    model = _model(memory)
    model.fit(x, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    # 48 rows written into 20 slots: position 48 % 20 = 8, slot k holds row 40 + k for
    # k < 8 and row 20 + k otherwise.
    rows = [40 + k if k < 8 else 20 + k for k in range(20)]
    np.testing.assert_array_equal(to_numpy(memory.labels.value), labels[rows])
    assert int(to_numpy(memory.position.value)) == 8
    stored = to_numpy(memory.embeddings.value).copy()
    model.evaluate(x, labels, batch_size=8, verbose=0)
    np.testing.assert_array_equal(to_numpy(memory.embeddings.value), stored)

    path = tmp_path / "xbm.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import triplet_tools
        model = keras.models.load_model({str(path)!r})
        memory = model.get_layer("xbm")
        stored = keras.ops.convert_to_numpy(memory.embeddings.value)
        np.save({str(tmp_path / "stored.npy")!r}, stored)
        assert model.loss.get_config()["memory"] == "xbm"
        x = np.load({str(tmp_path / "x.npy")!r})
        history = model.fit(x, np.arange(48) % 6, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert int(keras.ops.convert_to_numpy(memory.position.value)) == 16
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "stored.npy"), stored, rtol=1e-6)
