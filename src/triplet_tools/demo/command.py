"""``triplet-tools demo``: train an embedding with online mining and show what it learned.

```
data (digits or --data FILE) -> hold out 30% of every class -> standardise on the rest
  -> P x K class-balanced batches -> MLP + L2Embedding, a triplet-family loss
  -> per epoch: loss, mining statistics, held-out MAP@R (progress bar)
  -> retrieval table raw vs trained, embedding map and training curves (PNG), metrics.json
  -> open set (6+ classes; 20% of them never trained on): index the held-out embeddings,
     calibrate a distance threshold, match or refuse; open_set.png (demo/openset.py)
```

The held-out part is only measured, never used to choose anything, so its numbers are
not optimistic.
"""

import importlib.util
import json
import os
import tempfile
import time

import keras
import numpy as np

from triplet_tools._validation import check_choice, check_int
from triplet_tools.demo import data as datasets
from triplet_tools.demo import openset
from triplet_tools.demo import pictures as plots
from triplet_tools.evaluation import RetrievalMetricsCallback, metric_names, retrieval_metrics
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
from triplet_tools.memory import CrossBatchMemory
from triplet_tools.metrics import MiningStatistics
from triplet_tools.samplers import ClassBalancedBatches

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


def run(
    loss="semihard",
    distance="cosine",
    epochs=20,
    batch_size=120,
    out="demo-output",
    seed=0,
    data=None,
    label_column="label",
    map_method="tsne",
    memory=0,
    verbose=1,
    echo=print,
):
    """Runs the whole demo and returns a dict of what it measured.

    Args:
        loss: a key of :data:`LOSSES`.
        distance: a distance name, used by the loss and for retrieval.
        epochs: training epochs (>= 1).
        batch_size: rows per batch (>= 4); split into ``P`` classes x ``K`` samples by
            :func:`batch_shape`.
        out: folder for the pictures and ``metrics.json`` (created if missing, before
            training, so that a folder that cannot be written fails before the work).
        seed: an int >= 0; seeds the split, the batches, the weights and the map.
        data: ``None`` for scikit-learn's digits, else a ``.npz`` / ``.csv`` path (see
            :mod:`triplet_tools.demo.data`).
        label_column: the label column of a ``.csv`` file.
        map_method: ``"tsne"`` or ``"pca"`` for the 2-D map.
        memory: rows of cross-batch memory (``triplet_tools.memory.CrossBatchMemory``);
            0 (default) mines inside each batch only.
        verbose: Keras ``fit`` verbosity (1: a progress bar per epoch).
        echo: prints one line of the report.

    Returns:
        ``{"raw": metrics, "trained": metrics, "history": {...}, "files": [...],
        "train_seconds": float, "total_seconds": float, ...}``.

    Raises:
        triplet_tools.demo.data.DataError: for unusable data, a missing ``demo`` extra
            (scikit-learn, matplotlib) or an ``out`` that cannot be a writable folder, with a
            one-line message; ValueError for other bad arguments.

    Example (what ``triplet-tools demo --loss hard --epochs 5`` runs)::

        from triplet_tools import demo
        result = demo.run(loss="hard", epochs=5, out="demo-output")
        result["trained"]["map@r"] - result["raw"]["map@r"]
    """
    check_choice(loss, tuple(LOSSES), "loss")
    check_choice(map_method, plots.MAP_METHODS, "map_method")
    check_int(memory, "--memory", minimum=0)
    check_int(epochs, "--epochs", minimum=1)
    check_int(batch_size, "--batch-size")
    check_int(seed, "--seed", minimum=0)
    check_demo_extras()
    started = time.perf_counter()
    dataset = datasets.load_digits() if data is None else datasets.load_file(data, label_column)
    split = _split(dataset, seed)
    classes, per_class = batch_shape(batch_size, split["trainable_classes"])
    prepare_output_folder(out)
    loss_description, make_loss = LOSSES[loss]
    echo(
        f"data: {dataset.description}: {len(dataset.y)} samples, {dataset.x.shape[1]} "
        f"features, {len(dataset.class_names)} classes; {len(split['y_test'])} held out "
        f"({HOLDOUT_FRACTION:.0%} of every trained class)" + openset.kept_out_note(split, dataset)
    )
    echo(
        f"model: MLP 128-128 + L2Embedding({EMBEDDING_DIM}); loss: {loss_description}; "
        f"distance: {distance}; batches: {classes} classes x {per_class} samples; "
        f"cross-batch memory: {memory or 'none'}; backend: {keras.backend.backend()}"
    )

    raw = retrieval_metrics(split["raw_test"], split["y_test"], distance=distance)
    model = build_model(dataset.x.shape[1], seed)
    options = {"distance": distance}
    if memory:
        options["memory"] = CrossBatchMemory(memory)
        model.add(options["memory"])
    loss_object = make_loss(**options)
    model.compile(keras.optimizers.Adam(1e-3), loss_object, metrics=[MiningStatistics(loss_object)])
    batches = ClassBalancedBatches(
        split["x_train"], split["y_train"], classes, per_class, seed=seed
    )
    # Only MAP@R on the progress bar: every metric would make the line wrap.
    retrieval = RetrievalMetricsCallback(
        split["x_test"], split["y_test"], distance=distance, log_metrics=["map@r"]
    )
    fit_started = time.perf_counter()
    history = model.fit(
        batches, epochs=epochs, shuffle=False, verbose=verbose, callbacks=[retrieval]
    ).history
    train_seconds = time.perf_counter() - fit_started
    trained = {name: values[-1] for name, values in retrieval.history.items()}

    echo("")
    for line in format_table({"raw features": raw, "trained embedding": trained}):
        echo(line)
    gain = trained["map@r"] - raw["map@r"]
    echo(
        f"MAP@R {raw['map@r']:.3f} -> {trained['map@r']:.3f} ({gain:+.3f}) after {epochs} "
        f"epochs; training + evaluation took {time.perf_counter() - started:.1f} s"
    )

    result = {
        "data": dataset.description,
        "loss": loss,
        "distance": distance,
        "epochs": epochs,
        "batch": [classes, per_class],
        "seed": seed,
        "memory": memory,
        "backend": keras.backend.backend(),
        "raw": raw,
        "trained": trained,
        "history": history,
        "train_seconds": train_seconds,
    }
    embeddings = keras.ops.convert_to_numpy(model.predict(split["x_test"], verbose=0))
    open_set = openset.run_step(model, split, dataset.class_names, distance, seed, out, echo)
    result["files"] = _write_outputs(
        out,
        split,
        embeddings,
        dataset.class_names,
        raw["map@r"],
        retrieval,
        history["loss"],
        history["active_triplets"],
        map_method,
        seed,
    )
    if open_set:
        result["files"].insert(-1, open_set.pop("picture"))
        result["open_set"] = open_set
    result["total_seconds"] = time.perf_counter() - started
    with open(result["files"][-1], "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    echo(f"pictures and metrics.json written to {os.path.abspath(out)}")
    return result


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


def format_table(rows, names=None):
    """Lines of a fixed-width table: one row per entry of ``rows`` (name -> metrics dict).

    Example:

    >>> for line in format_table({"a": {"map@r": 0.5}}, ["map@r"]):
    ...     print(line)
                              map@r
    a                         0.500
    """
    names = names or metric_names()
    lines = [" " * 18 + "".join(f"{name:>13}" for name in names)]
    for label, metrics in rows.items():
        lines.append(f"{label:<18}" + "".join(f"{metrics[name]:>13.3f}" for name in names))
    return lines


def _repeated(labels):
    """Mask of the rows whose class has at least two rows."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] >= 2


def _split(dataset, seed):
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


def _write_outputs(
    out, split, embeddings, class_names, raw_map_at_r, retrieval, loss, active, map_method, seed
):
    """Writes the two pictures; returns their paths and that of metrics.json (written last)."""
    files = [
        os.path.join(out, name)
        for name in ("embedding_map.png", "training_curves.png", "metrics.json")
    ]
    plots.embedding_map(
        split["raw_test"],
        embeddings,
        split["y_test"],
        class_names,
        (raw_map_at_r, retrieval.history["map@r"][-1]),
        files[0],
        map_method,
        seed,
    )
    plots.training_curves(
        retrieval.epochs, loss, active, retrieval.history["map@r"], raw_map_at_r, files[1]
    )
    return files
