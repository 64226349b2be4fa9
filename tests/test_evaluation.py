"""retrieval_metrics against the brute-force reference, hand-worked cases, blocks, errors,
callback."""

import keras
import numpy as np
import pytest

import reference as ref
from backend import tensor, to_numpy
from triplet_tools import TripletLoss
from triplet_tools.distances import DISTANCE_NAMES, Cosine
from triplet_tools.evaluation import (
    RetrievalMetricsCallback,
    metric_names,
    query_block_rows,
    retrieval_metrics,
)


def assert_metrics_equal(got, want, tol=1e-9):
    assert set(got) == set(want)
    for name in want:
        assert abs(got[name] - want[name]) <= tol, (name, got[name], want[name])


def random_set(rng, n=60, dim=5, classes=7):
    labels = rng.integers(0, classes, n)
    labels[0] = 99  # a class with one member: skipped in leave-one-out
    return rng.normal(size=(n, dim)).astype("float32"), labels


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_leave_one_out_matches_reference(rng, distance, block_size):
    x, labels = random_set(rng)
    got = retrieval_metrics(x, labels, distance=distance, k=(1, 3, 100), block_size=block_size)
    assert_metrics_equal(
        got, ref.retrieval_metrics(x, labels, distance_name=distance, k=(1, 3, 100))
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "manhattan"])
def test_reference_set_matches_reference(rng, distance):
    """Queries of a class the references lack (label 99) are skipped."""
    x, labels = random_set(rng)
    references = rng.normal(size=(45, 5))
    reference_labels = rng.integers(0, 9, 45)
    got = retrieval_metrics(
        x, labels, references, reference_labels, distance=distance, block_size=4
    )
    assert_metrics_equal(
        got, ref.retrieval_metrics(x, labels, references, reference_labels, distance_name=distance)
    )


@pytest.mark.parametrize("block_size", [None, 3])
def test_many_ties_are_broken_by_reference_index(rng, block_size):
    """Integer points on a 3x3 grid: most distances are tied, and exact in float32."""
    x = rng.integers(0, 3, size=(80, 2)).astype("float32")
    labels = rng.integers(0, 4, 80)
    got = retrieval_metrics(x, labels, distance="sql2", k=(1, 2, 5), block_size=block_size)
    assert_metrics_equal(got, ref.retrieval_metrics(x, labels, distance_name="sql2", k=(1, 2, 5)))


def test_hand_worked_tie():
    """One query q = 0 of class A; references r0 = 1 (B), r1 = -1 (A), r2 = 2 (A).

    Manhattan distances 1, 1, 2: r0 and r1 tie and r0 ranks first (lower index), so the
    ranking is r0, r1, r2 with rel = 0, 1, 1 and R = 2:
    precision@1 = 0, recall@1 = 0, recall@2 = 1, r_precision = 1/2,
    map@r = (1/2) (P(1)*0 + P(2)*1) = (1/2)(1/2) = 0.25,
    map = (1/2) (P(2) + P(3)) = (1/2)(1/2 + 2/3) = 7/12 (the full ranking).
    (The other tie order would give precision@1 = 1 and map@r = 0.5.)
    """
    got = retrieval_metrics(
        [[0.0]], ["A"], [[1.0], [-1.0], [2.0]], ["B", "A", "A"], distance="manhattan", k=(1, 2)
    )
    assert got == pytest.approx(
        {
            "precision@1": 0.0,
            "recall@1": 0.0,
            "recall@2": 1.0,
            "r_precision": 0.5,
            "map@r": 0.25,
            "map": (1 / 2 + 2 / 3) / 2,
        },
        abs=1e-12,
    )


def test_hand_worked_leave_one_out():
    """Points 0, 0.5, 0.6, 1.0, 5.0 with classes 0, 1, 0, 1, 2 (Manhattan, leave-one-out).

    q=0.0 (0):  0.5(1) .5, 0.6(0) .6, 1.0(1) 1, 5(2) 5      -> rel 0 1 0 0
    q=0.5 (1):  0.6(0) .1, 0.0(0) .5, 1.0(1) .5 (tie: index 0 first), 5 -> rel 0 0 1 0
    q=0.6 (0):  0.5(1) .1, 1.0(1) .4, 0.0(0) .6, 5           -> rel 0 0 1 0
    q=1.0 (1):  0.6(0) .4, 0.5(1) .5, 0.0(0) 1, 5            -> rel 0 1 0 0
    q=5.0 (2):  no other member of class 2: skipped.
    R = 1 everywhere, so precision@1 = r_precision = map@r = 0;
    recall@2 = (1 + 0 + 0 + 1) / 4 = 0.5 and recall@3 = 4 / 4 = 1;
    the relevant reference ranks 2, 3, 3, 2: map = (1/2 + 1/3 + 1/3 + 1/2) / 4 = 5/12.
    """
    x = np.array([[0.0], [0.5], [0.6], [1.0], [5.0]], "float32")
    got = retrieval_metrics(x, [0, 1, 0, 1, 2], distance="manhattan", k=(2, 3))
    assert got == pytest.approx(
        {
            "precision@1": 0.0,
            "recall@2": 0.5,
            "recall@3": 1.0,
            "r_precision": 0.0,
            "map@r": 0.0,
            "map": 5 / 12,
        },
        abs=1e-12,
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "manhattan"])
@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_groups_leave_one_out_match_reference(rng, distance, block_size):
    """Camera groups: same label and same camera leaves the query's ranking."""
    x, labels = random_set(rng)
    cameras = rng.integers(0, 3, len(labels))
    got = retrieval_metrics(
        x, labels, distance=distance, k=(1, 3, 100), query_groups=cameras, block_size=block_size
    )
    want = ref.retrieval_metrics(
        x, labels, distance_name=distance, k=(1, 3, 100), query_groups=cameras
    )
    assert_metrics_equal(got, want)
    assert got != retrieval_metrics(x, labels, distance=distance, k=(1, 3, 100))


@pytest.mark.parametrize("block_size", [None, 3])
def test_groups_with_a_reference_set_and_ties(rng, block_size):
    """Integer grid (ties everywhere, exact in float32), string groups, a reference set."""
    x = rng.integers(0, 3, size=(50, 2)).astype("float32")
    labels = rng.integers(0, 4, 50)
    references = rng.integers(0, 3, size=(70, 2)).astype("float32")
    ref_labels = rng.integers(0, 4, 70)
    names = np.array(["cam-a", "cam-b", "cam-c"])
    query_cams, ref_cams = rng.integers(0, 3, 50), rng.integers(0, 3, 70)
    got = retrieval_metrics(
        x,
        labels,
        references,
        ref_labels,
        distance="sql2",
        k=(1, 2, 5),
        query_groups=names[query_cams],
        ref_groups=names[ref_cams],
        block_size=block_size,
    )
    want = ref.retrieval_metrics(
        x,
        labels,
        references,
        ref_labels,
        distance_name="sql2",
        k=(1, 2, 5),
        query_groups=query_cams,
        ref_groups=ref_cams,
    )
    assert_metrics_equal(got, want)


def test_groups_hand_worked():
    """Market-1501 on a line (euclidean, leave-one-out): points 0 (A, cam 0), 1 (A, cam 0),
    3 (A, cam 1), 2 (B, cam 1) (integers: every distance, and the tie of q=1, is exact).

    q=0:   1 is A on cam 0: removed. Ranking 2 (B), 3 (A): R = 1, AP = 1/2.
    q=1:   0 removed. Ranking 2 (B) 1, 3 (A) 2: AP = 1/2.
    q=3:   nothing removed (cam 1 holds no other A). 2 (B) 1, 1 (A) 2, 0 (A) 3:
           R = 2, rel 0 1 1: precision@1 = 0, r_precision = 1/2, map@r = (1/2)(1/2) = 1/4,
           map = (1/2)(1/2 + 2/3) = 7/12.
    q=2:   no other B: skipped.
    Means over 3 queries: r_precision = 1/6, map@r = 1/12, map = (1/2 + 1/2 + 7/12)/3 = 19/36.
    Without groups q=0 and q=1 find each other first (q=1: 0 and 2 tie, the lower index
    wins): precision@1 = 2/3.
    """
    x = np.array([[0.0], [1.0], [3.0], [2.0]], "float32")
    got = retrieval_metrics(
        x, [0, 0, 0, 1], distance="euclidean", k=(1,), query_groups=[0, 0, 1, 1]
    )
    assert got == pytest.approx(
        {"precision@1": 0, "recall@1": 0, "r_precision": 1 / 6, "map@r": 1 / 12, "map": 19 / 36},
        abs=1e-12,
    )
    plain = retrieval_metrics(x, [0, 0, 0, 1], distance="euclidean", k=(1,))
    assert plain["precision@1"] == pytest.approx(2 / 3)


def test_backend_tensors_and_column_labels(rng):
    x, labels = random_set(rng)
    got = retrieval_metrics(tensor(x), tensor(labels[:, None]))
    assert_metrics_equal(got, ref.retrieval_metrics(x, labels))


class RecordingCosine(Cosine):
    """Cosine that records the shape of every distance block it computes."""

    def __init__(self):
        self.shapes = []

    def pairwise(self, x, y):
        self.shapes.append((x.shape[0], y.shape[0]))
        return super().pairwise(x, y)


def test_distances_are_computed_in_query_blocks(rng):
    """Peak memory is one block: no call may compare more than the block's rows."""
    x = rng.normal(size=(3000, 4)).astype("float32")
    labels = rng.integers(0, 30, 3000)
    distance = RecordingCosine()
    blocked = retrieval_metrics(x, labels, distance=distance)
    rows = query_block_rows(3000, 3000, 4, distance)
    assert rows < 3000 and all(n <= rows and m == 3000 for n, m in distance.shapes)
    assert sum(n for n, _ in distance.shapes) == 3000
    assert_metrics_equal(blocked, retrieval_metrics(x, labels, block_size=3000), tol=1e-12)


def test_100k_by_100k_blocks_stay_small():
    """The automatic block keeps one block near 4M distances, for 100,000 x 100,000 too."""
    from triplet_tools.distances import get

    for name in ("cosine", "manhattan"):
        distance = get(name)
        rows = query_block_rows(100_000, 100_000, 64, distance)
        width = 100_000 * (64 if name == "manhattan" else 1)
        assert rows >= 1 and rows * width <= max(2**22, width)


@pytest.mark.parametrize(
    "args,kwargs,pattern",
    [
        (
            ([1.0, 2.0], [0, 1]),
            {},
            r"embeddings must be a non-empty \(N, D\) array; received shape \(2,\)",
        ),
        (
            (np.zeros((3, 2)), [0, 1]),
            {},
            r"labels must have shape \(3,\) to match embeddings; received shape \(2,\)",
        ),
        ((np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2))), {}, "must be given together"),
        (
            (np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 3)), [0, 1]),
            {},
            r"same width; received shapes \(3, 2\) and \(2, 3\)",
        ),
        ((np.zeros((3, 2)), [0, 0, 1]), {"k": 0}, "k must be a positive int .*received 0"),
        ((np.zeros((3, 2)), [0, 0, 1]), {"k": (1, "5")}, "k must be a positive int"),
        ((np.zeros((3, 2)), [0, 0, 1]), {"distance": "hamming"}, "Unknown distance: 'hamming'"),
        (
            (np.array([[0.0, np.nan], [1, 1], [2, 2]]), [0, 0, 1]),
            {},
            "embeddings contain 1 NaN or infinite",
        ),
        ((np.array([["a", "b"], ["c", "d"]]), [0, 0]), {}, "embeddings must be numeric"),
        ((np.zeros((3, 2)), [0, 1, 2]), {}, "No query has a relevant reference"),
        (
            (np.zeros((3, 2)), [0, 0, 1]),
            {"block_size": 0},
            r"block_size must be a positive int or None; received block_size=0\.",
        ),
        (
            (np.zeros((3, 2)), [0, 0, 1]),
            {"block_size": True},
            "block_size must be a positive int or None; received block_size=True",
        ),
        ((np.zeros((3, 2)), [0, 0, 1]), {"k": True}, "k must be a positive int .*received True"),
        (
            (np.zeros((3, 2)), [np.nan] * 3),
            {},
            r"labels contain 3 NaN or infinite values; class labels must be finite",
        ),
        ((np.zeros((3, 2)), [0.0, 0.0, np.inf]), {}, "labels contain 1 NaN or infinite values"),
        (
            (np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2)), [1.0, np.nan]),
            {},
            "ref_labels contain 1 NaN",
        ),
        (
            (np.zeros((3, 2), "complex64"), [0, 0, 1]),
            {},
            "embeddings must be numeric; received dtype complex64",
        ),
        ((np.zeros((3, 2)), [0, 0, 1]), {"query_groups": [0, 1]}, "query_groups must have"),
        ((np.zeros((3, 2)), [0, 0, 1]), {"ref_groups": [0, 1, 1]}, "ref_groups needs"),
        (
            (np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2)), [0, 1]),
            {"query_groups": [0, 1, 1]},
            "given together",
        ),
        (
            (np.zeros((3, 2)), [0, 0, 1], np.zeros((2, 2)), [0, 1]),
            {"query_groups": [0, 1, 1], "ref_groups": [0]},
            r"ref_groups must have shape \(2,\)",
        ),
        (
            (np.zeros((2, 2)), [0, 0]),
            {"query_groups": [5, 5]},
            "No query has a relevant reference",
        ),
    ],
)
def test_bad_input(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        retrieval_metrics(*args, **kwargs)


# --- the callback ---------------------------------------------------------------------------


def _model_and_data(seed=0, n=48):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    x = (rng.normal(size=(n, 6)) + labels[:, None] * 0.5).astype("float32")
    init = keras.initializers.GlorotUniform  # seeded: set_random_seed would import TF
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", kernel_initializer=init(seed)),
            keras.layers.Dense(3, kernel_initializer=init(seed + 1)),
        ]
    )
    model.compile(keras.optimizers.SGD(0.05), TripletLoss(margin=0.5))
    return model, x, labels


def near_tie_tolerance(embeddings, gap=1e-6):
    """How far float32 distances may move a metric from the float64 reference.

    Two references within ``gap`` of each other (in float64) may swap places in float32;
    a swap changes the metrics of that one query by at most 1, so the mean by at most
    1 / #queries. Returns that bound summed over the queries with such a near tie.
    """
    d = np.array([[ref.distance("cosine", a, b) for b in embeddings] for a in embeddings])
    np.fill_diagonal(d, np.inf)
    gaps = np.diff(np.sort(d, axis=1)[:, :-1], axis=1)
    return 1e-6 + np.count_nonzero(np.any(gaps < gap, axis=1)) / len(embeddings)


class ReferenceCheck(keras.callbacks.Callback):
    """Runs after the metrics callback: the logs it sees must equal the reference's metrics
    of the embeddings the model gives at that moment."""

    def __init__(self, x, labels):
        super().__init__()
        self.x, self.labels, self.seen = x, labels, []

    def on_epoch_end(self, epoch, logs=None):
        embeddings = to_numpy(self.model.predict(self.x, verbose=0)).astype(np.float64)
        want = ref.retrieval_metrics(embeddings, self.labels)
        tolerance = near_tie_tolerance(embeddings)
        self.seen.append(
            {name: (logs.get("val_" + name), value, tolerance) for name, value in want.items()}
        )


def test_callback_feeds_history_progress_bar_early_stopping_and_checkpoint(tmp_path, capsys):
    model, x, labels = _model_and_data()
    metrics = RetrievalMetricsCallback(x, labels)
    check = ReferenceCheck(x, labels)
    early = keras.callbacks.EarlyStopping("val_map@r", mode="max", patience=10)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_map@r", mode="max", save_best_only=True
    )
    history = model.fit(
        x, labels, batch_size=16, epochs=3, verbose=2, callbacks=[metrics, check, early, checkpoint]
    )
    printed = capsys.readouterr().out
    for epoch in check.seen:
        for name, (logged, want, tolerance) in epoch.items():
            assert logged is not None and abs(logged - want) <= tolerance, (name, logged, want)
    assert set(history.history) >= {"val_" + name for name in metric_names()}
    assert history.history["val_map@r"] == metrics.history["map@r"]
    assert metrics.epochs == [0, 1, 2]
    assert printed.count("val_map@r: ") == 3 and "val_recall@10: " in printed
    assert early.best == max(history.history["val_map@r"])
    assert checkpoint.best == max(history.history["val_map@r"])
    assert (tmp_path / "best.keras").exists()


def test_callback_every_n_epochs_and_the_last(rng):
    model, x, labels = _model_and_data(1)
    metrics = RetrievalMetricsCallback(x, labels, every=2, k=(1, 2), log_metrics=["map@r"])
    history = model.fit(x, labels, batch_size=16, epochs=5, verbose=0, callbacks=[metrics])
    assert metrics.epochs == [1, 3, 4]
    assert len(history.history["val_map@r"]) == 3 and "val_recall@2" not in history.history
    assert len(history.history["loss"]) == 5
    assert len(metrics.history["recall@2"]) == 3  # computed, kept, not logged


def test_callback_with_reference_set_and_prefix():
    model, x, labels = _model_and_data(2)
    metrics = RetrievalMetricsCallback(
        x[:20], labels[:20], x[20:], labels[20:], prefix="gallery_", distance="euclidean"
    )
    model.fit(x, labels, batch_size=16, epochs=1, verbose=0, callbacks=[metrics])
    embeddings = to_numpy(model.predict(x, verbose=0)).astype(np.float64)
    want = ref.retrieval_metrics(
        embeddings[:20], labels[:20], embeddings[20:], labels[20:], distance_name="euclidean"
    )
    assert_metrics_equal({n: v[0] for n, v in metrics.history.items()}, want, tol=1e-5)
    assert set(model.history.history) >= {"gallery_map@r", "gallery_precision@1"}


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"every": 0}, r"every must be a positive int; received every=0\."),
        ({"every": True}, r"every must be a positive int; received every=True\."),
        ({"batch_size": 2.5}, r"batch_size must be a positive int; received batch_size=2.5\."),
        ({"prefix": 3}, r"prefix must be a string; received 3\."),
        (
            {"x": None},
            r"x must be model inputs: an array or tensor of shape \(N, ...\) or a dict of them; "
            r"received NoneType None",
        ),
        (
            {"x": np.array([[0.0, 1, 2], [3, np.nan, 5], [6, 7, np.inf], [0, 0, 0]])},
            r"x contain 2 NaN or infinite values \(the model would embed them as NaN\)",
        ),
        (
            {"x": {"a": np.zeros((4, 3)), "b": np.zeros((3, 1))}},
            r"every input must have the same number of rows; received "
            r"\{'a': shape \(4, 3\), 'b': shape \(3, 1\)\}",
        ),
        ({"ref_x": None, "ref_y": [0, 1]}, "ref_x and ref_y must be given together"),
        (
            {"ref_x": np.full((2, 3), np.nan), "ref_y": [0, 1]},
            "ref_x contain 6 NaN or infinite values",
        ),
        ({"y": [0, 1, 2, 3]}, "No query in x has a relevant reference"),
        ({"y": [0, 0]}, r"y must have shape \(4,\) to match x"),
        ({"ref_x": np.zeros((2, 3))}, "ref_x and ref_y must be given together"),
        ({"distance": "cos"}, "Unknown distance: 'cos'"),
        ({"k": []}, "k must be a positive int"),
        ({"log_metrics": ["map@r", "recall@3"]}, "log_metrics must name some of precision@1"),
        ({"log_metrics": []}, "log_metrics must name some of"),
    ],
)
def test_callback_bad_arguments(kwargs, pattern):
    arguments = {"x": np.zeros((4, 3)), "y": [0, 0, 1, 1], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        RetrievalMetricsCallback(**arguments)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_embeddings_give_the_float32_metrics(rng, dtype):
    """bfloat16 / float16 arrays (what ``predict`` returns under a mixed policy) are ranked
    in float32: the metrics equal those of the same values cast to float32 by NumPy."""
    x, labels = random_set(rng)
    half = to_numpy(keras.ops.cast(tensor(x), dtype))
    assert str(half.dtype) == dtype
    want = ref.retrieval_metrics(half.astype(np.float64), labels)
    assert_metrics_equal(
        retrieval_metrics(half, labels), want, tol=near_tie_tolerance(half.astype(np.float64))
    )
    assert_metrics_equal(
        retrieval_metrics(tensor(half), labels),
        want,
        tol=near_tie_tolerance(half.astype(np.float64)),
    )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_callback_under_a_mixed_precision_policy_runs_every_epoch(policy):
    """Under a mixed policy the model's outputs are half precision; the callback must still
    compute every epoch (it stopped training after epoch 1 with "must be numeric")."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, x, labels = _model_and_data(3)
        assert str(to_numpy(model.predict(x[:2], verbose=0)).dtype) == policy.split("_")[1]
        metrics = RetrievalMetricsCallback(x, labels)
        history = model.fit(x, labels, batch_size=16, epochs=2, verbose=0, callbacks=[metrics])
    finally:
        keras.config.set_dtype_policy(previous)
    assert metrics.epochs == [0, 1] and len(history.history["val_map@r"]) == 2
    assert all(0.0 <= v <= 1.0 for v in history.history["val_map@r"])


def test_callback_with_dict_inputs_counts_rows_not_keys():
    """A two-input model's x is a dict; its length is the rows, not the number of keys."""
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    out = keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(0))(
        keras.layers.Concatenate()([a, b])
    )
    model = keras.Model({"a": a, "b": b}, out)
    model.compile("sgd", TripletLoss())
    rng = np.random.default_rng(0)
    x = {
        "a": rng.normal(size=(12, 3)).astype("float32"),
        "b": rng.normal(size=(12, 2)).astype("float32"),
    }
    labels = np.arange(12) % 3
    metrics = RetrievalMetricsCallback(x, labels)
    model.fit(x, labels, epochs=1, batch_size=12, verbose=0, callbacks=[metrics])
    embeddings = to_numpy(model.predict(x, verbose=0)).astype(np.float64)
    assert_metrics_equal(
        {n: v[0] for n, v in metrics.history.items()},
        ref.retrieval_metrics(embeddings, labels),
        tol=1e-5,
    )
