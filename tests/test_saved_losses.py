"""A ``.keras`` file saved before issue 26's base-loss rework still loads, to the same loss.

``data/saved_losses.json`` holds, for every public loss class and 0.2.3 function with
arguments changed from their defaults, the loss entry that triplet-tools at commit d8b343d
wrote into a ``.keras`` file's ``compile_config``, and that code's value of the loss on a
fixed batch (``data/make_saved_losses.py`` wrote both, on JAX). Each entry is put into a
``.keras`` file of today's code and loaded with ``keras.models.load_model``: the loss must
come back as the same class, with the same config, save the same entry again, and give the
same value.
"""

import json
import pathlib
import zipfile

import keras
import numpy as np
import pytest

from backend import to_numpy

SAVED = json.loads((pathlib.Path(__file__).parent / "data" / "saved_losses.json").read_text())
CASES = SAVED["cases"]

# A compiled model saved before its first step has no optimizer variables to restore.
pytestmark = pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")


def _batch(three_d):
    """The batch of ``make_saved_losses.batch``."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    rng = np.random.default_rng(26)
    x = rng.normal(size=(10, 3, 4) if three_d else (10, 4)).astype("float32")
    weights = np.linspace(0.5, 2.0, 10).astype("float32")
    return labels, x, weights


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A ``.keras`` file of today's code: a small model compiled with a loss."""
    from triplet_tools import TripletLoss

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("adam", TripletLoss())
    path = tmp_path_factory.mktemp("template") / "model.keras"
    model.save(path)
    return path


def _with_loss(template, entry, path):
    """``template`` with its ``compile_config``'s loss replaced by ``entry``, at ``path``."""
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["compile_config"]["loss"] = entry
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return path


def test_every_public_loss_is_saved():
    import triplet_tools
    from triplet_tools import losses, tfa

    public = {
        name
        for module in (losses, tfa)
        for name in module.__all__
        if isinstance(getattr(module, name), type)
        and issubclass(getattr(module, name), keras.losses.Loss)
        and name not in ("TripletFamilyLoss", "PairLoss")
    }
    saved = {case["saved"]["class_name"] for case in CASES}
    assert public <= saved, sorted(public - saved)
    factories = {name for name in dir(triplet_tools) if name.startswith("triplet_batch_")}
    assert factories <= {case["id"] for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_old_keras_file_loads_to_the_same_loss(tmp_path, template, case):
    entry = case["saved"]
    loaded = keras.models.load_model(_with_loss(template, entry, tmp_path / "old.keras")).loss
    assert type(loaded).__name__ == entry["class_name"]
    assert loaded.get_config() == entry["config"]
    # Saved again, it writes what the old code wrote, but for the module a class moved to
    # (the pair losses left losses/pair.py; Keras finds them by their registered name,
    # which does not change).
    saved = keras.saving.serialize_keras_object(loaded)
    assert saved["registered_name"] == entry["registered_name"]
    assert {**saved, "module": entry["module"]} == entry
    if case["value"] is None:
        return  # a memory: its value needs the model's CrossBatchMemory layer
    labels, x, weights = _batch(three_d=entry["class_name"] == "InfoNCELoss")
    got = to_numpy(loaded(labels, x, sample_weight=weights))
    np.testing.assert_allclose(got, np.asarray(case["value"]), rtol=2e-5, atol=1e-6)
