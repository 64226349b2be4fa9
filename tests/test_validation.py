"""Bad configuration and bad input raise ValueError messages naming what was received."""

import re

import numpy as np
import pytest

from triplet_tools import PNLoss, PrimingLoss, TripletLoss
from triplet_tools._validation import CLASS_IDS_MESSAGE, as_label_vector, check_class_ids


def test_negative_margin():
    with pytest.raises(ValueError, match=r"margin must be >= 0; received margin=-0.1"):
        TripletLoss(margin=-0.1)


@pytest.mark.parametrize("cls", [TripletLoss, PNLoss])
def test_soft_margin_with_margin(cls):
    with pytest.raises(ValueError) as info:
        cls(soft_margin=True, margin=0.5)
    assert str(info.value) == "Margin value is not used when soft_margin is set to True."
    cls(soft_margin=True)  # the default margin is fine


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"distance": "hamming"}, "Unknown distance: 'hamming'. Valid names are euclidean_norm"),
        (
            {"positive_mining_strategy": "semi-hard"},
            "positive_mining_strategy: received 'semi-hard'",
        ),
        ({"negative_mining_strategy": "hardest"}, "negative_mining_strategy: received 'hardest'"),
        ({"reduction": "average"}, "reduction: received 'average'; allowed values"),
        ({"margin": "1"}, "margin must be a number; received '1'"),
        ({"semi_margin": float("nan")}, "semi_margin must be finite"),
        ({"soft_margin": "yes"}, "soft_margin must be True or False"),
        ({"block_size": 0}, "block_size must be a positive int"),
    ],
)
def test_bad_configuration(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TripletLoss(**kwargs)


def test_priming_bad_distance():
    with pytest.raises(ValueError, match="Unknown distance"):
        PrimingLoss(distance="dot")


@pytest.mark.parametrize(
    "labels,embeddings,pattern",
    [
        (
            np.zeros(4),
            np.zeros((4, 2, 1)),
            r"y_pred must be embeddings of shape \(batch_size, dim\); "
            r"received y_true.shape=\(4,\) and y_pred.shape=\(4, 2, 1\)",
        ),
        (np.zeros(4), np.zeros(4), r"received y_true.shape=\(4,\) and y_pred.shape=\(4,\)"),
        (
            np.zeros(3),
            np.zeros((4, 2)),
            r"same batch size; received y_true.shape=\(3,\) and "
            r"y_pred.shape=\(4, 2\)",
        ),
        (
            np.zeros((4, 2)),
            np.zeros((4, 2)),
            r"y_true must be class ids of shape \(batch_size,\) "
            r"or \(batch_size, 1\); received y_true.shape=\(4, 2\)",
        ),
    ],
)
def test_bad_input_shapes(labels, embeddings, pattern):
    with pytest.raises(ValueError, match=pattern):
        TripletLoss()(labels, embeddings.astype("float32"))


def test_bad_sample_weight_shape():
    with pytest.raises(ValueError, match=r"sample_weight must have shape"):
        TripletLoss()([0, 0, 1, 1], np.ones((4, 2), "float32"), sample_weight=np.ones((4, 3)))


# --- the shared label helpers of triplet_tools._validation --------------------------------


@pytest.mark.parametrize("labels", [[4, 2, 4], [[4], [2], [4]], np.array([4, 2, 4], "int64")])
def test_as_label_vector_keeps_n_and_squeezes_n_by_1(labels):
    got = as_label_vector(labels, 3)
    assert got.shape == (3,) and got.tolist() == [4, 2, 4]


@pytest.mark.parametrize(
    "labels,size,pattern",
    [
        (np.zeros((3, 2)), 3, r"^y must have shape \(3,\) to match x; received shape \(3, 2\)\.$"),
        (np.zeros(2), 3, r"^y must have shape \(3,\) to match x; received shape \(2,\)\.$"),
        (
            np.zeros((1, 3)),
            None,
            r"^y must have shape \(N,\) or \(N, 1\); received shape \(1, 3\)\.$",
        ),
        (5, None, r"received shape \(\)\.$"),
    ],
)
def test_as_label_vector_names_both_shapes(labels, size, pattern):
    with pytest.raises(ValueError, match=pattern):
        as_label_vector(labels, size, "y", "x")


@pytest.mark.parametrize(
    "labels", [np.array([0, 3, 3], "uint8"), np.array([1.0, -2.0, 1.0]), np.array([True, False])]
)
def test_check_class_ids_accepts_integers_and_whole_floats(labels):
    assert check_class_ids(labels) is labels


@pytest.mark.parametrize(
    "labels,pattern",
    [
        (
            np.array(["cat", "dog"]),
            "^y: " + re.escape(CLASS_IDS_MESSAGE) + r"; received dtype <U3\.$",
        ),
        (np.array([1, "a"], object), r"class ids must be integers; .*received dtype object\."),
        (
            np.array([0.0, 0.2, 0.2, 0.7]),
            r"received 3 non-integral or non-finite values, e\.g\. 0\.2 at index 1\.",
        ),
        (
            np.array([1.0, np.nan]),
            r"received 1 non-integral or non-finite values, e\.g\. nan at index 1\.",
        ),
        (np.array([-np.inf, 1.0]), r"e\.g\. -inf at index 0\."),
    ],
)
def test_check_class_ids_refuses_strings_fractions_and_nan(labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_class_ids(labels)
