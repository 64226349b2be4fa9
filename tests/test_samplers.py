"""ClassBalancedBatches: P x K structure, the rule for small classes, seeding, model.fit."""

import collections

import keras
import numpy as np
import pytest

import reference as ref
from triplet_tools import TripletLoss
from triplet_tools.samplers import ClassBalancedBatches


def make_data(sizes):
    """Class c has sizes[c] samples; x holds each sample's own index so batches can be traced."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.arange(len(labels), dtype="float32")[:, None], labels


def test_every_batch_has_p_classes_with_k_distinct_samples():
    x, labels = make_data([10, 7, 12, 9, 8, 11])
    batches = ClassBalancedBatches(x, labels, classes_per_batch=4, samples_per_class=3, seed=1)
    assert len(batches) == 57 // 12
    for index in range(len(batches)):
        xb, yb = batches[index]
        assert xb.shape == (12, 1) and yb.shape == (12,)
        rows = xb[:, 0].astype(int)
        assert np.array_equal(labels[rows], yb)  # x and y stay paired
        assert len(set(rows)) == 12  # no repeats: every class has >= K
        assert sorted(collections.Counter(yb).values()) == [3, 3, 3, 3]


def test_small_classes_fill_with_repeats_and_singletons_are_never_drawn():
    """Class sizes 1, 2, 3, 8 with K = 5: class 0 (one sample) is never drawn; class 1
    gives both samples and repeats them (2, 2, 1 times: floor/ceil of 5/2), class 2 gives all
    three (2, 2, 1 times), class 3 five distinct samples."""
    x, labels = make_data([1, 2, 3, 8])
    batches = ClassBalancedBatches(
        x, labels, classes_per_batch=3, samples_per_class=5, batches_per_epoch=20, seed=0
    )
    for index in range(len(batches)):
        xb, yb = batches[index]
        assert 0 not in yb and sorted(set(yb)) == [1, 2, 3]
        for label in (1, 2, 3):
            rows = xb[yb == label, 0].astype(int)
            counts = collections.Counter(rows)
            size = [1, 2, 3, 8][label]
            assert len(rows) == 5 and all(labels[r] == label for r in rows)
            assert len(counts) == min(size, 5)
            assert set(counts.values()) <= {5 // size, -(-5 // size)}


def test_every_anchor_is_valid_unlike_random_batches():
    """The docstring's claim: P x K batches make every anchor valid (reference miner), while
    a random batch of the same size from 40 classes leaves most anchors without a positive."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 5)
    x = rng.normal(size=(200, 3))
    batches = ClassBalancedBatches(x, labels, classes_per_batch=4, samples_per_class=4, seed=0)
    xb, yb = batches[0]
    assert all(valid for _, valid, _ in ref.anchor_options(yb, xb))
    random_rows = rng.permutation(200)[:16]
    valid = [v for _, v, _ in ref.anchor_options(labels[random_rows], x[random_rows])]
    assert np.mean(valid) < 0.5


def test_seeded_reproducible_and_new_batches_every_epoch():
    x, labels = make_data([6] * 8)

    def epochs(seed, count=3):
        batches = ClassBalancedBatches(x, labels, 3, 2, seed=seed)
        drawn = []
        for _ in range(count):
            drawn.append([batches[i][0][:, 0].tolist() for i in range(len(batches))])
            batches.on_epoch_end()
        return drawn

    first = epochs(seed=5)
    assert first == epochs(seed=5)
    assert first != epochs(seed=6)
    assert first[0] != first[1] != first[2]
    # A lookup, not a stream: asking again or out of order gives the same batch.
    batches = ClassBalancedBatches(x, labels, 3, 2, seed=5)
    assert batches[3][0][:, 0].tolist() == first[0][3] == batches[3][0][:, 0].tolist()


class TracedBatches(ClassBalancedBatches):
    """Records, per table (``epoch``), which batch indices training requested."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested = collections.defaultdict(set)

    def __getitem__(self, index):
        self.requested[self.epoch].add(index)
        return super().__getitem__(index)


def _fit(seed, epochs=3):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 8)
    x = (rng.normal(size=(48, 5)) + labels[:, None]).astype("float32")
    batches = TracedBatches(x, labels, classes_per_batch=3, samples_per_class=4, seed=seed)
    # The same initial weights every time (seeded, without set_random_seed's TF import).
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(0)),
        ]
    )
    model.compile("adam", TripletLoss(margin=0.5))
    history = model.fit(batches, epochs=epochs, shuffle=False, verbose=0)
    return batches, model, history


def test_fit_trains_on_a_new_complete_table_every_epoch_and_repeats_with_the_seed():
    batches, model, history = _fit(seed=3)
    assert len(history.history["loss"]) == 3 and np.isfinite(history.history["loss"]).all()
    complete = [
        e for e, indices in batches.requested.items() if indices == set(range(len(batches)))
    ]
    assert len(complete) >= 3  # three epochs, three different tables, each used whole
    # Same seed, same training (another seed gives other batches: see the test above).
    same_seed = _fit(seed=3)[1]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), same_seed.get_weights()))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (
            {"classes_per_batch": 1},
            "classes_per_batch must be an int >= 2; received classes_per_batch=1",
        ),
        (
            {"samples_per_class": 1.5},
            "samples_per_class must be an int >= 2; received samples_per_class=1.5",
        ),
        (
            {"classes_per_batch": 4},
            r"needs that many classes with at least 2 samples; "
            r"received 3 such classes \(class sizes: \{0: 1, 1: 2, 2: 3, 3: 4\}\)",
        ),
        ({"y": np.zeros(3)}, r"y must have shape \(10,\) to match x; received shape \(3,\)"),
        (
            {"batches_per_epoch": 0},
            r"batches_per_epoch must be a positive int or None; received batches_per_epoch=0\.",
        ),
        (
            {"batches_per_epoch": True},
            r"batches_per_epoch must be a positive int or None; received batches_per_epoch=True\.",
        ),
        ({"seed": "a"}, "seed must be an int"),
        ({"seed": -1}, r"^seed must be an int >= 0; received seed=-1\.$"),
        (
            {"y": np.array(["a", "b", "b", "c", "c", "c", "d", "d", "d", "d"])},
            (
                r"^y: class ids must be integers; map string labels to ids first, e\.g\. with "
                r"numpy\.unique\(\.\.\., return_inverse=True\); received dtype <U1\.$"
            ),
        ),
        (
            {"y": np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3], object)},
            "class ids must be integers; .*received dtype object",
        ),
        (
            {"y": np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]) + 0.2},
            r"y must hold whole-number class ids; received 10 non-integral or non-finite values, "
            r"e\.g\. 0\.2 at index 0\.",
        ),
        (
            {"y": np.array([0, 1, 1, 2, 2, 2, 3, 3, np.nan, np.nan])},
            r"received 2 non-integral or non-finite values, e\.g\. nan at index 8",
        ),
        (
            {"x": {"a": np.zeros((10, 2))}, "y": np.zeros(4)},
            r"y must have shape \(10,\) to match x; received shape \(4,\)",
        ),
        (
            {"x": {"a": np.zeros((10, 2)), "b": np.zeros((9, 1))}},
            r"x must be a dict of inputs with the same number of rows; "
            r"received \{'a': 10, 'b': 9\}",
        ),
        ({"x": 3}, r"x must be an array of N inputs \(or a dict of them\); received int\."),
    ],
)
def test_bad_arguments(kwargs, pattern):
    x, labels = make_data([1, 2, 3, 4])
    arguments = {"x": x, "y": labels, "classes_per_batch": 2, "samples_per_class": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        ClassBalancedBatches(**arguments)


def test_float_labels_holding_whole_numbers_are_classes():
    """Labels 0.0 / 1.0 / 2.0 (floats) are classes 0, 1, 2: batches pair x and y as for ints."""
    x, labels = make_data([4, 4, 4])
    batches = ClassBalancedBatches(x, labels.astype("float64"), 2, 2, seed=0)
    for index in range(len(batches)):
        xb, yb = batches[index]
        assert np.array_equal(labels[xb[:, 0].astype(int)], yb)
        assert sorted(collections.Counter(yb.tolist()).values()) == [2, 2]


def test_dict_inputs_are_indexed_together():
    """A two-input model's x: every input is indexed with the same rows, y with them."""
    x, labels = make_data([5, 6, 7])
    inputs = {"index": x, "twice": 2 * x[:, 0]}
    batches = ClassBalancedBatches(inputs, labels, 3, 2, seed=1)
    assert len(batches) == 18 // 6
    for index in range(len(batches)):
        xb, yb = batches[index]
        assert set(xb) == {"index", "twice"} and xb["index"].shape == (6, 1)
        rows = xb["index"][:, 0].astype(int)
        assert np.array_equal(xb["twice"], 2.0 * rows) and np.array_equal(labels[rows], yb)
        assert sorted(collections.Counter(yb.tolist()).values()) == [2, 2, 2]


def test_dict_inputs_train_a_two_input_model():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    inputs = {
        "a": rng.normal(size=(24, 3)).astype("float32"),
        "b": rng.normal(size=(24, 2)).astype("float32"),
    }
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(0))(
        keras.layers.Concatenate()([a, b])
    )
    model = keras.Model({"a": a, "b": b}, out)
    model.compile("sgd", TripletLoss())
    history = model.fit(
        ClassBalancedBatches(inputs, labels, 2, 3, seed=0), epochs=1, shuffle=False, verbose=0
    )
    assert np.isfinite(history.history["loss"]).all()
