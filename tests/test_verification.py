"""verification_metrics and verification_roc against scikit-learn and a loop over the pairs,
hand-worked ties, blocks, every bucket path, references, errors, and the callback."""

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

import triplet_tools._genuine_ranks as genuine_ranks
import triplet_tools._pair_counts as pair_counts
from backend import tensor, to_numpy
from triplet_tools import TripletLoss
from triplet_tools.distances import DISTANCE_NAMES, Cosine, get
from triplet_tools.evaluation import (
    VerificationMetricsCallback,
    verification_metric_names,
    verification_metrics,
    verification_roc,
)

FAR = (0.01, 0.1, 0.5)


def pair_distances(x, labels, references=None, ref_labels=None, distance="cosine"):
    """Every pair's distance (the library's pairwise matrix, so the same floats) and whether
    it is genuine: the ``i < j`` pairs without references, else every (query, reference)."""
    x = np.asarray(x)
    other = x if references is None else np.asarray(references, x.dtype)
    matrix = to_numpy(get(distance).pairwise(tensor(x), tensor(other)))
    labels = np.asarray(labels)
    if references is None:
        upper = np.triu_indices(len(x), 1)
        return matrix[upper] + 0.0, labels[upper[0]] == labels[upper[1]]
    same = labels[:, None] == np.asarray(ref_labels)[None, :]
    return matrix.ravel() + 0.0, same.ravel()


def sklearn_metrics(distances, genuine, far=FAR):
    """SPEC's definitions read off scikit-learn's roc_curve(drop_intermediate=False)."""
    metrics = {"roc_auc": roc_auc_score(genuine, -distances)}
    fpr, tpr, thresholds = roc_curve(genuine, -distances, drop_intermediate=False)
    frr = 1 - tpr
    i = int(np.argmax(fpr >= frr))  # the first ROC point at or past the crossing
    gap0, gap1 = frr[i - 1] - fpr[i - 1], frr[i] - fpr[i]
    metrics["eer"] = fpr[i - 1] + gap0 / (gap0 - gap1) * (fpr[i] - fpr[i - 1])
    for target in far:
        last = np.flatnonzero(fpr <= target)[-1]  # fpr rises with the threshold
        metrics[f"tar@far={target:g}"] = tpr[last]
        metrics[f"threshold@far={target:g}"] = -thresholds[last] if last else -np.inf
    return metrics


def loop_metrics(distances, genuine, far=FAR):
    """The same definitions by loops over the pairs and over every distinct distance."""
    gen, imp = distances[genuine].tolist(), distances[~genuine].tolist()
    wins = sum(1.0 if g < i else 0.5 if g == i else 0.0 for g in gen for i in imp)
    metrics = {"roc_auc": wins / (len(gen) * len(imp))}
    points = [(0.0, 0.0, -np.inf)]  # (FAR, TAR, t) at t = -inf, then every distinct distance
    for t in sorted(set(distances.tolist())):
        points.append((sum(i <= t for i in imp) / len(imp), sum(g <= t for g in gen) / len(gen), t))
    for (far0, tar0, _), (far1, tar1, _) in zip(points, points[1:]):
        if far1 >= 1 - tar1:
            gap0, gap1 = 1 - tar0 - far0, 1 - tar1 - far1
            metrics["eer"] = far0 + gap0 / (gap0 - gap1) * (far1 - far0)
            break
    for target in far:
        allowed = [(tar, t) for fa, tar, t in points if fa <= target]
        metrics[f"tar@far={target:g}"] = max(tar for tar, _ in allowed)
        metrics[f"threshold@far={target:g}"] = max(t for _, t in allowed)
    return metrics


def assert_close(got, want, tol=1e-12):
    assert list(got) == list(want)
    for name, value in want.items():
        assert isinstance(got[name], float), name
        if name.startswith("threshold") and np.isinf(value):
            assert got[name] == value, (name, got[name], value)
        else:
            assert got[name] == pytest.approx(value, rel=tol, abs=tol), (name, got, want)


def grid_set(rng, n=70, dim=2, classes=4, dtype="float32"):
    """Integer points: distances are exact in float32 (squared euclidean, manhattan) and tie."""
    return rng.integers(-2, 3, size=(n, dim)).astype(dtype), rng.integers(0, classes, n)


def test_hand_worked_ties():
    """Points a = 0 (A), b = 0 (B), c = 1 (A), d = 2 (B) on a line, Manhattan.

    Pairs: ab 0 imp, ac 1 gen, ad 2 imp, bc 1 imp, bd 2 gen, cd 1 imp: G = 2, I = 4.
    roc_auc: g = 1 beats 2, ties 1 and 1 (2 wins); g = 2 ties 2 (1/2): 2.5 / 8 = 0.3125.
    ROC (FAR, TAR): t = -inf (0, 0), t = 0 (1/4, 0), t = 1 (3/4, 1/2), t = 2 (1, 1).
    eer: FAR - FRR is -3/4 at t = 0 and +1/4 at t = 1; FRR - FAR falls from 3/4 to -1/4,
    so the crossing is 3/4 of the way: 1/4 + 3/4 (3/4 - 1/4) = 0.625.
    far = 0.2: even t = 0 has FAR 1/4 > 0.2: TAR 0, threshold -inf.
    far = 0.5: t = 0 (FAR 1/4) is the largest allowed: TAR 0, threshold 0.
    far = 0.8: t = 1 (FAR 3/4): TAR 1/2, threshold 1.
    """
    x = np.array([[0.0], [0.0], [1.0], [2.0]], "float32")
    got = verification_metrics(x, ["A", "B", "A", "B"], distance="manhattan", far=(0.2, 0.5, 0.8))
    assert got == {
        "roc_auc": 0.3125,
        "eer": 0.625,
        "tar@far=0.2": 0.0,
        "threshold@far=0.2": -np.inf,
        "tar@far=0.5": 0.0,
        "threshold@far=0.5": 0.0,
        "tar@far=0.8": 0.5,
        "threshold@far=0.8": 1.0,
    }


def test_hand_worked_reference_set():
    """Queries 0 (A), 3 (B); references 1 (A), 2 (B), 5 (A), Manhattan: pairs (q, r)
    0-1: 1 gen, 0-2: 2 imp, 0-5: 5 gen, 3-1: 2 imp, 3-2: 1 gen, 3-5: 2 imp.
    Genuine {1, 1, 5}, impostors {2, 2, 2}: roc_auc = 2/3 (the 5 loses to every impostor).
    ROC: t = 1 (0, 2/3), t = 2 (1, 2/3), t = 5 (1, 1). FRR - FAR: 1/3 at t = 1, -2/3 at
    t = 2: crossing a third of the way: eer = 1/3. far = 0.5: t = 1, TAR 2/3.
    """
    got = verification_metrics(
        [[0.0], [3.0]], [0, 1], [[1.0], [2.0], [5.0]], [0, 1, 0], distance="manhattan", far=0.5
    )
    assert got == pytest.approx(
        {"roc_auc": 2 / 3, "eer": 1 / 3, "tar@far=0.5": 2 / 3, "threshold@far=0.5": 1.0},
        abs=1e-15,
    )


@pytest.mark.parametrize("distance", ["squared_euclidean", "manhattan", "euclidean"])
@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_exact_with_ties_against_sklearn_and_loops(rng, distance, block_size):
    x, labels = grid_set(rng)
    got = verification_metrics(x, labels, distance=distance, far=FAR, block_size=block_size)
    distances, genuine = pair_distances(x, labels, distance=distance)
    assert_close(got, sklearn_metrics(distances, genuine))
    assert_close(got, loop_metrics(distances, genuine))


@pytest.mark.parametrize("collect_limit", [0, 5])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_bucket_path(rng, monkeypatch, collect_limit, dtype):
    """Histogramming every level (limit 0), or collecting after one (5), in both key widths."""
    monkeypatch.setattr(pair_counts, "_COLLECT_LIMIT", collect_limit)
    x, labels = grid_set(rng, n=90, dtype=dtype)
    got = verification_metrics(x, labels, distance="sql2", far=(1e-3, 0.05, 0.3), block_size=11)
    distances, genuine = pair_distances(x, labels, distance="sql2")
    assert_close(got, sklearn_metrics(distances, genuine, far=(1e-3, 0.05, 0.3)))


@pytest.mark.parametrize("rank_table", [3, 64, 2**25, "searched"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_rank_table_path(rng, monkeypatch, rank_table, dtype):
    """The AUC's table of genuine ranks: one key a bucket (2**25), or coarse buckets binary-
    searched where they hold genuines (3, 64), looked up a few keys at a time; or no table,
    each genuine binary-searched in each block ("searched")."""
    if rank_table == "searched":
        monkeypatch.setattr(genuine_ranks, "_SEARCH_SHARE", np.inf)
    else:
        monkeypatch.setattr(genuine_ranks, "_SEARCH_SHARE", 0.0)
        monkeypatch.setattr(genuine_ranks, "_RANK_TABLE", rank_table)
    monkeypatch.setattr(genuine_ranks, "_RANK_CHUNK", 7)
    x, labels = grid_set(rng, n=70, dtype=dtype)
    got = verification_metrics(x, labels, distance="manhattan", far=FAR, block_size=9)
    distances, genuine = pair_distances(x, labels, distance="manhattan")
    assert_close(got, sklearn_metrics(distances, genuine))


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
def test_continuous_distances_against_sklearn(rng, distance):
    """Random embeddings: ties cannot occur and a last-bit difference between the blocks'
    and the full matrix's floats would move no count."""
    x = rng.normal(size=(150, 6)).astype("float32")
    labels = rng.integers(0, 6, 150)
    got = verification_metrics(x, labels, distance=distance, far=FAR, block_size=16)
    want = sklearn_metrics(*pair_distances(x, labels, distance=distance))
    assert_close(got, want, tol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "manhattan"])
def test_reference_set_against_sklearn(rng, distance):
    """A query class the references lack only adds impostor pairs."""
    x, labels = grid_set(rng, n=40, dim=3)
    references, ref_labels = grid_set(rng, n=55, dim=3, classes=6)
    got = verification_metrics(x, labels, references, ref_labels, distance=distance, far=FAR)
    distances, genuine = pair_distances(x, labels, references, ref_labels, distance=distance)
    want = sklearn_metrics(distances, genuine)
    assert_close(got, want, tol=1e-6 if distance == "cosine" else 1e-12)
    if distance == "manhattan":
        assert_close(got, loop_metrics(distances, genuine))


def test_backend_tensors_and_string_labels(rng):
    x, labels = grid_set(rng, n=30)
    names = np.array(["ann", "bob", "cy", "dee"])[labels]
    got = verification_metrics(tensor(x), names, distance="manhattan", far=0.1)
    assert got == verification_metrics(x, labels, distance="manhattan", far=0.1)


def test_keys_and_far_order():
    got = verification_metrics([[0.0], [1.0], [3.0]], [0, 0, 1], distance="l1", far=[0.5, 1e-4])
    assert list(got) == verification_metric_names((0.5, 1e-4))
    assert list(got) == [
        "roc_auc",
        "eer",
        "tar@far=0.5",
        "threshold@far=0.5",
        "tar@far=0.0001",
        "threshold@far=0.0001",
    ]


class RecordingCosine(Cosine):
    def __init__(self):
        self.shapes = []

    def pairwise(self, x, y):
        self.shapes.append((int(x.shape[0]), int(y.shape[0])))
        return super().pairwise(x, y)


def test_distances_are_computed_in_row_blocks(rng):
    """Two passes over blocks of at most block_size rows, never the whole matrix at once."""
    x = rng.normal(size=(50, 4)).astype("float32")
    distance = RecordingCosine()
    verification_metrics(x, rng.integers(0, 5, 50), distance=distance, block_size=8)
    assert len(distance.shapes) == 2 * 7
    assert max(rows for rows, _ in distance.shapes) == 8


def test_roc_points_are_exact(rng):
    x, labels = grid_set(rng, n=60)
    roc = verification_roc(x, labels, distance="manhattan", block_size=9)
    distances, genuine = pair_distances(x, labels, distance="manhattan")
    assert roc["threshold"][0] == -np.inf and roc["far"][0] == roc["tar"][0] == 0.0
    assert roc["far"][-1] == roc["tar"][-1] == 1.0
    for t, far, tar in zip(roc["threshold"][1:], roc["far"][1:], roc["tar"][1:]):
        assert far == np.mean(distances[~genuine] <= t)
        assert tar == np.mean(distances[genuine] <= t)
    # Every distinct distance of this grid is its own bucket: the whole ROC.
    fpr, tpr, _ = roc_curve(genuine, -distances, drop_intermediate=False)
    np.testing.assert_array_equal(roc["far"], fpr)
    np.testing.assert_array_equal(roc["tar"], tpr)


@pytest.mark.parametrize(
    "args, kwargs, pattern",
    [
        (([[0.0], [1.0]], [0, 1]), {}, "0 genuine"),
        (([[0.0], [1.0], [2.0]], [0, 0, 0]), {}, "0 impostor"),
        (([[0.0], [1.0]], [0, 0], [[2.0]], [0]), {}, "0 impostor"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1]), {"far": 0.0}, "far must be"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1]), {"far": 1.0}, "far must be"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1]), {"far": ()}, "far must be"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1]), {"far": "high"}, "far must be"),
        (([[0.0], [np.nan], [2.0]], [0, 0, 1]), {}, "NaN or infinite"),
        (([[0.0], [1.0], [2.0]], [0, 0]), {}, "labels must have shape"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1], [[1.0]]), {}, "given together"),
        (([[0.0], [1.0], [2.0]], [0, 0, 1]), {"distance": "cosin"}, "Unknown distance"),
    ],
)
def test_bad_input(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        verification_metrics(*args, **kwargs)


@pytest.mark.filterwarnings("ignore:Early stopping conditioned:UserWarning")
def test_callback_feeds_history_and_early_stopping():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = np.arange(48) % 4
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile("adam", TripletLoss())
    callback = VerificationMetricsCallback(x, y, far=(0.1,), every=2, prefix="v_")
    stop = keras.callbacks.EarlyStopping("v_roc_auc", mode="max", patience=10)
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, stop])
    assert callback.epochs == [1, 2]  # every second epoch, and the last
    assert len(history.history["v_eer"]) == 2
    assert stop.best == max(callback.history["roc_auc"])
    embeddings = model.predict(x, verbose=0)
    assert (
        callback.history["tar@far=0.1"][-1]
        == verification_metrics(embeddings, y, far=0.1)["tar@far=0.1"]
    )


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"far": 2.0}, "far must be"),
        ({"ref_x": np.zeros((3, 2))}, "given together"),
        ({"log_metrics": ["map"]}, "log_metrics must name"),
        ({"every": 0}, "every"),
    ],
)
def test_callback_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        VerificationMetricsCallback(np.zeros((4, 2), "float32"), [0, 0, 1, 1], **kwargs)
