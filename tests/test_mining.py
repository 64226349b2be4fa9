"""Mining: chosen indices, validity, blocks, explicit references, compiled execution."""

import numpy as np
import pytest

import reference as ref
from backend import BACKEND, compiled, to_numpy
from triplet_tools.mining import auto_block_rows, mine_triplets

# Under PyTorch, each test runs with both eager miners (see conftest.py).
pytestmark = pytest.mark.usefixtures("each_torch_miner")


def _chosen_distances(name, x, refs, mined):
    p, n, valid = (to_numpy(t) for t in mined)
    d_ap = np.array([ref.distance(name, x[i], refs[p[i]]) for i in range(len(x))])
    d_an = np.array([ref.distance(name, x[i], refs[n[i]]) for i in range(len(x))])
    return d_ap, d_an, valid


def _brute_force(name, x, labels, refs, ref_labels, positions, positive, negative, semi_margin):
    """Best positive and negative distance per anchor, by a loop (None for invalid)."""
    out = []
    for i in range(len(x)):
        d = [ref.distance(name, x[i], r) for r in refs]
        pos = [d[j] for j in range(len(refs)) if ref_labels[j] == labels[i] and j != positions[i]]
        neg = [d[j] for j in range(len(refs)) if ref_labels[j] != labels[i]]
        if not pos or not neg:
            out.append(None)
            continue
        d_ap = max(pos) if positive == "hard" else min(pos)
        if negative == "hard":
            d_an = min(neg)
        elif negative == "easy":
            d_an = max(neg)
        else:
            semi = [v for v in neg if v > d_ap + semi_margin]
            d_an = min(semi) if semi else max(neg)
        out.append((d_ap, d_an))
    return out


@pytest.mark.parametrize("positive", ["hard", "easy"])
@pytest.mark.parametrize("negative", ["hard", "semi-hard", "easy"])
@pytest.mark.parametrize("block_size", [None, 4, 7])
def test_indices_match_brute_force(positive, negative, block_size):
    rng = np.random.default_rng(11)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 5, 5])
    x = rng.normal(size=(len(labels), 4)).astype("float32")
    mined = mine_triplets(
        x,
        labels,
        distance="euclidean",
        positive_strategy=positive,
        negative_strategy=negative,
        semi_margin=0.1,
        block_size=block_size,
    )
    d_ap, d_an, valid = _chosen_distances("euclidean", x, x, mined)
    want = _brute_force("euclidean", x, labels, x, labels, range(len(x)), positive, negative, 0.1)
    assert valid.tolist() == [w is not None for w in want]
    for i, w in enumerate(want):
        if w is not None:
            np.testing.assert_allclose((d_ap[i], d_an[i]), w, rtol=1e-5)


def test_explicit_references_and_anchor_positions():
    """Anchors are rows 3..5 of the reference set (as on the second of two replicas):
    an anchor is never its own positive, but its duplicate elsewhere is."""
    rng = np.random.default_rng(12)
    refs = rng.normal(size=(8, 3)).astype("float32")
    ref_labels = np.array([0, 1, 2, 0, 1, 2, 0, 9])
    anchors, labels, positions = refs[3:6], ref_labels[3:6], np.array([3, 4, 5])
    mined = mine_triplets(
        anchors, labels, refs, ref_labels, positions, distance="cosine", negative_strategy="hard"
    )
    p = to_numpy(mined.positive)
    assert not np.any(p == positions)
    want = _brute_force("cosine", anchors, labels, refs, ref_labels, positions, "hard", "hard", 0)
    d_ap, d_an, valid = _chosen_distances("cosine", anchors, refs, mined)
    assert valid.all()
    np.testing.assert_allclose(np.stack([d_ap, d_an], 1), np.array(want), rtol=1e-5, atol=1e-6)
    # Without positions, the anchor's own row counts as a positive at distance 0.
    mined = mine_triplets(
        anchors, labels, refs, ref_labels, distance="cosine", positive_strategy="easy"
    )
    np.testing.assert_array_equal(to_numpy(mined.positive), positions)


def test_compiled_mining_equals_eager():
    rng = np.random.default_rng(13)
    labels = np.repeat(np.arange(6), 4)
    x = rng.normal(size=(24, 8)).astype("float32")

    def mine(t):
        return tuple(mine_triplets(t, labels, distance="euclidean_norm", block_size=5))

    eager = [to_numpy(t) for t in mine(x)]
    jitted = [to_numpy(t) for t in compiled(mine)(x)]
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's graph mode without XLA")
@pytest.mark.parametrize("negative", ["hard", "semi-hard"])
@pytest.mark.parametrize("reference_mask", [False, True])
def test_plain_tensorflow_graph_mines_with_xla(negative, reference_mask):
    """In ``tf.function`` without ``jit_compile`` (tf_keras' ``model.fit``), the kernel runs as
    an XLA-compiled inner function, with the brute force's choices, also for an unknown batch
    size; eager TensorFlow and an outer XLA function call it directly."""
    import tensorflow as tf

    rng = np.random.default_rng(14)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 5, 5])
    x = rng.normal(size=(len(labels), 4)).astype("float32")
    mask = np.ones(len(labels), bool)
    mask[2] = not reference_mask
    kwargs = {"distance": "euclidean", "negative_strategy": negative, "block_size": 4}

    def mine(t, y):
        options = {"reference_mask": mask} if reference_mask else {}
        return tuple(mine_triplets(t, y, t, y, tf.range(tf.shape(t)[0]), **kwargs, **options))

    spec = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int64)]
    graph = tf.function(mine, input_signature=spec)
    calls = graph.get_concrete_function().graph.get_operations()
    assert any(
        op.type.endswith("PartitionedCall")
        and "_XlaMustCompile" in op.node_def.attr
        and op.get_attr("_XlaMustCompile")
        for op in calls
    ), sorted({op.type for op in calls})
    p, n, valid = (to_numpy(t) for t in graph(x, labels))
    refs, ref_labels = (x, labels) if not reference_mask else (x[mask], labels[mask])
    positions = np.arange(len(x)) if not reference_mask else np.cumsum(mask) - 1
    positions = np.where(mask, positions, -1)
    want = _brute_force("euclidean", x, labels, refs, ref_labels, positions, "hard", negative, 0)
    assert valid.tolist() == [w is not None for w in want]
    for i, w in enumerate(want):
        if w is not None:
            got = ref.distance("euclidean", x[i], x[p[i]]), ref.distance("euclidean", x[i], x[n[i]])
            np.testing.assert_allclose(got, w, rtol=1e-5)
    for other in (mine, tf.function(mine, jit_compile=True)):
        for a, b in zip(other(x, labels), (p, n, valid)):
            np.testing.assert_array_equal(to_numpy(a), b)


def test_auto_block_rows():
    from triplet_tools.distances import get

    target = 2**22 if BACKEND == "torch" else 2**20
    assert auto_block_rows(1024, 1024, 128, get("cosine")) == 1024
    for size in (8192, 65536):
        rows = auto_block_rows(size, size, 128, get("cosine"))
        assert rows * size <= target < 2 * rows * size
    assert auto_block_rows(4096, 4096, 128, get("manhattan")) * 4096 * 128 <= target
    assert auto_block_rows(3, 10**7, 128, get("manhattan")) == 1
    assert auto_block_rows(None, 10, 3, get("cosine")) is None


def test_invalid_strategy_names():
    x = np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="positive_mining_strategy.*'medium'.*'hard', 'easy'"):
        mine_triplets(x, [0, 1], positive_strategy="medium")
    with pytest.raises(ValueError, match="negative_mining_strategy.*'semihard'.*'semi-hard'"):
        mine_triplets(x, [0, 1], negative_strategy="semihard")


@pytest.mark.parametrize(
    "positive,negative", [("hard", "semi-hard"), ("easy", "hard"), ("hard", "easy")]
)
def test_wide_batch_matches_dense_numpy(positive, negative):
    """1,100 anchors x 1,100 references: rows wider than the small-batch code paths (PyTorch
    searches rows of 1,024 or more in two levels; 1,100 leaves a ragged tail). The reference
    is the whole distance matrix in float64 NumPy, with the SPEC's rules applied row-wise."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 140, size=1100)
    labels[:3] = [1000, 1001, 1002]  # singletons: no positive, invalid
    x = rng.normal(size=(1100, 8)).astype("float32")
    mined = mine_triplets(
        x,
        labels,
        distance="euclidean",
        positive_strategy=positive,
        negative_strategy=negative,
        semi_margin=0.05,
    )
    p, n, valid = (to_numpy(t) for t in mined)

    xd = x.astype("float64")
    d = np.sqrt(((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1))
    same = labels[:, None] == labels[None, :]
    is_positive = same & ~np.eye(len(x), dtype=bool)
    has_positive = is_positive.any(1)
    np.testing.assert_array_equal(valid, has_positive)
    rows = np.flatnonzero(has_positive)
    if positive == "hard":
        d_ap = np.where(is_positive, d, -np.inf).max(1)
    else:
        d_ap = np.where(is_positive, d, np.inf).min(1)
    np.testing.assert_allclose(d[rows, p[rows]], d_ap[rows], rtol=1e-5)
    assert is_positive[rows, p[rows]].all()
    farthest = np.where(same, -np.inf, d).max(1)
    if negative == "hard":
        d_an = np.where(same, np.inf, d).min(1)
    elif negative == "easy":
        d_an = farthest
    else:
        beyond = ~same & (d > d_ap[:, None] + 0.05)
        nearest_beyond = np.where(beyond, d, np.inf).min(1)
        d_an = np.where(beyond.any(1), nearest_beyond, farthest)
    np.testing.assert_allclose(d[rows, n[rows]], d_an[rows], rtol=1e-5)
    assert not same[rows, n[rows]].any()


@pytest.mark.skipif(BACKEND != "torch", reason="the eager PyTorch miner's row search")
def test_torch_two_level_row_search_keeps_the_first_of_ties():
    """Integer-valued rows (many ties), all-inf and all-(-inf) rows, extremes in the ragged
    tail: the two-level search returns torch's own argmin/argmax, i.e. the first index."""
    import torch

    from triplet_tools.mining.torch_kernel import arg_extreme

    generator = torch.Generator().manual_seed(0)
    for width in (1000, 1024, 1100, 5000, 8192, 8200):
        values = torch.randint(0, 7, (12, width), generator=generator).float()
        values[3], values[4] = float("inf"), -float("inf")
        values[5, width - 1] = -100.0
        values[6, width - 1] = 100.0
        for largest in (False, True):
            value, index = arg_extreme(values, largest)
            want = values.argmax(1) if largest else values.argmin(1)
            assert torch.equal(index, want), (width, largest)
            assert torch.equal(value, values.gather(1, want[:, None])[:, 0])
