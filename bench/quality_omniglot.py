"""Embedding quality against triplet-tools 0.2.3: a zero-shot protocol on Omniglot.

```
data:   Omniglot background set (964 characters x 20 drawings) pooled to S x S, as stored
        (1 = paper: the model stays near collapse, where 0.2.3 and ours differ) or as ink;
        train on the first --train-classes characters, test on the last --test-classes
        (the split keeps whole alphabets apart: the characters are stored alphabet by alphabet)
model:  a small CNN (three 3x3 convolutions, global average pooling, a linear D-dim output)
train:  P x K batches (triplet_tools.samplers.ClassBalancedBatches), Adam, --epochs epochs;
        for each seed, every loss starts from the same weights and sees the same batches
        (same process, same TensorFlow graph settings, op determinism on): the loss is the
        only difference
score:  MAP@R of the test characters' embeddings, leave-one-out (their ranking under
        euclidean_norm), via triplet_tools.evaluation.retrieval_metrics
report: per seed, each loss's MAP@R and the paired difference ours - 0.2.3; mean, min, max
```

``hard-0.2.3-zero-self`` is 0.2.3's batch-hard from its own helpers with the anchor's
self-distance set to 0 (see :func:`zero_self_hard_loss`; docs/performance.md, "Quality
against 0.2.3", has the findings).

triplet-tools 0.2.3 has our import name and is TensorFlow-only, so everything runs on
TensorFlow; its package is imported from ``--peer`` (the site-packages of its environment,
``make bench`` builds it under ``.bench/triplet-tools-0.2.3``) and set aside before ours is
imported, so both live in this one process. Without the data (it lives only in
``../shared``) or without the peer, the script says so and exits 0.

Example::

    KERAS_BACKEND=tensorflow .venv/bin/python bench/quality_omniglot.py --seeds 6 \\
        --peer .bench/triplet-tools-0.2.3 --out bench-output/quality.json
"""

import argparse
import datetime
import glob
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "omniglot-background"
DEFAULT_PEER = ROOT / ".bench" / "triplet-tools-0.2.3"
#: Loss name -> (library, 0.2.3 function / our function name).
LOSSES = {
    "hard": ("ours", "triplet_batch_hard_loss"),
    "hard-0.2.3": ("0.2.3", "triplet_batch_hard_loss"),
    "semihard": ("ours", "triplet_batch_semihard_loss"),
    "semihard-0.2.3": ("0.2.3", "triplet_batch_semihard_loss"),
    "hard-0.2.3-zero-self": ("0.2.3", "zero_self"),
}
#: Paired comparisons reported: (ours, 0.2.3's).
PAIRS = (
    ("hard", "hard-0.2.3"),
    ("semihard", "semihard-0.2.3"),
    ("hard", "hard-0.2.3-zero-self"),
    ("hard-0.2.3-zero-self", "hard-0.2.3"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Omniglot folder")
    parser.add_argument(
        "--peer",
        type=Path,
        default=DEFAULT_PEER,
        help="triplet-tools 0.2.3's virtual environment (or its site-packages)",
    )
    parser.add_argument("--seeds", default="6", help="a count N (seeds 0..N-1) or a list 3,4,5")
    parser.add_argument("--losses", default="hard,hard-0.2.3", help=",".join(LOSSES))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--classes-per-batch", type=int, default=32, help="P")
    parser.add_argument("--samples-per-class", type=int, default=4, help="K")
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--metric", default="euclidean_norm")
    parser.add_argument(
        "--input",
        default="stored",
        choices=("stored", "ink"),
        help="stored: the arrays as stored, 1 = paper (the near-collapse regime); ink: 1 - that",
    )
    parser.add_argument("--image-size", type=int, default=28, choices=(14, 21, 28, 35))
    parser.add_argument("--train-classes", type=int, default=800)
    parser.add_argument("--test-classes", type=int, default=164)
    parser.add_argument("--dim", type=int, default=64, help="embedding width")
    parser.add_argument("--width", type=int, default=32, help="filters of the first conv")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow's intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    return parser.parse_args(argv)


def seeds_from(text):
    """``"6"`` -> ``[0, ..., 5]``; ``"3,4"`` -> ``[3, 4]``.

    >>> seeds_from("3"), seeds_from("7,9")
    ([0, 1, 2], [7, 9])
    """
    if "," in text:
        return [int(s) for s in text.split(",")]
    return list(range(int(text)))


def find_peer(peer):
    """The folder that holds 0.2.3's ``triplet_tools`` package, or ``None``."""
    candidates = [peer, *sorted(glob.glob(str(peer / "lib" / "python*" / "site-packages")))]
    for folder in candidates:
        if (Path(folder) / "triplet_tools" / "losses" / "shared_functions.py").is_file():
            return Path(folder)
    return None


def import_peer(site_packages):
    """Imports 0.2.3's ``triplet_tools`` from ``site_packages`` and hides it from
    ``sys.modules``, so that ``import triplet_tools`` then finds ours. Its functions keep
    their own module globals, so they still call 0.2.3's helpers."""
    import tensorflow  # noqa: F401  (ours, imported first: the peer must not bring its own)

    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if _ours(name)}
    sys.path.insert(0, str(site_packages))
    try:
        peer = importlib.import_module("triplet_tools")
        version = _peer_version(site_packages)
        if not Path(peer.__file__).resolve().is_relative_to(site_packages.resolve()):
            raise RuntimeError(f"0.2.3 was expected from {site_packages}, got {peer.__file__}")
    finally:
        sys.path.remove(str(site_packages))
        for name in [name for name in sys.modules if _ours(name)]:
            sys.modules[name.replace("triplet_tools", "triplet_tools_023", 1)] = sys.modules.pop(
                name
            )
        sys.modules.update(saved)
    return peer, version


def _ours(name):
    return name == "triplet_tools" or name.startswith("triplet_tools.")


def _peer_version(site_packages):
    found = sorted(glob.glob(str(site_packages / "triplet_tools-*.dist-info")))
    return Path(found[0]).name.split("-")[1].removesuffix(".dist") if found else "?"


def load_omniglot(folder, size, train_classes, test_classes, ink=False):
    """``(x_train, y_train, x_test, y_test)``: ``(N, size, size, 1)`` float32 in [0, 1], the
    share of paper (``ink=True``: of ink) in each pooled cell of the 105 x 105 drawings, padded
    with paper to a multiple of ``size``."""
    import numpy as np

    with np.load(folder / "images_background.npz") as data:
        images, labels = data["images"], data["labels"]
    num_classes = images.shape[0]
    if train_classes + test_classes > num_classes:
        raise SystemExit(
            f"--train-classes {train_classes} + --test-classes {test_classes} > {num_classes}"
        )
    factor = -(-105 // size)
    padded = size * factor
    pixels = np.ones((num_classes, 20, padded, padded), np.float32)
    lead = (padded - 105) // 2
    pixels[:, :, lead : lead + 105, lead : lead + 105] = images
    if ink:
        pixels = 1 - pixels
    pooled = pixels.reshape(num_classes, 20, size, factor, size, factor).mean(axis=(3, 5))
    pooled = pooled[..., None]
    train = slice(0, train_classes)
    test = slice(num_classes - test_classes, num_classes)
    return (
        pooled[train].reshape(-1, size, size, 1),
        labels[train].reshape(-1),
        pooled[test].reshape(-1, size, size, 1),
        labels[test].reshape(-1),
    )


def build_model(size, dim, width):
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, 1)),
            layers.Conv2D(width, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(2 * width, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(2 * width, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(dim),
        ]
    )


def make_loss(name, args, peer):
    library, function = LOSSES[name]
    if library == "ours":
        import triplet_tools

        return getattr(triplet_tools, function)(margin=args.margin, metric=args.metric)
    if function == "zero_self":
        return zero_self_hard_loss(peer, args.margin, args.metric)
    return getattr(peer, function)(margin=args.margin, metric=args.metric)


def zero_self_hard_loss(peer, margin, metric):
    """0.2.3's batch-hard loss, built from its own helpers, with one change: the anchor's
    distance to itself is set to exactly 0 before the hardest positive is taken.

    0.2.3 takes the hardest positive over its label-equality matrix, diagonal included, so
    the anchor is one of its own positives; in float32 its self-distance
    ``sqrt(2 * max(1 - a_hat.a_hat, 1e-16))`` is rounding noise (up to ~1e-3, gradient ~0),
    which wins the max whenever the true positives are closer than that."""
    import tensorflow as tf

    shared = peer.losses.shared_functions

    def loss_function(labels, embeddings):
        d = shared.pairwise_distance(embeddings, metric)
        adj = shared.make_adj_matrix(labels, embeddings.dtype)
        off_diagonal = 1.0 - tf.eye(tf.shape(d)[0], dtype=d.dtype)
        hardest_positive = shared.hard_positive(d * off_diagonal, adj)
        hardest_negative = shared.hard_negative(d, adj)
        return tf.reduce_mean(tf.maximum(hardest_positive - hardest_negative + margin, 0.0))

    return loss_function


def train_one(name, seed, data, args, peer, log_steps=0):
    """Trains from seed ``seed`` with loss ``name``; returns a dict of the run's results."""
    import keras
    import numpy as np
    import tensorflow as tf

    from triplet_tools.evaluation import retrieval_metrics
    from triplet_tools.samplers import ClassBalancedBatches

    x_train, y_train, x_test, y_test = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_model(args.image_size, args.dim, args.width)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    loss_function = make_loss(name, args, peer)
    batches = ClassBalancedBatches(
        x_train, y_train, args.classes_per_batch, args.samples_per_class, seed=seed
    )

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            embeddings = model(x, training=True)
            loss = loss_function(y, embeddings)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss, tf.linalg.global_norm(gradients)

    losses, norms = [], []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for rows in batches.epoch_indices(epoch):
            loss, norm = step(tf.constant(x_train[rows]), tf.constant(y_train[rows]))
            if len(losses) < log_steps:
                losses.append(float(loss))
                norms.append(float(norm))
    seconds = time.perf_counter() - start
    embeddings = np.asarray(model.predict(x_test, batch_size=512, verbose=0))
    metrics = retrieval_metrics(embeddings, y_test, distance=args.metric, k=(1,))
    return {
        "loss": name,
        "seed": seed,
        "map@r": metrics["map@r"],
        "precision@1": metrics["precision@1"],
        "train_seconds": round(seconds, 1),
        "first_losses": losses,
        "first_gradient_norms": norms,
    }


def summarize(runs, pairs):
    """Paired differences ``ours - 0.2.3`` of MAP@R per seed, for each pair present."""
    by_key = {(run["loss"], run["seed"]): run["map@r"] for run in runs}
    seeds = sorted({run["seed"] for run in runs})
    summary = {}
    for ours, peer in pairs:
        differences = [
            by_key[ours, s] - by_key[peer, s]
            for s in seeds
            if (ours, s) in by_key and (peer, s) in by_key
        ]
        if differences:
            summary[f"{ours} - {peer}"] = {
                "seeds": len(differences),
                "mean": sum(differences) / len(differences),
                "min": min(differences),
                "max": max(differences),
                "below": sum(d < 0 for d in differences),
                "differences": differences,
            }
    return summary


def table(runs, losses):
    seeds = sorted({run["seed"] for run in runs})
    by_key = {(run["loss"], run["seed"]): run["map@r"] for run in runs}
    lines = ["| seed | " + " | ".join(losses) + " |", "|---" * (len(losses) + 1) + "|"]
    for seed in seeds:
        cells = [f"{by_key[name, seed]:.4f}" if (name, seed) in by_key else "" for name in losses]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    unknown = sorted(set(losses) - set(LOSSES))
    if unknown:
        raise SystemExit(f"unknown --losses {unknown}; choose from {', '.join(LOSSES)}")
    if not (args.data / "images_background.npz").is_file():
        print(f"quality: skipped, no Omniglot data in {args.data}")
        return 0
    site_packages = find_peer(args.peer)
    wants_peer = any(LOSSES[name][0] == "0.2.3" for name in losses)
    if wants_peer and site_packages is None:
        print(f"quality: skipped, no triplet-tools 0.2.3 under {args.peer} (make bench-peers)")
        return 0
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        raise SystemExit("quality: 0.2.3 is TensorFlow-only; run with KERAS_BACKEND=tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    peer, peer_version = import_peer(site_packages) if wants_peer else (None, None)
    import keras

    import triplet_tools

    data = load_omniglot(
        args.data, args.image_size, args.train_classes, args.test_classes, args.input == "ink"
    )
    runs = []
    for seed in seeds_from(args.seeds):
        for name in losses:
            run = train_one(name, seed, data, args, peer)
            runs.append(run)
            print(
                f"seed {seed} {name:15s} MAP@R {run['map@r']:.4f} "
                f"P@1 {run['precision@1']:.4f} ({run['train_seconds']} s)",
                flush=True,
            )
    summary = summarize(runs, PAIRS)
    print(table(runs, losses))
    for key, entry in summary.items():
        print(
            f"{key}: mean {entry['mean']:+.4f}, min {entry['min']:+.4f}, "
            f"max {entry['max']:+.4f}, below 0 on {entry['below']} of {entry['seeds']} seeds"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "versions": {
                "triplet-tools": triplet_tools.__version__,
                "triplet-tools (peer)": peer_version,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
            },
            "settings": settings,
            "runs": runs,
            "summary": summary,
        }
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
