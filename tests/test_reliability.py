"""Nothing silently wrong: bad values reach the loss, bad inputs are refused, memory is bound.

Each test here failed before its fix (issue "Reliability"); expected values come from
tests/reference.py or are worked by hand in the docstring.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reference as ref
import reference_pairs as rp
from backend import BACKEND, to_numpy, value_and_grad
from triplet_tools import PNLoss, PrimingLoss, TripletLoss, triplet_batch_all_loss
from triplet_tools.distances import DISTANCE_NAMES
from triplet_tools.losses import LiftedStructLoss, MultiSimilarityLoss
from triplet_tools.memory import CrossBatchMemory
from triplet_tools.metrics import MiningStatistics
from triplet_tools.tfa import TripletSemiHardLoss

LOSSES = {"triplet": TripletLoss, "pn": PNLoss, "priming": PrimingLoss}
REDUCTIONS = ("sum_over_batch_size", "sum", "mean_with_sample_weight", "none")


def _batch(seed=0):
    labels = np.repeat(np.arange(4), 4)
    x = np.random.default_rng(seed).normal(size=(16, 3)).astype("float32")
    return labels, x


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("distance", DISTANCE_NAMES)
def test_a_bad_value_reaches_every_loss_and_only_its_own_row(distance, kind, reduction, bad):
    """x[3, 1] = NaN or +-inf: the reduced loss is NaN or inf (TerminateOnNaN sees it), and
    with reduction="none" exactly row 3 is non-finite: a non-finite reference is never
    chosen, so no other row's loss depends on it (the same on every backend)."""
    labels, x = _batch()
    x[3, 1] = bad
    loss = LOSSES[kind](distance=distance, reduction=reduction)
    value = to_numpy(loss(labels, x, sample_weight=np.ones(16, "float32")))
    if reduction == "none":
        assert not np.isfinite(value[3])
        others = np.delete(value, 3)
        assert np.all(np.isfinite(others)), others
    else:
        assert not np.isfinite(value)


def test_rows_without_the_bad_row_keep_their_reference_values():
    """Rows other than the bad one equal the brute-force loss on the batch without it (the
    bad reference is never a positive or a negative of anyone)."""
    labels, x = _batch(1)
    x[5, 0] = np.nan
    got = to_numpy(TripletLoss(distance="euclidean", reduction="none")(labels, x))
    keep = np.arange(16) != 5
    want = ref.per_anchor(labels[keep], x[keep], distance_name="euclidean")[0]
    np.testing.assert_allclose(got[keep], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.array([0.2, 0.2, 0.7, 0.7]), "whole numbers"),
        (np.array([0.0, 0.0, np.nan, 1.0]), "finite"),
        (np.array(["a", "a", "b", "b"]), "map string labels to ids first"),
    ],
    ids=["fractional", "nan", "strings"],
)
def test_labels_that_cannot_be_classes_are_refused(labels, match):
    """[0.2, 0.2, 0.7, 0.7] used to become class 0 four times (truncated)."""
    x = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
    with pytest.raises(ValueError, match=match):
        TripletLoss()(labels, x)


def test_ids_outside_int32_never_wrap():
    """2**32 and 0 are two classes: kept apart where the backend has int64, refused (never
    merged) on JAX without x64."""
    labels = np.array([2**32, 2**32, 0, 0], np.int64)
    x = np.array([[0.0], [1.0], [0.5], [3.0]], "float32")
    loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard", reduction="none")
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="2147483647"):
            loss(labels, x)
        return
    # Hand-worked, two classes {0.0, 1.0} and {0.5, 3.0}: d_ap = 1, 1, 2.5, 2.5;
    # nearest negatives 0.5, 0.5, 0.5, 2.0 -> max(1 - 0.5 + 1, 0) = 1.5, 1.5, 3.0, 1.5.
    np.testing.assert_allclose(to_numpy(loss(labels, x)), [1.5, 1.5, 3.0, 1.5], rtol=1e-6)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX without x64 holds int32 ids only")
def test_the_memory_stores_ids_above_int32():
    memory = CrossBatchMemory(4)
    memory.build((None, 2))
    memory(np.zeros((1, 2), "float32"), training=True)
    memory.record(np.ones((2, 2), "float32"), np.array([2**32, 5], np.int64))
    assert to_numpy(memory.labels.value)[:2].tolist() == [2**32, 5]


def test_zero_width_embeddings_and_integer_loss_dtypes_are_refused():
    with pytest.raises(ValueError, match="at least one feature"):
        TripletLoss()(np.array([0, 0, 1]), np.zeros((3, 0), "float32"))
    with pytest.raises(ValueError, match="floating-point dtype"):
        TripletLoss(dtype="int32")


def test_sample_weight_of_the_wrong_length_names_both_shapes():
    labels, x = _batch()
    with pytest.raises(ValueError, match=r"sample_weight.shape=\(3,\).*16 rows"):
        TripletLoss()(labels, x, sample_weight=np.ones(3, "float32"))


def test_huge_embeddings_normalise_without_overflow():
    """Under cosine the loss is scale-invariant: rows of 1e30 give the loss of the same rows
    at 1 (their squared norm used to overflow float32 and normalise to zero)."""
    labels, x = _batch(2)
    loss = TripletLoss(distance="cosine")
    np.testing.assert_allclose(
        to_numpy(loss(labels, x * 1e30)), to_numpy(loss(labels, x)), rtol=1e-5
    )


def test_parallel_embeddings_tie_alike_in_mining_and_loss():
    """D = 1 under cosine: every distance is exactly 0 or 2. Labels [0, 0, 1, 1, 1], x =
    [1, 3, 2, -5, 4] (all positive but -5). Anchor 0: positive 3 (d = 0); negatives 2, 4 at
    d = 0 (not strictly beyond 0), -5 at 2: semi-hard picks -5 -> max(0 - 2 + 1, 0) = 0.
    Anchor 1 likewise 0. Anchor 2: hard positive -5 (d = 2), negatives at 0 -> no semi-hard
    -> farthest, d = 0 -> 2 + 1 = 3. Anchor 3 (-5): positives 2, 4 at d = 2; negatives 1, 3
    at 2 -> none beyond, farthest 2 -> 1. Anchor 4: like anchor 2 -> 3. Mean (0+0+3+1+3)/5 = 1.4;
    the brute-force reference agrees."""
    labels = np.array([0, 0, 1, 1, 1])
    x = np.array([[1.0], [3.0], [2.0], [-5.0], [4.0]], "float32")
    want = ref.loss_value(labels, x, distance_name="cosine")
    assert abs(want - 1.4) < 1e-9
    np.testing.assert_allclose(to_numpy(TripletLoss()(labels, x)), want, rtol=1e-6)


def _memory_model(name="xbm"):
    memory = CrossBatchMemory(size=16, name=name)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), memory])
    return model, memory


def test_two_models_loaded_from_one_file_keep_their_own_memories(tmp_path):
    """The loss of model A writes into A's memory only, also after a third model with a
    memory of the same name has been built (it used to find the memory by name on every
    call)."""
    model, _ = _memory_model()
    loss = TripletLoss(memory=model.layers[-1])
    model.compile("sgd", loss)
    labels, x = _batch(3)
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    first = keras.models.load_model(path)
    second = keras.models.load_model(path)
    _memory_model()  # another layer named "xbm", built last
    before = to_numpy(second.get_layer("xbm").embeddings.value).copy()
    first_before = to_numpy(first.get_layer("xbm").embeddings.value).copy()
    first.fit(x + 1, labels, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(to_numpy(second.get_layer("xbm").embeddings.value), before)
    assert not np.array_equal(to_numpy(first.get_layer("xbm").embeddings.value), first_before)


def test_mining_statistics_count_the_memory_the_loss_mined():
    """Batches of one class each: alone, no anchor is valid; with a memory holding the
    other class, every anchor of the second batch is (a positive in its batch, a negative
    in the memory). The metric must say what the loss mined: 8 anchors seen, 4 valid."""
    model, memory = _memory_model("xbm_stats")
    loss = TripletLoss(distance="euclidean", memory=memory)
    model.compile("sgd", loss, metrics=[MiningStatistics(loss)])
    x = np.random.default_rng(4).normal(size=(8, 3)).astype("float32")
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    history = model.fit(x, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert history.history["valid_anchors"][-1] == pytest.approx(0.5)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's x64 switch")
def test_float64_on_jax_with_x64_enabled():
    """Without x64 JAX computes float64 input in float32 (documented); with
    JAX_ENABLE_X64=1 a float64 loss resolves a 1e-12 difference that float32 cannot."""
    script = textwrap.dedent("""
        import numpy as np
        from triplet_tools import TripletLoss
        x = np.array([[0.0], [1.0], [1.0 + 1e-12], [3.0]], "float64")
        loss = TripletLoss(distance="euclidean", negative_mining_strategy="hard",
                           margin=0.0, reduction="none", dtype="float64")
        value = np.asarray(loss(np.array([0, 0, 1, 1]), x))
        print(value.dtype, repr(float(value[1])))
    """)
    env = {**os.environ, "JAX_ENABLE_X64": "1", "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    dtype, value = done.stdout.split()
    # Anchor 1 (at 1.0): d_ap = 1 (to 0.0), nearest negative at 1 + 1e-12 (d_an = 1e-12):
    # max(d_ap - d_an + 0, 0) = 1 - 1e-12; in float32 1 + 1e-12 == 1 and it would be 1.
    assert dtype == "float64"
    assert float(value) == pytest.approx(1 - 1e-12, abs=1e-15)


def _cancelling_weights(counts):
    """Integer weights with ``sum_a w_a c_a = 0`` exactly (``c_a`` integers from the
    reference): consecutive anchors ``(i, j)`` get ``w_i = c_j``, ``w_j = -c_i``; an anchor
    left over gets 3 (it counts nothing here: see the batch)."""
    counts = np.asarray(counts, np.int64)
    weights = np.full(len(counts), 3, np.int64)
    for i in range(0, len(counts) - 1, 2):
        weights[i], weights[i + 1] = counts[i + 1], -counts[i]
    assert int(np.sum(weights * counts)) == 0
    return weights.astype("float32")


SIGNED = {
    "triplet": (
        lambda: TripletLoss(distance="euclidean", reduction="mean_with_sample_weight"),
        lambda y, x: rp.triplet_per_anchor(y, x, distance_name="euclidean"),
    ),
    "triplet-batch-all": (
        lambda: TripletLoss(
            distance="euclidean",
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            average="active",
            reduction="mean_with_sample_weight",
        ),
        lambda y, x: rp.triplet_per_anchor(
            y, x, distance_name="euclidean", positive="all", negative="all", average="active"
        ),
    ),
    "lifted": (
        lambda: LiftedStructLoss(reduction="mean_with_sample_weight"),
        lambda y, x: rp.lifted_struct_per_anchor(y, x),
    ),
    "multi-similarity": (
        lambda: MultiSimilarityLoss(reduction="mean_with_sample_weight"),
        lambda y, x: rp.multi_similarity_per_anchor(y, x),
    ),
}


@pytest.mark.parametrize("kind", sorted(SIGNED))
def test_signed_weights_that_cancel_give_zero(kind):
    """``mean_with_sample_weight`` is ``sum w_a L_a / sum w_a c_a``, 0 when the divisor is 0
    (SPEC): signed weights whose ``sum w_a c_a`` is 0 gave ``sum w_a L_a`` (about -2.5 for
    TripletLoss, -12.6 for LiftedStructLoss). The last anchor is alone in its class."""
    make, reference = SIGNED[kind]
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    x = np.random.default_rng(7).normal(size=(10, 3)).astype("float32")
    totals, counts = reference(labels, x)
    weights = _cancelling_weights(counts)
    assert abs(float(np.sum(weights * totals))) > 1e-2  # the old answer, far from 0
    want = rp.reduce(totals, counts, weights, "mean_with_sample_weight")
    assert want == 0.0
    loss = make()
    value, grad = value_and_grad(lambda t: loss(labels, t, sample_weight=weights), x)
    assert float(value) == 0.0 and np.all(grad == 0.0)
    # Weights that do not cancel still divide (the same batch, one weight changed).
    weights[0] += 1
    np.testing.assert_allclose(
        to_numpy(loss(labels, x, sample_weight=weights)),
        rp.reduce(totals, counts, weights, "mean_with_sample_weight"),
        rtol=1e-4,
    )


def _resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


EAGER = {
    "batch-all": (
        lambda: triplet_batch_all_loss(metric="euclidean"),
        lambda y, x: rp.batch_all_loss(y, x, metric="euclidean"),
    ),
    "tfa-semihard": (
        lambda: TripletSemiHardLoss(),
        lambda y, x: rp.tfa_semihard_loss(y, x),
    ),
    "lifted": (
        lambda: LiftedStructLoss(),
        lambda y, x: rp.pair_loss("lifted_struct", y, x),
    ),
}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("kind", sorted(EAGER))
def test_eager_calls_keep_memory_flat(kind):
    """200 un-jitted calls (B = 16) keep the resident set flat and the values right. On eager
    JAX every call of a loss with a loop compiled the loop again and kept the compilation
    (about 3 MB and 0.4-0.9 s a call); the scoring step is now compiled once per loss."""
    make, reference = EAGER[kind]
    labels = np.repeat(np.arange(4), 4)
    x = np.random.default_rng(6).normal(size=(16, 8)).astype("float32")
    loss = make()
    want = reference(labels, x)
    for _ in range(5):  # first calls: compilation, allocator pools
        to_numpy(loss(labels, x))
    start = _resident_mb()
    for call in range(200):
        value = to_numpy(loss(labels, x))
        grown = _resident_mb() - start
        assert grown < 40, f"+{grown:.0f} MB after {call + 1} calls"
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    assert _resident_mb() - start < 20


@pytest.mark.skipif(BACKEND != "jax", reason="the compiled functions of eager JAX")
def test_eager_jax_cache_is_bounded_and_holds_nothing_alive():
    """One compiled function per shape, at most CACHE_SIZE per loss; a loss that is garbage
    takes its functions with it (the cache holds it weakly); values and gradients equal
    those under jax.jit."""
    import gc
    import weakref

    import jax

    from triplet_tools.losses import eager

    loss = triplet_batch_all_loss(metric="euclidean")
    rng = np.random.default_rng(8)
    for rows in range(4, 4 + eager.CACHE_SIZE + 3):
        labels = np.arange(rows) % 2
        x = rng.normal(size=(rows, 3)).astype("float32")
        got = to_numpy(loss(labels, x))
        np.testing.assert_allclose(got, rp.batch_all_loss(labels, x, metric="euclidean"), 1e-5)
    assert len(eager._compiled[loss]) == eager.CACHE_SIZE

    def f(t, loss=loss):
        return loss(labels, t)

    eager_value, eager_grad = jax.value_and_grad(f)(x)
    jit_value, jit_grad = jax.jit(jax.value_and_grad(f))(x)
    np.testing.assert_allclose(np.asarray(eager_value), np.asarray(jit_value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(eager_grad), np.asarray(jit_grad), rtol=1e-5, atol=1e-7)

    alive = weakref.ref(loss)
    del loss, f
    gc.collect()
    assert alive() is None  # so its entry of the weak table is gone too
