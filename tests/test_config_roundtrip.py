"""Every loss survives saving: each constructor argument changed from its default, one at a
time, gives the same value before and after ``get_config`` / ``from_config`` and after
``keras.models.load_model`` of a small compiled model saved to ``.keras``.

The arguments come from the signatures, not from a list kept by hand, so a new argument is
tested the day it is added (``test_every_argument_has_a_changed_value`` fails until it has a
value in :data:`CHANGED` or a reason in :data:`SKIPPED`). A loss that takes ``**kwargs`` is
also handed every keyword of its base classes: it must either refuse it (``ValueError`` or
``TypeError``) or keep it through the round trip (issue 23: ``tfa.TripletSemiHardLoss``
accepted ``semi_margin`` and lost it on save).
"""

import inspect

import keras
import numpy as np
import pytest

from backend import to_numpy
from triplet_tools import distances, losses, tfa
from triplet_tools.losses.base import TripletFamilyLoss

# A compiled model saved before its first step has no optimizer variables to restore.
pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")

#: Every public loss class: those of ``triplet_tools.losses`` and ``triplet_tools.tfa``.
CLASSES = sorted(
    {
        obj
        for module in (losses, tfa)
        for obj in (getattr(module, name) for name in module.__all__)
        if isinstance(obj, type)
        and issubclass(obj, keras.losses.Loss)
        and not inspect.isabstract(obj)
        and obj not in (losses.TripletFamilyLoss, losses.PairLoss)  # bases, no loss of their own
    },
    key=lambda cls: (cls.__module__, cls.__name__),
)

#: The 0.2.3-style functions that return a loss object.
FACTORIES = [getattr(losses, name) for name in losses.__all__ if name.startswith("triplet_batch_")]

#: Per argument name, values other than the default (those equal to it are left out).
CHANGED = {
    "distance": ["euclidean", "manhattan", distances.get("squared_euclidean")],
    "metric": ["cosine", "manhattan", distances.get("squared_euclidean")],
    "distance_metric": [
        "angular",
        "squared-L2",
        distances.get("cosine"),
        distances.get("euclidean"),
        distances.get("euclidean_norm"),
    ],
    "positive_mining_strategy": ["hard", "easy", "all"],
    "negative_mining_strategy": ["semi-hard", "hard", "easy", "all"],
    "soft_margin": [True],
    "soft": [True],
    "margin": [0.3],
    "semi_margin": [0.5],
    "average": ["active"],
    "reduction": ["sum", "none", "mean_with_sample_weight"],
    "alpha": [3.0],
    "beta": [20.0],
    "epsilon": [1.0],
    "lmda": [0.2],
    "center": [0.8],
    "gamma": [10.0],
    "temperature": [0.5],
    "symmetric": [True],
    "exclude_same_label": [True],
    "name": ["renamed"],
    "dtype": ["float16"],
    "block_size": [3],
    "global_mining": [False],
}

#: Arguments left out, with the reason.
SKIPPED = {
    "memory": "takes effect only with a CrossBatchMemory layer in the model; its save and "
    "reload are tested in test_reliability.py (two models loaded from one file)",
}

#: Arguments that do not change the value on one device without a memory (the config is
#: still compared).
NO_EFFECT = {"name", "block_size", "global_mining", "dtype"}

#: Arguments whose change shows only beside another one, which every case of that argument
#: then also sets: ``average="active"`` differs from ``"valid"`` only when a valid anchor has
#: a zero loss, which the default margin (1.0) leaves none of on this batch;
#: ``exclude_same_label=True`` moves InfoNCE's value by 6e-5 relative at its default
#: temperature (0.05: the nearest candidates dominate), by far more at 0.5.
COMPANIONS = {"average": {"margin": 0.2}, "exclude_same_label": {"temperature": 0.5}}

#: The keywords every loss takes through ``**kwargs`` (TripletFamilyLoss's own).
COMMON = ("dtype", "block_size", "global_mining", "memory")


def _batch():
    """Ten rows, classes of 3, 3, 3 and 1 (a singleton is an invalid anchor), weights that
    are not all equal (so the weighted reductions differ)."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    x = np.random.default_rng(23).normal(size=(10, 4)).astype("float32")
    weights = np.linspace(0.5, 2.0, 10).astype("float32")
    return labels, x, weights


def _value(loss):
    labels, x, weights = _batch()
    if isinstance(loss, losses.InfoNCELoss):
        # (query, positive document, one hard negative) per row: (10, 3, 4).
        x = np.random.default_rng(27).normal(size=(10, 3, 4)).astype("float32")
    return np.asarray(to_numpy(loss(labels, x, sample_weight=weights)), np.float64)


def _parameters(maker):
    """``{name: default}`` of ``maker``'s own signature (``self`` and ``**kwargs`` out)."""
    return {
        name: p.default
        for name, p in inspect.signature(maker).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    }


def _takes_kwargs(maker):
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(maker).parameters.values())


def _inherited_keywords(cls):
    """Keywords of the base classes' constructors (up to TripletFamilyLoss) that ``cls``
    does not name itself: what ``**kwargs`` would hand on."""
    own = set(_parameters(cls))
    found = {}
    for base in cls.__mro__[1:]:
        if base is object or not issubclass(base, TripletFamilyLoss):
            continue
        for name, default in _parameters(base.__init__).items():
            if name not in own and name not in found:
                found[name] = default
    return found


def _as_distance(value):
    if isinstance(value, str):
        return distances.get(tfa.DISTANCE_METRICS.get(value, value))
    return value


def _same(a, b):
    """Whether two argument values are the same (a distance given by name or as an instance)."""
    if isinstance(a, distances.Distance) or isinstance(b, distances.Distance):
        a, b = _as_distance(a), _as_distance(b)
        return type(a) is type(b) and a.get_config() == b.get_config()
    return type(a) is type(b) and a == b


def _cases():
    """``(id, maker, {argument: value})``: one changed argument per case."""
    cases = []
    for maker in CLASSES + FACTORIES:
        arguments = _parameters(maker)
        if isinstance(maker, type) and _takes_kwargs(maker):
            arguments.update(_inherited_keywords(maker))
        for name, default in arguments.items():
            if name in SKIPPED or name not in CHANGED:
                continue  # test_every_argument_has_a_changed_value reports the latter
            for value in CHANGED[name]:
                if not _same(value, default):
                    label = value.name if isinstance(value, distances.Distance) else value
                    case = {**COMPANIONS.get(name, {}), name: value}
                    cases.append(pytest.param(maker, case, id=f"{maker.__name__}-{name}={label}"))
    return cases


def _make(maker, kwargs):
    """``maker(**kwargs)``, or ``None`` when a keyword it does not own is refused."""
    own = _parameters(maker)
    if all(name in own or name in COMMON for name in kwargs):
        return maker(**kwargs)
    try:
        return maker(**kwargs)
    except (ValueError, TypeError):
        return None  # refused: nothing to lose on save


@pytest.mark.parametrize("maker", CLASSES + FACTORIES, ids=lambda m: m.__name__)
def test_every_argument_has_a_changed_value(maker):
    arguments = set(_parameters(maker))
    if isinstance(maker, type) and _takes_kwargs(maker):
        arguments |= set(_inherited_keywords(maker)) | set(COMMON)
    missing = sorted(arguments - set(CHANGED) - set(SKIPPED))
    assert not missing, f"give {missing} a changed value in CHANGED or a reason in SKIPPED"


def test_every_public_loss_is_covered():
    names = {cls.__name__ for cls in CLASSES}
    assert {
        "TripletLoss",
        "PNLoss",
        "PrimingLoss",
        "MultiSimilarityLoss",
        "CircleLoss",
        "SoftNearestNeighborLoss",
        "LiftedStructLoss",
        "TripletSemiHardLoss",
        "TripletHardLoss",
        "SupConLoss",
        "InfoNCELoss",
    } <= names
    assert {f.__name__ for f in FACTORIES} == {
        "triplet_batch_all_loss",
        "triplet_batch_hard_loss",
        "triplet_batch_semihard_loss",
        "triplet_batch_priming_loss",
    }


_DEFAULT_VALUES = {}


def _default_value(maker, companions):
    key = (maker, tuple(sorted(companions.items())))
    if key not in _DEFAULT_VALUES:
        _DEFAULT_VALUES[key] = _value(maker(**companions))
    return _DEFAULT_VALUES[key]


@pytest.mark.parametrize("maker,kwargs", _cases())
def test_changed_argument_survives_config_and_load_model(tmp_path, maker, kwargs):
    loss = _make(maker, kwargs)
    if loss is None:
        return
    name = list(kwargs)[-1]
    companions = COMPANIONS.get(name, {})
    want = _value(loss)
    if name not in NO_EFFECT:
        # The change is visible: a loss that dropped it on save would give another value.
        default = _default_value(maker, companions)
        assert want.shape != default.shape or not np.allclose(
            want, default, rtol=1e-4, atol=1e-6
        ), f"{kwargs} does not change the value on this batch: pick another"
    config = loss.get_config()

    clone = type(loss).from_config(config)
    assert type(clone) is type(loss)
    assert clone.get_config() == config
    np.testing.assert_allclose(_value(clone), want, rtol=1e-6, atol=1e-7)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("adam", loss)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path).loss
    assert type(reloaded) is type(loss)
    assert reloaded.get_config() == config
    np.testing.assert_allclose(_value(reloaded), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "cls,keyword,value",
    [
        (tfa.TripletSemiHardLoss, "semi_margin", 0.5),
        (tfa.TripletSemiHardLoss, "average", "active"),
        (tfa.TripletSemiHardLoss, "soft_margin", True),
        (tfa.TripletSemiHardLoss, "positive_mining_strategy", "hard"),
        (tfa.TripletHardLoss, "positive_mining_strategy", "all"),
        (tfa.TripletHardLoss, "semi_margin", 0.5),
        (tfa.TripletHardLoss, "distance", "cosine"),
    ],
)
def test_tfa_refuses_keywords_tfa_never_had(cls, keyword, value):
    """They changed the loss (semi_margin=0.5: 0.4026 against 0.8147) and were lost on save:
    refused now, in one line that names them and the keywords allowed."""
    with pytest.raises(ValueError) as info:
        cls(**{keyword: value})
    message = str(info.value)
    assert keyword in message and "\n" not in message
    for allowed in ("margin", "distance_metric", *tfa.COMMON_KEYWORDS):
        assert allowed in message


@pytest.mark.parametrize("cls", [tfa.TripletSemiHardLoss, tfa.TripletHardLoss])
@pytest.mark.parametrize("metric", ["cosine", "euclidean_norm", "squared_euclidean"])
def test_tfa_loss_with_a_distance_instance_reloads(tmp_path, cls, metric):
    """distance_metric=distances.get("cosine") stored "cosine", which the constructor then
    refused: load_model failed. The config now holds tfa's name where there is one
    ("angular"), else the Distance's Keras serialization."""
    loss = cls(margin=0.4, distance_metric=distances.get(metric))
    tfa_name = {"cosine": "angular", "squared_euclidean": "squared-L2"}.get(metric)
    if tfa_name:
        assert loss.get_config()["distance_metric"] == tfa_name
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("adam", loss)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras").loss
    assert type(reloaded) is cls and reloaded.distance.name == metric
    np.testing.assert_allclose(_value(reloaded), _value(loss), rtol=1e-6)
