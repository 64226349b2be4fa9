"""MiningStatistics against the brute-force reference: eager, compiled in evaluate/fit, config."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reference as ref
import reference_pairs as rp
from backend import to_numpy
from triplet_tools import PNLoss, PrimingLoss, TripletLoss
from triplet_tools.losses import (
    CircleLoss,
    LiftedStructLoss,
    MultiSimilarityLoss,
    SoftNearestNeighborLoss,
)
from triplet_tools.memory import CrossBatchMemory
from triplet_tools.metrics import STATISTICS, MiningStatistics
from triplet_tools.tfa import TripletSemiHardLoss

# (loss, reference kwargs): each mining/scoring kind once.
CASES = {
    "semi-hard": (TripletLoss(margin=0.3), {"distance_name": "cosine", "margin": 0.3}),
    "hard-l2": (
        TripletLoss(distance="euclidean", negative_mining_strategy="hard", margin=1.0),
        {"distance_name": "euclidean", "negative": "hard", "margin": 1.0},
    ),
    "easy-pn": (
        PNLoss(distance="sql2", positive_mining_strategy="easy", margin=0.5),
        {"loss": "pn", "distance_name": "sql2", "positive": "easy", "margin": 0.5},
    ),
    "soft": (
        TripletLoss(soft_margin=True, semi_margin=0.05),
        {"distance_name": "cosine", "soft_margin": True, "semi_margin": 0.05},
    ),
    "priming": (PrimingLoss(), {"loss": "priming", "distance_name": "euclidean_norm"}),
}


def reference_statistics(batches, kwargs):
    """SPEC's statistics of the anchors of every batch together (ratios of sums)."""
    mining = {
        key: value
        for key, value in kwargs.items()
        if key in ("loss", "distance_name", "positive", "negative", "semi_margin")
    }
    anchors = valid = active = sum_ap = sum_an = 0
    for labels, embeddings in batches:
        options = ref.anchor_options(labels, embeddings, **kwargs)
        distances = ref.mined_distances(labels, embeddings, **mining)
        for (losses, is_valid, _), pair in zip(options, distances):
            anchors += 1
            if is_valid:
                (loss,) = losses
                valid, active = valid + 1, active + (loss > 0)
                sum_ap, sum_an = sum_ap + pair[0], sum_an + pair[1]
    return {
        "valid_anchors": valid / anchors,
        "active_triplets": active / valid,
        "mean_d_ap": sum_ap / valid,
        "mean_d_an": sum_an / valid,
    }


def batch(seed=0):
    """10 anchors: classes 3 and 4 have no positive, so 8 of 10 are valid."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    return labels, rng.normal(size=(10, 4)).astype("float32")


def assert_statistics(got, want, rtol=1e-5):
    assert {key: float(to_numpy(got[key])) for key in STATISTICS} == pytest.approx(want, rel=rtol)


@pytest.mark.parametrize("case", CASES)
def test_two_batches_eager_match_reference(case):
    loss, kwargs = CASES[case]
    metric = MiningStatistics(loss)
    batches = [batch(0), batch(1)]
    for labels, embeddings in batches:
        metric.update_state(labels, embeddings)
    want = reference_statistics(batches, kwargs)
    assert_statistics(metric.result(), want)
    if case in ("soft", "priming"):
        assert want["active_triplets"] == 1.0  # every valid anchor is active by definition
    metric.reset_state()
    assert all(float(to_numpy(v)) == 0.0 for v in metric.result().values())


def test_hand_worked_statistics():
    """1-D points 0, 1 (class 0) and 3, 10 (class 1), euclidean, hard/hard, margin 1.

    anchor 0: d_ap = 1, d_an = 3 -> loss max(1 - 3 + 1, 0) = 0      (inactive)
    anchor 1: d_ap = 1, d_an = 2 -> 0                                (inactive)
    anchor 3: d_ap = 7, d_an = 2 -> 6                                (active)
    anchor 10: d_ap = 7, d_an = 9 -> 0                               (inactive)
    valid 4/4 = 1, active 1/4, mean d_ap = 16/4 = 4, mean d_an = 16/4 = 4.
    """
    metric = MiningStatistics(TripletLoss(distance="euclidean", negative_mining_strategy="hard"))
    metric.update_state([0, 0, 1, 1], np.array([[0.0], [1.0], [3.0], [10.0]], "float32"))
    assert_statistics(
        metric.result(),
        {"valid_anchors": 1.0, "active_triplets": 0.25, "mean_d_ap": 4.0, "mean_d_an": 4.0},
    )


def _model():
    init = keras.initializers.GlorotUniform  # seeded: set_random_seed would import TF
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="tanh", kernel_initializer=init(0)),
            keras.layers.Dense(3, kernel_initializer=init(1)),
        ]
    )


@pytest.mark.parametrize("case", ["semi-hard", "easy-pn"])
def test_compiled_evaluate_accumulates_over_batches(case):
    """evaluate() runs the metric in the compiled test step (XLA on TF and JAX), batch by batch."""
    loss, kwargs = CASES[case]
    labels = np.concatenate([batch(0)[0], batch(1)[0]])
    x = np.concatenate([batch(0)[1], batch(1)[1]])
    model = _model()
    model.compile(
        "sgd",
        loss,
        metrics=[MiningStatistics(loss)],
        jit_compile="auto" if keras.backend.backend() == "torch" else True,
    )
    logs = model.evaluate(x, labels, batch_size=10, verbose=0, return_dict=True)
    embeddings = to_numpy(model.predict(x, verbose=0))
    want = reference_statistics(
        [(labels[:10], embeddings[:10]), (labels[10:], embeddings[10:])], kwargs
    )
    assert {key: logs[key] for key in STATISTICS} == pytest.approx(want, rel=1e-4)


def test_fit_logs_training_and_validation_statistics(capsys):
    loss, kwargs = CASES["hard-l2"]
    labels, x = batch(0)
    model = _model()
    model.compile("sgd", loss, metrics=[MiningStatistics(loss)])
    embeddings = to_numpy(model.predict(x, verbose=0))
    history = model.fit(x, labels, batch_size=10, epochs=1, verbose=2, validation_data=(x, labels))
    printed = capsys.readouterr().out
    # The training step mines the embeddings of the weights before its update.
    want = reference_statistics([(labels, embeddings)], kwargs)
    assert {key: history.history[key][0] for key in STATISTICS} == pytest.approx(want, rel=1e-4)
    assert {"val_" + key for key in STATISTICS} <= set(history.history)
    assert all(f"{key}: " in printed for key in STATISTICS)


def _has_positive_and_negative(labels, references):
    """SPEC's validity: anchor ``a`` (row ``a`` of ``references``) has a positive (another
    row with its label) and a negative."""
    return [
        any(references[j] == labels[a] for j in range(len(references)) if j != a)
        and any(label != labels[a] for label in references)
        for a in range(len(labels))
    ]


def _multi_similarity_valid(labels, references, embeddings):
    """Multi-similarity's validity (P'(a) and N'(a) non-empty), from reference_pairs."""
    _, counts = rp.multi_similarity_per_anchor(references, embeddings, distance_name="euclidean")
    return list(counts[: len(labels)] > 0)


#: (loss with a memory, brute-force validity of the batch's anchors over [batch ; memory]).
MEMORY_CASES = {
    "hard-l2": (
        lambda memory: TripletLoss(
            distance="euclidean", negative_mining_strategy="hard", memory=memory
        ),
        None,
    ),
    "batch-all": (
        lambda memory: TripletLoss(
            distance="euclidean",
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            average="active",
            memory=memory,
        ),
        None,
    ),
    "tfa-semihard": (lambda memory: TripletSemiHardLoss(memory=memory), None),
    "multi-similarity": (
        lambda memory: MultiSimilarityLoss(distance="euclidean", memory=memory),
        _multi_similarity_valid,
    ),
    "circle": (lambda memory: CircleLoss(gamma=10.0, memory=memory), None),
    "soft-nn": (lambda memory: SoftNearestNeighborLoss(memory=memory), None),
    "lifted": (lambda memory: LiftedStructLoss(memory=memory), None),
}


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_fit_with_memory_reports_the_valid_anchors_the_loss_had(case):
    """Batches of one class each: a batch alone has no negative, so every anchor is valid
    only through the memory (here 6 slots, a ring buffer over batches of 4). Inside fit the
    loss hands the metric what it mined against [batch ; memory]; the expected share is a
    brute-force count over those references. The learning rate is 0 so that the embeddings
    (and the stored rows) are model.predict's."""
    make, validity = MEMORY_CASES[case]
    classes = [0, 1, 0, 2, 1]
    labels = np.repeat(classes, 4)
    # Classes around their own centres, so that multi-similarity's P'/N' leave some anchors
    # of these batches invalid (8 of 20 valid, against 16 of 20 with P and N alone).
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 4))
    x = (rng.normal(size=(len(labels), 4)) * 0.5 + centres[labels]).astype("float32")
    memory = CrossBatchMemory(size=6)
    model = keras.Sequential([_model(), memory])
    loss = make(memory)
    model.compile(keras.optimizers.SGD(0.0), loss, metrics=[MiningStatistics(loss)])
    embeddings = to_numpy(model.predict(x, verbose=0))
    history = model.fit(x, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)

    valid = 0
    for start in range(0, len(labels), 4):
        rows = slice(start, start + 4)
        stored = slice(max(start - 6, 0), start)  # the memory: the last 6 rows before
        references = np.concatenate([labels[rows], labels[stored]])
        if validity is None:
            flags = _has_positive_and_negative(labels[rows], references)
        else:
            reference_rows = np.concatenate([embeddings[rows], embeddings[stored]])
            flags = validity(labels[rows], references, reference_rows)
        assert start > 0 or not any(flags)  # the first batch: nothing in memory yet
        valid += sum(flags)
    want = valid / len(labels)
    assert want > 0  # the batches alone: 0
    assert history.history["valid_anchors"][0] == pytest.approx(want, rel=1e-6)


def test_prefix_and_two_losses():
    first, second = TripletLoss(), PrimingLoss()
    labels, x = batch(0)
    model = _model()
    model.compile(
        "sgd",
        first,
        metrics=[MiningStatistics(first), MiningStatistics(second, name="p", prefix="priming_")],
    )
    logs = model.evaluate(x, labels, verbose=0, return_dict=True)
    assert set(STATISTICS) | {"priming_" + key for key in STATISTICS} <= set(logs)


def test_config_round_trip_and_saved_model(tmp_path):
    loss = PNLoss(distance="euclidean", margin=0.7)
    metric = MiningStatistics(loss, prefix="pn_")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, MiningStatistics) and clone.prefix == "pn_"
    assert clone.loss.get_config() == loss.get_config()
    labels, x = batch(0)
    model = _model()
    model.compile("sgd", loss, metrics=[metric])
    model.fit(x, labels, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    # A fresh process that imports only triplet_tools (which registers the metric).
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        import triplet_tools
        model = keras.models.load_model({str(tmp_path / "model.keras")!r})
        logs = model.evaluate(np.load({str(tmp_path / "x.npy")!r}), np.array({labels.tolist()}),
                              verbose=0, return_dict=True)
        print(json.dumps(logs))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    logs = json.loads(done.stdout.strip().splitlines()[-1])
    assert logs["pn_valid_anchors"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"loss": keras.losses.MeanSquaredError()}, "loss must be a triplet_tools loss"),
        ({"loss": TripletLoss(), "prefix": 3}, "prefix must be a string; received 3"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MiningStatistics(**kwargs)
