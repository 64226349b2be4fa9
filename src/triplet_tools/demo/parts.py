"""What a demo run is made of: the losses on offer, the model, the batch shape, the held-out
split, the output folder and the check for the ``demo`` extra (:mod:`triplet_tools.demo.command`
puts them together)."""

import importlib.util
import os
import tempfile

import keras
import numpy as np

from triplet_tools.demo import data as datasets
from triplet_tools.demo import openset
from triplet_tools.layers import L2Embedding
from triplet_tools.losses import (
    CircleLoss,
    LiftedStructLoss,
    MultiSimilarityLoss,
    PNLoss,
    PrimingLoss,
    SoftNearestNeighborLoss,
    SupConLoss,
    TripletLoss,
)

#: ``--loss`` choices: name -> (description, factory taking the loss's keyword options).
LOSSES = {
    "semihard": (
        "TripletLoss, hardest positive, semi-hard negative, margin 0.5",
        lambda **options: TripletLoss(margin=0.5, **options),
    ),
    "hard": (
        "TripletLoss, hardest positive and negative (batch-hard), margin 0.5",
        lambda **options: TripletLoss(negative_mining_strategy="hard", margin=0.5, **options),
    ),
    "pn": (
        "PNLoss, semi-hard negative, margin 0.5",
        lambda **options: PNLoss(margin=0.5, **options),
    ),
    "priming": ("PrimingLoss, d_ap^2 + exp(-10 d_an)", lambda **options: PrimingLoss(**options)),
    "soft": (
        "TripletLoss, hardest positive, semi-hard negative, softplus(d_ap - d_an)",
        lambda **options: TripletLoss(soft_margin=True, **options),
    ),
    "batch-all": (
        "TripletLoss, every triplet, mean over the active ones (batch all != 0), margin 0.5",
        lambda **options: TripletLoss(
            positive_mining_strategy="all",
            negative_mining_strategy="all",
            average="active",
            margin=0.5,
            **options,
        ),
    ),
    "tfa-semihard": (
        "TripletLoss, every positive pair with its own semi-hard negative (tfa's), margin 0.5",
        lambda **options: TripletLoss(positive_mining_strategy="all", margin=0.5, **options),
    ),
    "multi-similarity": (
        "MultiSimilarityLoss, alpha 2, beta 40, epsilon 0.1, lambda 0.5",
        lambda **options: MultiSimilarityLoss(**options),
    ),
    "circle": ("CircleLoss, gamma 80, margin 0.4", lambda **options: CircleLoss(**options)),
    "soft-nn": (
        "SoftNearestNeighborLoss, temperature 0.1",
        lambda **options: SoftNearestNeighborLoss(temperature=0.1, **options),
    ),
    "lifted": (
        "LiftedStructLoss, margin 1 (tfa's)",
        lambda **options: LiftedStructLoss(**options),
    ),
    "supcon": (
        "SupConLoss, temperature 0.1",
        lambda **options: SupConLoss(temperature=0.1, **options),
    ),
}
#: What the demo needs beyond the library (the ``demo`` extra): import name -> package.
EXTRAS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
HOLDOUT_FRACTION = 0.3
EMBEDDING_DIM = 32


def check_demo_extras():
    """Raises DataError (one line) if scikit-learn or matplotlib is missing: they are needed
    only after training (the map, the pictures), so the check comes first.

    Example:

    >>> check_demo_extras()  # both installed: nothing to say
    """
    missing = [
        package for module, package in EXTRAS.items() if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise datasets.DataError(
            f"the demo needs scikit-learn and matplotlib (missing: "
            f'{", ".join(missing)}): pip install "triplet-tools[demo]"'
        )


def prepare_output_folder(out):
    """Creates ``out`` if needed and checks that a file can be written in it, before training.

    Raises:
        DataError: one line, if ``out`` is an existing file, lies under a file, or cannot be
            created or written.

    Example:

    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "new", "out")
    >>> prepare_output_folder(folder)
    >>> os.path.isdir(folder)
    True
    """
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise datasets.DataError(
            f"--out {out}: an existing file, not a folder; give a folder (created if missing)"
        )
    above = path
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise datasets.DataError(
            f"--out {out}: {above} is a file, so no folder can be made under it"
        )
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise datasets.DataError(
            f"--out {out}: cannot create the folder or write in it ({error.strerror or error})"
        ) from None


def build_model(input_dim, seed=0):
    """A small MLP (two hidden layers) with an L2-normalised embedding on top.

    Seeded initialisers make the weights reproducible without
    ``keras.utils.set_random_seed``, which also imports TensorFlow when it is installed.
    """
    init = lambda layer: keras.initializers.GlorotUniform(seed=seed * 3 + layer)  # noqa: E731
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(128, activation="relu", kernel_initializer=init(0)),
            keras.layers.Dense(128, activation="relu", kernel_initializer=init(1)),
            L2Embedding(EMBEDDING_DIM, kernel_initializer=init(2)),
        ]
    )


def batch_shape(batch_size, num_classes):
    """``(P, K)`` for a batch of about ``batch_size`` rows: ``P = min(C, max(2, B // 4))``
    classes and ``K = B // P`` samples each, so few classes get many samples per class and
    many classes get at least 4.

    Example:

    >>> batch_shape(120, 10), batch_shape(128, 1000), batch_shape(6, 10)
    ((10, 12), (32, 4), (2, 3))
    """
    if batch_size < 4:
        raise datasets.DataError(
            f"--batch-size must be at least 4 (2 classes x 2 samples); received {batch_size}"
        )
    classes = min(num_classes, max(2, batch_size // 4))
    return classes, batch_size // classes


def _repeated(labels):
    """Mask of the rows whose class has at least two rows."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] >= 2


def split_dataset(dataset, seed):
    """Held-out part, standardised features (statistics of the training part) and checks."""
    # Classes kept out of training (openset.py) leave both parts: they are the unknowns.
    unseen = np.isin(dataset.y, openset.unseen_classes(dataset.y, seed))
    held_out = datasets.holdout_split(dataset.y, HOLDOUT_FRACTION, seed) & ~unseen
    x_train, y_train = dataset.x[~held_out & ~unseen], dataset.y[~held_out & ~unseen]
    y_test = dataset.y[held_out]
    trainable = len(np.unique(y_train[_repeated(y_train)]))
    if trainable < 2:
        raise datasets.DataError(
            f"too few classes to train: {trainable} class(es) have 2 or more training samples "
            f"after holding out {HOLDOUT_FRACTION:.0%}; need at least 2 (give every class 4 or "
            "more samples)"
        )
    if not np.any(_repeated(y_test)):
        raise datasets.DataError(
            f"no class has 2 or more samples in the held-out {HOLDOUT_FRACTION:.0%}, so "
            "retrieval cannot be measured; give every class 5 or more samples"
        )
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
    scale[scale == 0] = 1.0  # constant features (digits' blank border pixels)
    standardise = lambda x: ((x - mean) / scale).astype("float32")  # noqa: E731
    return {
        "x_train": standardise(x_train),
        "y_train": y_train,
        "raw_test": dataset.x[held_out],
        "x_test": standardise(dataset.x[held_out]),
        "y_test": y_test,
        "trainable_classes": trainable,
        "x_unseen": standardise(dataset.x[unseen]),
        "y_unseen": dataset.y[unseen],
    }
