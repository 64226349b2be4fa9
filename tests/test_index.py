"""EmbeddingIndex (SPEC "From embedding to decision", `EmbeddingIndex`) against a NumPy brute
force written from SPEC's distance table: the k smallest distances ascending, ties broken by
the smaller id, k clipped, in the library's units; every bad input a ValueError that leaves
the index as it was; save/load without pickle, across backends; faiss where installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from backend import BACKEND, tensor
from triplet_tools import EmbeddingIndex, Neighbors, _search, _topk
from triplet_tools.distances import DISTANCE_NAMES, Cosine, Distance

ROOT = Path(__file__).resolve().parent.parent
CANONICAL = {"l2": "euclidean", "sql2": "squared_euclidean", "l1": "manhattan"}

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu is not installed")


def brute_distances(name, queries, rows):
    """SPEC's distance table, in float64, every (query, row) pair."""
    name = CANONICAL.get(name, name)
    q, x = np.asarray(queries, np.float64), np.asarray(rows, np.float64)
    if name in ("cosine", "euclidean_norm"):
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    if name == "cosine":
        return 1 - q @ x.T
    difference = q[:, None, :] - x[None, :, :]
    if name == "manhattan":
        return np.abs(difference).sum(-1)
    squared = (difference**2).sum(-1)
    return squared if name == "squared_euclidean" else np.sqrt(squared)


def brute_search(distances, ids, k):
    """The k smallest of each row by (distance, id): ``(distances, ids)``."""
    k = min(k, len(ids))
    order = np.array([np.lexsort((ids, row))[:k] for row in distances])
    return np.take_along_axis(distances, order, 1), ids[order]


def assert_search(result, queries, rows, ids, name, k, labels=None):
    expected_d, expected_ids = brute_search(brute_distances(name, queries, rows), ids, k)
    assert isinstance(result, Neighbors)
    assert result.distances.dtype == np.float32 and result.ids.dtype == np.int64
    assert result.distances.shape == result.ids.shape == expected_d.shape
    np.testing.assert_allclose(result.distances, expected_d, rtol=1e-5, atol=2e-5)
    # The returned ids are k nearest ones (brute distance of each equals the expected one);
    # where the brute force has no near-tie, they are the very same ids.
    position = {int(i): p for p, i in enumerate(ids)}
    full = brute_distances(name, queries, rows)
    got = np.array([[full[q, position[int(i)]] for i in row] for q, row in enumerate(result.ids)])
    np.testing.assert_allclose(got, expected_d, rtol=1e-5, atol=2e-5)
    sorted_rows = np.sort(full, axis=1)
    gaps = np.diff(sorted_rows, axis=1)
    clear = np.ones_like(expected_d, bool)
    clear[:, :-1] &= gaps[:, : expected_d.shape[1] - 1] > 1e-4
    clear[:, 1:] &= gaps[:, : expected_d.shape[1] - 1] > 1e-4
    np.testing.assert_array_equal(result.ids[clear], expected_ids[clear])
    if labels is None:
        assert result.labels is None
    else:
        np.testing.assert_array_equal(result.labels, labels[np.searchsorted(ids, result.ids)])


@pytest.mark.parametrize("name", DISTANCE_NAMES)
def test_search_equals_brute_force_for_every_distance_name(name, rng):
    rows = rng.normal(size=(300, 6)).astype("float32")
    queries = rng.normal(size=(40, 6)).astype("float32")
    labels = rng.integers(0, 7, 300)
    index = EmbeddingIndex(distance=name)
    ids = index.add(rows, labels)
    np.testing.assert_array_equal(ids, np.arange(300))
    for k in (1, 10):
        assert_search(index.search(queries, k), queries, rows, ids, name, k, labels)


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "manhattan", "cosine"])
def test_ties_go_to_the_smaller_id_whatever_the_insertion_order(name, rng):
    # Small integer rows: many exactly equal distances (duplicates, parallel rows).
    rows = rng.integers(-1, 2, size=(60, 3)).astype("float32")
    queries = rng.integers(-1, 2, size=(25, 3)).astype("float32")
    if name == "cosine":  # ties: the same direction at several scales, normalised alike
        bases = rng.normal(size=(6, 3))
        scales = 2.0 ** rng.integers(0, 3, (60, 1))  # exact in float32 and float64
        rows = (bases[rng.integers(0, 6, 60)] * scales).astype("float32")
        queries = rng.normal(size=(25, 3)).astype("float32")
    ids = rng.permutation(1000)[:60]
    index = EmbeddingIndex(name)
    index.add(rows[:30], ids=ids[:30])
    index.add(rows[30:], ids=ids[30:])  # smaller ids arrive later
    result = index.search(queries, 15)
    # Rounded: mathematically equal distances are equal (float64 rounds scaled rows apart).
    exact = np.round(brute_distances(name, queries, rows), 9)
    expected_d, expected_ids = brute_search(exact, ids, 15)
    np.testing.assert_array_equal(result.ids, expected_ids)
    np.testing.assert_allclose(result.distances, expected_d, rtol=1e-6, atol=1e-6)


def test_hand_worked_ties_and_clipping():
    # Query 0 against rows at 1, -1, 1, 3 with ids 9, 4, 2, 0: distances 1, 1, 1, 3.
    index = EmbeddingIndex("euclidean")
    index.add(np.array([[1.0], [-1.0], [1.0], [3.0]]), ids=[9, 4, 2, 0])
    result = index.search(np.array([[0.0]]), k=10)
    assert result.ids.tolist() == [[2, 4, 9, 0]]
    assert result.distances.tolist() == [[1.0, 1.0, 1.0, 3.0]]


def test_a_distance_instance_and_a_user_defined_distance(rng):
    class Chebyshev(Distance):
        name = "chebyshev"

        def pairwise(self, x, y):
            return keras.ops.max(keras.ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)

        def paired(self, x, y):
            return keras.ops.max(keras.ops.abs(x - y), axis=-1)

    rows = rng.normal(size=(120, 4)).astype("float32")
    queries = rng.normal(size=(9, 4)).astype("float32")
    index = EmbeddingIndex(Chebyshev())
    ids = index.add(rows)
    expected_d = np.abs(queries[:, None] - rows[None]).max(-1)
    d, i = brute_search(expected_d, ids, 5)
    result = index.search(queries, 5)
    np.testing.assert_allclose(result.distances, d, rtol=1e-6)
    np.testing.assert_array_equal(result.ids, i)
    index = EmbeddingIndex(Cosine())
    ids = index.add(rows)
    assert_search(index.search(queries, 5), queries, rows, ids, "cosine", 5)


def test_backend_tensors_are_accepted(rng):
    rows = rng.normal(size=(50, 3)).astype("float32")
    queries = rng.normal(size=(4, 3)).astype("float32")
    index = EmbeddingIndex("cosine")
    ids = index.add(tensor(rows), labels=tensor(np.arange(50)))
    assert_search(index.search(tensor(queries), 3), queries, rows, ids, "cosine", 3, np.arange(50))


def test_search_runs_in_blocks_of_queries(rng, monkeypatch):
    rows = rng.normal(size=(200, 5)).astype("float32")
    queries = rng.normal(size=(33, 5)).astype("float32")
    shapes = []
    original = _search._block_scores
    monkeypatch.setattr(_search, "BLOCK_ELEMENTS", 7 * 200)  # 7 queries x 200 rows at once
    monkeypatch.setattr(
        _search,
        "_block_scores",
        lambda *a: shapes.append(len(a[1])) or original(*a),
    )
    index = EmbeddingIndex("euclidean")
    ids = index.add(rows)
    assert_search(index.search(queries, 4), queries, rows, ids, "euclidean", 4)
    assert max(shapes) == 7 and sum(shapes) == 33


def test_ids_default_continue_after_the_largest_and_remove(rng):
    index = EmbeddingIndex("euclidean")
    assert index.add(np.zeros((2, 2))).tolist() == [0, 1]
    assert index.add(np.ones((1, 2)), ids=[10]).tolist() == [10]
    assert index.add(np.ones((2, 2))).tolist() == [11, 12]
    index.remove([0, 11])
    assert len(index) == 3 and index.ids.tolist() == [1, 10, 12]
    rows = rng.normal(size=(40, 2)).astype("float32")
    index = EmbeddingIndex("euclidean")
    ids = index.add(rows)
    index.remove(ids[::3])
    keep = np.setdiff1d(ids, ids[::3])
    assert_search(index.search(rows[:5], 6), rows[:5], rows[keep], keep, "euclidean", 6)


def _state(index):
    return (
        index.ids.tolist(),
        index._rows.tolist(),
        None if index._labels is None else index._labels.tolist(),
    )


BAD_ADDS = {
    "width": (np.zeros((2, 4)), [0, 1], None, "width 3"),
    "nan row": (np.array([[0, 0, 0], [np.nan, 0, 0]]), [0, 1], None, "NaN"),
    "inf row": (np.array([[np.inf, 0, 0]]), [0], None, "NaN or infinity"),
    "duplicate ids": (np.zeros((2, 3)), [0, 1], [7, 7], "duplicates 7"),
    "present id": (np.zeros((2, 3)), [0, 1], [8, 1], "already in the index: 1"),
    "label count": (np.zeros((2, 3)), [0, 1, 2], None, r"shape \(2,\)"),
    "labels missing": (np.zeros((2, 3)), None, None, "labels are required"),
    "label kind": (np.zeros((1, 3)), ["a"], None, "index's kind"),
    "id count": (np.zeros((2, 3)), [0, 1], [20], r"shape \(2,\)"),
    "float ids": (np.zeros((1, 3)), [0], [1.5], "integers"),
    "1-D rows": (np.zeros(3), [0], None, "(N, D)"),
}


@pytest.mark.parametrize("case", BAD_ADDS, ids=list(BAD_ADDS))
def test_bad_adds_raise_and_leave_the_index_as_it_was(case):
    rows, labels, ids, message = BAD_ADDS[case]
    index = EmbeddingIndex("euclidean")
    index.add(np.arange(6.0).reshape(2, 3), labels=[3, 4])
    before = _state(index)
    with pytest.raises(ValueError, match=message) as error:
        index.add(rows, labels=labels, ids=ids)
    assert "\n" not in str(error.value)
    assert _state(index) == before
    assert index.search(np.zeros((1, 3)), 5).ids.tolist() == [[0, 1]]


def test_labels_on_an_index_without_labels_and_other_bad_calls():
    index = EmbeddingIndex("cosine")
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((1, 3)), 1)
    index.add(np.eye(3))
    before = _state(index)
    with pytest.raises(ValueError, match="created without labels"):
        index.add(np.eye(3), labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"not in the index: 5, 9"):
        index.remove([0, 5, 9])
    with pytest.raises(ValueError, match="width 3"):
        index.search(np.zeros((1, 2)), 1)
    with pytest.raises(ValueError, match="k"):
        index.search(np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 3), np.nan), 1)
    with pytest.raises(ValueError, match="engine"):
        EmbeddingIndex(engine="annoy")
    with pytest.raises(ValueError, match="Unknown distance"):
        EmbeddingIndex(distance="hamming")
    assert _state(index) == before
    assert index.search(np.eye(3), 1).labels is None


def test_string_labels_and_empty_queries():
    index = EmbeddingIndex("euclidean")
    index.add(np.array([[0.0], [2.0]]), labels=np.array(["cat", "dog"], object))
    result = index.search(np.array([[1.5]]), 2)
    assert result.labels.tolist() == [["dog", "cat"]]
    assert index.search(np.zeros((0, 1)), 2).ids.shape == (0, 2)


# --- save / load ------------------------------------------------------------------------


def test_save_load_round_trip_with_labels_and_calibration(tmp_path, rng):
    rows = rng.normal(size=(80, 5)).astype("float32")
    queries = rng.normal(size=(10, 5)).astype("float32")
    labels = np.array([f"c{v}" for v in rng.integers(0, 4, 80)])
    index = EmbeddingIndex("l2")
    index.add(rows, labels, ids=rng.permutation(500)[:80])
    index.remove(index.ids[:3])
    cal = index.calibrate(queries, labels[:10], metric="precision", k=3, vote="majority")
    path = tmp_path / "gallery.index"
    index.save(path)
    assert path.exists() and not (tmp_path / "gallery.index.npz").exists()
    with np.load(path, allow_pickle=False) as archive:  # nothing in it needs pickle
        assert json.loads(archive["settings"].tobytes())["distance"] == "euclidean"
    loaded = EmbeddingIndex.load(path)
    for a, b in zip(loaded.search(queries, 7), index.search(queries, 7)):
        np.testing.assert_array_equal(a, b)
    assert loaded.calibration.threshold == cal.threshold and loaded.calibration.k == 3
    for key, values in cal.curve.items():
        np.testing.assert_array_equal(loaded.calibration.curve[key], values)
    np.testing.assert_array_equal(
        loaded.match(queries, unknown="unknown"), index.match(queries, unknown="unknown")
    )
    empty = tmp_path / "empty.index"
    EmbeddingIndex("cosine").save(empty)
    assert len(EmbeddingIndex.load(empty)) == 0


def test_corrupt_and_foreign_files_raise_value_error(tmp_path):
    index = EmbeddingIndex("cosine")
    index.add(np.eye(4), labels=[0, 1, 2, 3])
    good = tmp_path / "good.index"
    index.save(good)
    data = good.read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise").write_bytes(os.urandom(300))
    np.savez(tmp_path / "foreign.npz", rows=np.eye(2))
    np.savez(tmp_path / "pickled.npz", settings=np.array([{"a": 1}], object))
    with np.load(good) as archive:
        arrays = dict(archive)
    settings = json.loads(arrays["settings"].tobytes())
    settings["dim"] = 5
    arrays["settings"] = np.frombuffer(json.dumps(settings).encode(), np.uint8)
    np.savez(tmp_path / "inconsistent.npz", **arrays)
    for name in ("truncated", "noise", "foreign.npz", "pickled.npz", "inconsistent.npz"):
        with pytest.raises(ValueError, match="not a readable EmbeddingIndex") as error:
            EmbeddingIndex.load(tmp_path / name)
        assert "\n" not in str(error.value)


SAVE_ELSEWHERE = """
import numpy as np
from triplet_tools import EmbeddingIndex
rng = np.random.default_rng(5)
rows = rng.normal(size=(300, 8)).astype("float32")
index = EmbeddingIndex("{name}")
index.add(rows, rng.integers(0, 5, 300))
index.calibrate(rng.normal(size=(50, 8)), rng.integers(0, 6, 50), k=3, vote="majority")
index.save("{path}")
d, i, l = index.search(rng.normal(size=(20, 8)).astype("float32"), 9)
np.savez("{path}.expected.npz", d=d, i=i, l=l, m=index.match(rows[:40] + 0.3))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cosine", "euclidean_norm", "sql2", "l1"])
def test_an_index_saved_on_another_backend_searches_identically(name, tmp_path):
    other = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[BACKEND]
    path = tmp_path / "other.index"
    environment = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=str(ROOT / "src"))
    code = SAVE_ELSEWHERE.format(name=name, path=path)
    subprocess.run([sys.executable, "-c", code], env=environment, check=True, timeout=300)
    expected = np.load(f"{path}.expected.npz")
    index = EmbeddingIndex.load(path)
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(300, 8)).astype("float32")
    rng.integers(0, 5, 300), rng.normal(size=(50, 8)), rng.integers(0, 6, 50)
    d, i, labels = index.search(rng.normal(size=(20, 8)).astype("float32"), 9)
    np.testing.assert_array_equal(d, expected["d"])
    np.testing.assert_array_equal(i, expected["i"])
    np.testing.assert_array_equal(labels, expected["l"])
    np.testing.assert_array_equal(index.match(rows[:40] + 0.3), expected["m"])


# --- faiss ------------------------------------------------------------------------------


def clustered(rng, n, dim, centers=20):
    middles = rng.normal(size=(centers, dim)) * 3
    return (middles[rng.integers(0, centers, n)] + rng.normal(size=(n, dim))).astype("float32")


@needs_faiss
@pytest.mark.parametrize("name", ["cosine", "euclidean_norm", "euclidean", "sql2"])
def test_faiss_distances_are_exact_and_recall_is_high(name, rng):
    rows, queries = clustered(rng, 2000, 8), clustered(rng, 50, 8)
    index = EmbeddingIndex(name, engine="faiss", hnsw_m=16, ef_construction=80, ef_search=200)
    index.add(rows[:1500])
    index.add(rows[1500:])
    result = index.search(queries, 10)
    full = brute_distances(name, queries, rows)
    np.testing.assert_allclose(
        result.distances, np.take_along_axis(full, result.ids, 1), rtol=1e-5, atol=2e-5
    )
    assert np.all(np.diff(result.distances, axis=1) >= 0)
    _, exact = brute_search(full, np.arange(2000), 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(result.ids, exact)])
    assert recall >= 0.95


@needs_faiss
def test_faiss_remove_save_load(tmp_path, rng):
    rows, queries = clustered(rng, 500, 6), clustered(rng, 20, 6)
    index = EmbeddingIndex("cosine", engine="faiss", hnsw_m=8, ef_construction=40, ef_search=64)
    ids = index.add(rows, labels=np.arange(500) % 7)
    index.remove(ids[:100])
    result = index.search(queries, 5)
    assert not np.isin(result.ids, ids[:100]).any()
    path = tmp_path / "faiss.index"
    index.save(path)
    with np.load(path, allow_pickle=False) as archive:
        settings = json.loads(archive["settings"].tobytes())
        assert "faiss" in archive.files
    assert (settings["hnsw_m"], settings["ef_construction"], settings["ef_search"]) == (8, 40, 64)
    loaded = EmbeddingIndex.load(path)
    assert (loaded.engine, loaded.hnsw_m, loaded.ef_search) == ("faiss", 8, 64)
    for a, b in zip(loaded.search(queries, 5), result):
        np.testing.assert_array_equal(a, b)


@needs_faiss
@pytest.mark.parametrize("name", ["manhattan", "l1"])
def test_faiss_refuses_distances_it_cannot_serve(name):
    with pytest.raises(ValueError, match="cannot serve"):
        EmbeddingIndex(name, engine="faiss")


def test_faiss_missing_is_an_import_error_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r'pip install "triplet-tools\[faiss\]"'):
        EmbeddingIndex("cosine", engine="faiss")


@pytest.mark.parametrize("depth", [1, 3, 10])
@pytest.mark.parametrize("kind", ["random", "ties", "infinite"])
def test_nearest_bound_and_partition_agree_with_a_stable_sort(depth, kind, rng):
    # The shared top-k (retrieval_metrics and the index): both paths, against a stable sort.
    block = rng.random((6, 700)).astype("float32")
    if kind == "ties":
        block = np.round(block * 4) / 4  # five values: huge ties at every boundary
    if kind == "infinite":
        block[:, ::3] = np.inf
    expected = np.argsort(block, axis=1, kind="stable")[:, :depth]
    np.testing.assert_array_equal(_topk.nearest(block, depth), expected)
    np.testing.assert_array_equal(_topk.nearest_by_partition(block, depth), expected)
