"""EmbeddingIndex.calibrate / match (SPEC "Calibration and match"): TF Similarity 0.17.1's
definitions worked by hand on tiny cases, and a brute force over every candidate threshold
(O(Q x T), written from SPEC) on random data."""

import numpy as np
import pytest

from backend import tensor
from triplet_tools import Calibration, EmbeddingIndex


def line_index(positions, labels):
    """A 1-D euclidean index: distances are plain |q - x|."""
    index = EmbeddingIndex("euclidean")
    index.add(np.array(positions, "float32")[:, None], labels=labels)
    return index


def column(values):
    return np.array(values, "float32")[:, None]


# Entries at 0 (label 0) and 10 (label 1). Queries (position, true label) and what the
# nearest entry predicts:
#   0.5 (0) -> 0 at 0.5 correct      1 (1) -> 0 at 1 wrong      9 (1) -> 1 at 1 correct
#   12  (1) -> 1 at 2   correct      3 (5) -> 0 at 3 wrong (class 5 is not indexed)
# Candidates 0.5, 1, 2, 3. Accepted = d <= t:
#   t    TP FP FN TN  precision recall f1    accuracy
#   0.5  1  0  2  2   1         1/3    1/2   3/5
#   1    2  1  1  1   2/3       2/3    2/3   3/5
#   2    3  1  0  1   3/4       1      6/7   4/5
#   3    3  2  0  0   3/5       1      3/4   3/5
HAND = {
    "threshold": [0.5, 1, 2, 3],
    "precision": [1, 2 / 3, 3 / 4, 3 / 5],
    "recall": [1 / 3, 2 / 3, 1, 1],
    "f1": [1 / 2, 2 / 3, 6 / 7, 3 / 4],
    "accuracy": [3 / 5, 3 / 5, 4 / 5, 3 / 5],
}
QUERIES, TRUTH = column([0.5, 1, 9, 12, 3]), [0, 1, 1, 1, 5]


def test_hand_worked_curve():
    cal = line_index([0, 10], [0, 1]).calibrate(QUERIES, TRUTH)
    assert isinstance(cal, Calibration)
    assert sorted(cal.curve) == sorted(HAND)
    for key, values in HAND.items():
        np.testing.assert_allclose(cal.curve[key], values, rtol=1e-12, err_msg=key)
    assert (cal.threshold, cal.metric, cal.k, cal.vote) == (2.0, "f1", 1, "nearest")
    assert cal.value == pytest.approx(6 / 7)


@pytest.mark.parametrize(
    "metric, target, threshold, value",
    [
        ("f1", None, 2, 6 / 7),
        ("accuracy", None, 2, 4 / 5),
        ("precision", None, 0.5, 1),
        ("recall", None, 3, 1),  # recall 1 at 2 and 3: the largest threshold
        ("precision", 0.7, 2, 3 / 4),  # the largest threshold with precision >= 0.7
        ("precision", 0.6, 3, 3 / 5),
        ("recall", 0.6, 1, 2 / 3),  # the smallest threshold with recall >= 0.6
        ("f1", 0.8, 2, 6 / 7),
        ("accuracy", 0.6, 0.5, 3 / 5),
    ],
)
def test_hand_worked_choice(metric, target, threshold, value):
    index = line_index([0, 10], [0, 1])
    cal = index.calibrate(QUERIES, TRUTH, metric=metric, target=target)
    assert (cal.threshold, cal.metric) == (threshold, metric)
    assert cal.value == pytest.approx(value)
    assert index.calibration is cal


def test_unreachable_target_names_the_best_value():
    with pytest.raises(ValueError, match=r"accuracy >= 0.9.* is 0\.8\.$"):
        line_index([0, 10], [0, 1]).calibrate(QUERIES, TRUTH, metric="accuracy", target=0.9)


def test_a_tie_in_the_metric_goes_to_the_largest_threshold():
    # Distances 0.1 correct, 0.2 wrong, 0.3 correct: accuracy 2/3, 1/3, 2/3 -> 0.3.
    index = line_index([0, 10], [0, 1])
    cal = index.calibrate(column([0.1, 9.8, 10.3]), [0, 0, 1], metric="accuracy")
    np.testing.assert_allclose(cal.curve["accuracy"], [2 / 3, 1 / 3, 2 / 3])
    assert cal.threshold == pytest.approx(0.3, abs=1e-6)


def test_zero_over_zero_is_zero():
    # Every query wrong: precision = recall = f1 = 0 (TP + FN = 0), accuracy = TN / Q.
    cal = line_index([0], [0]).calibrate(column([1, 2]), [3, 3])
    for key in ("precision", "recall", "f1"):
        assert cal.curve[key].tolist() == [0.0, 0.0]
    assert cal.curve["accuracy"].tolist() == [0.5, 0.0]
    assert cal.threshold == 2.0  # every value ties at 0: the largest threshold


def test_hand_worked_majority_vote():
    # Entries (position label id): 0 A 0, 1 B 1, 2 B 2, 3 C 3, 10 A 4, 11 C 5.
    # k=3 from -0.5: A 0.5, B 1.5, B 2.5 -> B, mean 1.5
    #     from 10.4: A 0.4, C 0.6, C 7.4 -> C, mean 2.8
    #     from 5:    C 2,   B 3,   B 4   -> B, mean 3
    # k=4 from 1.6:  B 0.4, B 0.6, C 1.4, A 1.6 -> B
    #     from 6.5:  C 3.5 (id 3), A 3.5 (id 4), B 4.5 (id 2), C 4.5 (id 5) -> C, C, A, B: C
    # k=2 from 5:    C 2, B 3 -> 1-1, C ranks first; from 6.5: C 3.5 (id 3), A 3.5 (id 4): C
    index = line_index([0, 1, 2, 3, 10, 11], ["A", "B", "B", "C", "A", "C"])
    queries = column([-0.5, 10.4, 5])

    def majority(points, threshold, k):
        return index.match(column(points), threshold, k=k, vote="majority", unknown="?").tolist()

    assert majority([-0.5, 10.4, 5], 100.0, 3) == ["B", "C", "B"]
    assert majority([1.6, 6.5], 100.0, 4) == ["B", "C"]
    assert majority([5, 6.5], 100.0, 2) == ["C", "C"]
    # The mean distance decides acceptance: 1.5 and 2.8 against a threshold between them.
    assert majority([-0.5, 10.4], 2.0, 3) == ["B", "?"]
    cal = index.calibrate(queries, ["B", "C", "C"], k=3, vote="majority")
    np.testing.assert_allclose(cal.curve["threshold"], [1.5, 2.8, 3.0], rtol=1e-6)
    np.testing.assert_allclose(cal.curve["precision"], [1, 1, 2 / 3])
    assert (cal.k, cal.vote, cal.value) == (3, "majority", 1.0)
    assert cal.threshold == pytest.approx(2.8, abs=1e-6)


def test_majority_tie_goes_to_the_label_ranked_first():
    # Query 0 with k=4: B (0.1), A (0.2), A (0.3), B (0.4): 2-2, B occurs first.
    index = line_index([0.1, -0.2, 0.3, -0.4], [2, 1, 1, 2])
    assert index.match(column([0]), 1.0, k=4, vote="majority").tolist() == [2]
    assert index.match(column([0]), 1.0, k=3, vote="majority").tolist() == [1]


def brute_calibration(distances, correct, metric, target):
    """Every candidate threshold's counts directly (O(Q x T)), and SPEC's choice rule."""
    thresholds = np.unique(distances)
    rows = []
    for t in thresholds:
        accepted = distances <= t
        tp = np.sum(accepted & correct)
        fp = np.sum(accepted & ~correct)
        fn = np.sum(~accepted & correct)
        tn = np.sum(~accepted & ~correct)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        rows.append({"precision": p, "recall": r, "f1": f, "accuracy": (tp + tn) / len(correct)})
    values = np.array([row[metric] for row in rows])
    if target is None:
        chosen = max(i for i in range(len(values)) if values[i] == values.max())
    elif metric == "precision":
        chosen = max(i for i in range(len(values)) if values[i] >= target)
    else:
        chosen = min(i for i in range(len(values)) if values[i] >= target)
    curve = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    return thresholds[chosen], curve, thresholds


@pytest.mark.parametrize("vote", ["nearest", "majority"])
@pytest.mark.parametrize(
    "metric, target",
    [("f1", None), ("precision", None), ("accuracy", None), ("precision", 0.5), ("recall", 0.7)],
)
def test_random_calibration_equals_brute_force(metric, target, vote, rng):
    centers = rng.normal(size=(8, 4)) * 1.5
    gallery_labels = rng.integers(0, 6, 200)
    gallery = (centers[gallery_labels] + rng.normal(size=(200, 4))).astype("float32")
    truth = rng.integers(0, 8, 300)  # classes 6 and 7 are unknown to the index
    queries = (centers[truth] + rng.normal(size=(300, 4))).astype("float32")
    index = EmbeddingIndex("cosine")
    index.add(gallery, gallery_labels)
    k = 5 if vote == "majority" else 1
    cal = index.calibrate(tensor(queries), truth, metric=metric, target=target, k=k, vote=vote)
    # The predicted label and distance per query, from an independent brute force.
    full = 1 - (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    ).T.astype(np.float64)
    order = np.argsort(full, axis=1, kind="stable")[:, :k]
    near_labels, near_d = gallery_labels[order], np.take_along_axis(full, order, 1)
    if vote == "nearest":
        predicted, distances = near_labels[:, 0], near_d[:, 0]
    else:
        predicted = np.array(
            [
                max(
                    row.tolist(),
                    key=lambda label, row=row: (list(row).count(label), -list(row).index(label)),
                )
                for row in near_labels
            ]
        )
        distances = near_d.mean(1)
    # Random distances lie far apart compared with float32's rounding: same order, same curve.
    threshold, curve, thresholds = brute_calibration(distances, predicted == truth, metric, target)
    assert cal.threshold == pytest.approx(threshold, abs=2e-5)
    assert len(cal.curve["threshold"]) == len(thresholds)
    for key, values in curve.items():
        np.testing.assert_allclose(cal.curve[key], values, atol=1e-12, err_msg=key)


def test_match_with_a_float_a_calibration_or_none():
    index = line_index([0, 10], [0, 1])
    with pytest.raises(ValueError, match="call calibrate first"):
        index.match(QUERIES)
    assert index.match(QUERIES, 1.0).tolist() == [0, 0, 1, -1, -1]
    assert index.match(QUERIES, 1.0, unknown=99).tolist() == [0, 0, 1, 99, 99]
    cal = index.calibrate(QUERIES, TRUTH)  # threshold 2
    assert index.match(QUERIES).tolist() == [0, 0, 1, 1, -1]
    assert index.match(QUERIES, cal).tolist() == [0, 0, 1, 1, -1]
    strict = index.calibrate(QUERIES, TRUTH, metric="precision")  # threshold 0.5
    assert index.match(QUERIES, cal).tolist() == [0, 0, 1, 1, -1]
    assert index.match(QUERIES).tolist() == [0, -1, -1, -1, -1]
    assert strict.threshold == 0.5


def test_string_labels_need_a_string_unknown():
    index = line_index([0, 10], ["cat", "dog"])
    with pytest.raises(ValueError, match="unknown must be a string"):
        index.match(QUERIES, 1.0)
    result = index.match(QUERIES, 1.0, unknown="unknown")
    assert result.tolist() == ["cat", "cat", "dog", "unknown", "unknown"]
    with pytest.raises(ValueError, match="unknown must be an integer"):
        line_index([0, 10], [0, 1]).match(QUERIES, 1.0, unknown="none")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"k": 0}, "k"),
        ({"metric": "auc"}, "metric"),
        ({"vote": "mode"}, "vote"),
        ({"target": 1.5}, "target"),
        ({"labels": [0, 1]}, r"shape \(5,\)"),
        ({"labels": ["a"] * 5}, "kind"),
    ],
)
def test_bad_calibrate_arguments(arguments, message):
    index = line_index([0, 10], [0, 1])
    labels = arguments.pop("labels", TRUTH)
    with pytest.raises(ValueError, match=message) as error:
        index.calibrate(QUERIES, labels, **arguments)
    assert "\n" not in str(error.value)
    assert index.calibration is None


def test_calibrate_and_match_need_labels():
    index = EmbeddingIndex("euclidean")
    index.add(column([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        index.calibrate(QUERIES, TRUTH)
    with pytest.raises(ValueError, match="labels"):
        index.match(QUERIES, 1.0)
    with pytest.raises(ValueError, match="threshold must be"):
        line_index([0], [0]).match(QUERIES, "1.0")
