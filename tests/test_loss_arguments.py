"""Which loss takes which arguments (issue 26): the mining strategies are ``TripletLoss``'s
(and so ``PNLoss``'s, which reuses its signature); the pair and softmax losses neither take
nor store them; ``PrimingLoss`` mines the hardest pair without taking them."""

import inspect

import numpy as np
import pytest

from backend import to_numpy
from triplet_tools import losses, tfa

MINING = ("positive_mining_strategy", "negative_mining_strategy", "semi_margin")

PAIR_LOSSES = [
    losses.MultiSimilarityLoss,
    losses.CircleLoss,
    losses.SoftNearestNeighborLoss,
    losses.LiftedStructLoss,
    losses.SupConLoss,
    losses.InfoNCELoss,
]


@pytest.mark.parametrize("cls", [*PAIR_LOSSES, losses.PrimingLoss])
def test_losses_that_take_no_strategy(cls):
    loss = cls()
    assert not set(MINING) & set(loss.get_config())
    for name in MINING:
        assert not hasattr(loss, name)
        with pytest.raises(TypeError, match=name):
            cls(**{name: 0.0 if name == "semi_margin" else "hard"})


@pytest.mark.parametrize("cls", PAIR_LOSSES)
def test_pair_losses_have_no_mining_rules(cls):
    assert not hasattr(cls(), "rules")


def test_priming_mines_the_hardest_pair():
    rules = losses.PrimingLoss(distance="cosine").rules
    assert (rules.distance.name, rules.positive, rules.negative, rules.semi_margin) == (
        "cosine",
        "hard",
        "hard",
        0.0,
    )


@pytest.mark.parametrize("cls", [losses.TripletLoss, losses.PNLoss])
def test_triplet_losses_keep_their_strategies(cls):
    loss = cls(positive_mining_strategy="easy", negative_mining_strategy="hard", semi_margin=0.25)
    assert (loss.positive_mining_strategy, loss.negative_mining_strategy, loss.semi_margin) == (
        "easy",
        "hard",
        0.25,
    )
    assert loss.rules.positive == "easy" and loss.rules.negative == "hard"
    config = loss.get_config()
    assert [config[name] for name in MINING] == ["easy", "hard", 0.25]


@pytest.mark.parametrize("cls", [tfa.TripletSemiHardLoss, tfa.TripletHardLoss])
def test_tfa_losses_mine_but_save_tfa_names_only(cls):
    loss = cls()
    assert loss.rules.negative == ("semi-hard" if cls is tfa.TripletSemiHardLoss else "hard")
    assert not set(MINING) & set(loss.get_config())


def test_pn_loss_reuses_triplet_loss_signature():
    """PNLoss differs from TripletLoss's signature in ``name``'s default only."""
    assert inspect.signature(losses.PNLoss).parameters["name"].default == "PNLoss"
    assert losses.PNLoss().get_config() == losses.TripletLoss(name="PNLoss").get_config()
    positional = ("euclidean", "easy", "hard", False, 0.4, 0.2)
    keywords = dict(zip(list(inspect.signature(losses.TripletLoss).parameters), positional))
    assert losses.PNLoss(*positional).get_config() == losses.PNLoss(**keywords).get_config()
    labels = np.array([0, 0, 1, 1, 2])
    x = np.random.default_rng(3).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(losses.PNLoss(*positional)(labels, x)),
        to_numpy(losses.PNLoss(**keywords)(labels, x)),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distance": "hamming"},
        {"positive_mining_strategy": "semi-hard"},
        {"negative_mining_strategy": "hardest"},
        {"semi_margin": float("nan")},
        {"margin": -1.0},
        {"soft_margin": True, "margin": 0.5},
        {"average": "all"},
        {"reduction": "average"},
        {"block_size": 0},
        {"global_mining": 1},
        {"dtype": "int32"},
    ],
)
def test_pn_loss_refuses_what_triplet_loss_refuses(kwargs):
    with pytest.raises(ValueError) as triplet:
        losses.TripletLoss(**kwargs)
    with pytest.raises(ValueError) as pn:
        losses.PNLoss(**kwargs)
    assert str(pn.value) == str(triplet.value)
