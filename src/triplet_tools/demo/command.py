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

import json
import os
import time

import keras

from triplet_tools._validation import check_choice, check_int
from triplet_tools.demo import data as datasets
from triplet_tools.demo import openset
from triplet_tools.demo import pictures as plots
from triplet_tools.demo.parts import (
    EMBEDDING_DIM,
    EXTRAS,
    HOLDOUT_FRACTION,
    LOSSES,
    batch_shape,
    build_model,
    check_demo_extras,
    prepare_output_folder,
    split_dataset,
)
from triplet_tools.evaluation import RetrievalMetricsCallback, metric_names, retrieval_metrics
from triplet_tools.memory import CrossBatchMemory
from triplet_tools.metrics import MiningStatistics
from triplet_tools.samplers import ClassBalancedBatches

__all__ = [
    "EMBEDDING_DIM",
    "EXTRAS",
    "HOLDOUT_FRACTION",
    "LOSSES",
    "batch_shape",
    "build_model",
    "check_demo_extras",
    "format_table",
    "prepare_output_folder",
    "run",
]


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
    split = split_dataset(dataset, seed)
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
