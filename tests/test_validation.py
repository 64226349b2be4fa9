"""Bad configuration and bad input raise ValueError messages naming what was received."""

import numpy as np
import pytest

from triplet_tools import PNLoss, PrimingLoss, TripletLoss


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
        ({"positive_mining_strategy": "semi-hard"}, "positive_mining_strategy: received 'semi-hard'"),
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
        (np.zeros(4), np.zeros((4, 2, 1)), r"y_pred must be embeddings of shape \(batch_size, dim\); "
         r"received y_true.shape=\(4,\) and y_pred.shape=\(4, 2, 1\)"),
        (np.zeros(4), np.zeros(4), r"received y_true.shape=\(4,\) and y_pred.shape=\(4,\)"),
        (np.zeros(3), np.zeros((4, 2)), r"same batch size; received y_true.shape=\(3,\) and "
         r"y_pred.shape=\(4, 2\)"),
        (np.zeros((4, 2)), np.zeros((4, 2)), r"y_true must be class ids of shape \(batch_size,\) "
         r"or \(batch_size, 1\); received y_true.shape=\(4, 2\)"),
    ],
)
def test_bad_input_shapes(labels, embeddings, pattern):
    with pytest.raises(ValueError, match=pattern):
        TripletLoss()(labels, embeddings.astype("float32"))


def test_bad_sample_weight_shape():
    with pytest.raises(ValueError, match=r"sample_weight must have shape"):
        TripletLoss()([0, 0, 1, 1], np.ones((4, 2), "float32"), sample_weight=np.ones((4, 3)))
