"""Writes ``saved_losses.json``: what a ``.keras`` file saved by triplet-tools at commit
d8b343d (before issue 26's base-loss rework) holds for each public loss, and its value.

Run on that commit's code, once, from the repository root::

    PYTHONPATH=/path/to/old/src KERAS_BACKEND=jax python tests/data/make_saved_losses.py

For every case it compiles a small model with the loss, saves it to ``.keras``, and stores
the loss entry of the file's ``compile_config`` (exactly what ``load_model`` deserializes)
with the loss's value on :func:`batch`. ``tests/test_saved_losses.py`` loads those entries
with today's code.
"""

import json
import pathlib
import sys
import tempfile
import zipfile

import keras
import numpy as np

import triplet_tools
from triplet_tools import distances, losses, tfa

HERE = pathlib.Path(__file__).parent


def batch(three_d=False):
    """Ten rows, classes of 3, 3, 3 and 1, unequal weights; InfoNCE's ``(10, 3, 4)`` input."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    rng = np.random.default_rng(26)
    x = rng.normal(size=(10, 3, 4) if three_d else (10, 4)).astype("float32")
    weights = np.linspace(0.5, 2.0, 10).astype("float32")
    return labels, x, weights


def cases():
    """``(id, loss)``: every public loss class and 0.2.3 function, arguments changed."""
    return [
        (
            "TripletLoss-everything",
            losses.TripletLoss(
                distance="euclidean",
                positive_mining_strategy="easy",
                negative_mining_strategy="hard",
                margin=0.3,
                semi_margin=0.2,
                name="t1",
                reduction="sum",
                average="active",
                block_size=3,
                global_mining=False,
                dtype="float64",
            ),
        ),
        (
            "TripletLoss-all-semi-hard-soft",
            losses.TripletLoss(
                distance=distances.get("squared_euclidean"),
                positive_mining_strategy="all",
                semi_margin=0.1,
                soft_margin=True,
                reduction="none",
            ),
        ),
        ("TripletLoss-default", losses.TripletLoss()),
        ("TripletLoss-memory", losses.TripletLoss(margin=0.2, memory="xbm")),
        (
            "PNLoss-all-all",
            losses.PNLoss(
                distance="manhattan",
                positive_mining_strategy="all",
                negative_mining_strategy="all",
                margin=0.4,
                reduction="mean_with_sample_weight",
            ),
        ),
        (
            "PNLoss-easy-semi-hard",
            losses.PNLoss(
                "euclidean", "easy", "semi-hard", False, 0.5, 0.3, name="pn", average="active"
            ),
        ),
        ("PNLoss-default", losses.PNLoss()),
        (
            "PrimingLoss",
            losses.PrimingLoss(distance="cosine", name="p", reduction="sum", block_size=2),
        ),
        ("PrimingLoss-default", losses.PrimingLoss()),
        (
            "MultiSimilarityLoss",
            losses.MultiSimilarityLoss(
                alpha=3.0, beta=20.0, epsilon=0.5, lmda=0.2, distance="euclidean", block_size=4
            ),
        ),
        ("CircleLoss", losses.CircleLoss(gamma=10.0, margin=0.3, reduction="sum")),
        (
            "SoftNearestNeighborLoss",
            losses.SoftNearestNeighborLoss(temperature=0.5, global_mining=False),
        ),
        ("LiftedStructLoss", losses.LiftedStructLoss(margin=0.8, distance="cosine")),
        ("SupConLoss", losses.SupConLoss(temperature=0.5, distance="euclidean")),
        ("SupConLoss-memory", losses.SupConLoss(memory="xbm")),
        (
            "InfoNCELoss",
            losses.InfoNCELoss(
                temperature=0.5, symmetric=True, exclude_same_label=True, reduction="none"
            ),
        ),
        (
            "TripletSemiHardLoss",
            tfa.TripletSemiHardLoss(margin=0.4, distance_metric="angular", reduction="sum"),
        ),
        (
            "TripletSemiHardLoss-distance",
            tfa.TripletSemiHardLoss(distance_metric=distances.get("euclidean_norm")),
        ),
        (
            "TripletHardLoss",
            tfa.TripletHardLoss(margin=0.2, soft=True, distance_metric="squared-L2"),
        ),
        ("TripletHardLoss-hinge", tfa.TripletHardLoss(margin=0.3, block_size=5)),
        ("triplet_batch_all_loss", losses.triplet_batch_all_loss(0.3, "l2")),
        ("triplet_batch_hard_loss", losses.triplet_batch_hard_loss(0.5, "cosine")),
        ("triplet_batch_semihard_loss", losses.triplet_batch_semihard_loss(0.5, 0.1, "l1")),
        ("triplet_batch_priming_loss", losses.triplet_batch_priming_loss("euclidean")),
    ]


def saved_entry(loss, folder):
    """The loss entry of a ``.keras`` file's ``compile_config`` for a model compiled with it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("adam", loss)
    path = pathlib.Path(folder) / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))["compile_config"]["loss"]


def value(loss):
    """The loss on :func:`batch`, as a list (``reduction="none"``) or a float; ``None`` with a
    memory (it needs the model's ``CrossBatchMemory`` layer)."""
    if loss.memory is not None:
        return None
    labels, x, weights = batch(three_d=isinstance(loss, losses.InfoNCELoss))
    out = np.asarray(keras.ops.convert_to_numpy(loss(labels, x, sample_weight=weights)))
    return out.astype(float).tolist()


def main():
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for case, loss in cases():
            records.append({"id": case, "saved": saved_entry(loss, folder), "value": value(loss)})
    payload = {
        "made_by": f"tests/data/make_saved_losses.py on triplet_tools {triplet_tools.__version__}"
        f" (commit d8b343d), keras {keras.__version__}, backend {keras.backend.backend()}",
        "cases": records,
    }
    (HERE / "saved_losses.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{len(records)} cases written", file=sys.stderr)


if __name__ == "__main__":
    main()
