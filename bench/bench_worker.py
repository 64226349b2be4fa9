"""One benchmark measurement, run in its own process by ``bench/benchmark.py``.

This file is executed by path with ``python -I`` -- by the project's environment for our
losses and the floor, and by each peer's own virtual environment for the peers -- so it
imports nothing but the standard library and NumPy at module level, and only the library
under test inside its case. It prints one line, ``BENCH_RESULT {json}``, and exits.

```
inputs  = fixed-seed float32 embeddings (B, D) and int32 labels, `per_class` rows per class
step    = loss + gradient with respect to the embeddings (the floor: one blocked B x B x D
          product, see floor())
result  = first call (trace + compile + run), then the median of `repeats` timed calls, or of
          as many as fill one second (at most 2000) when the step is fast
```

Example (from a source checkout, in the project's environment)::

    KERAS_BACKEND=jax PYTHONPATH=src python -I bench/bench_worker.py \\
        --case ours-semi-hard --batch 256
"""

import argparse
import contextlib
import importlib.metadata
import json
import os
import statistics
import sys
import time

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "
#: Fast steps are repeated until their timed calls add up to this many seconds...
MIN_TIMED_S = 1.0
#: ... or this many calls.
MAX_CALLS = 2000

#: Every loss is measured with this distance and margin; all four libraries support them.
DISTANCE = "cosine"
MARGIN = 0.2


def make_inputs(batch, dim, per_class, seed):
    """Returns ``(embeddings float32 (B, D), labels int32 (B,))``, the same for every library.

    Embeddings are random unit vectors: TF Similarity's cosine distance assumes
    L2-normalised inputs (the others normalise themselves). Labels are
    ``arange(B) // per_class`` shuffled, so every class has ``per_class`` rows (the last
    one fewer when ``per_class`` does not divide ``B``).

    Example:

    >>> x, y = make_inputs(16, 4, 8, seed=0)
    >>> x.shape, x.dtype.name, sorted(np.bincount(y).tolist())
    ((16, 4), 'float32', [8, 8])
    >>> bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6))
    True
    """
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((batch, dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(batch) // per_class).astype(np.int32)
    return embeddings, labels


def _versions(*distributions):
    found = {}
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


# --- steps: each returns (step, to_numpy, versions); step() -> (loss, gradient) ------------
# step() returns only when the work is done (TF and torch on CPU are synchronous; JAX blocks).


def _tensorflow_step(loss_fn, embeddings, labels, jit_compile):
    import tensorflow as tf

    x, y = tf.constant(embeddings), tf.constant(labels)

    @tf.function(jit_compile=jit_compile)
    def value_and_grad(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss_fn(y, x)
        return value, tape.gradient(value, x)

    return (lambda: value_and_grad(x, y)), (lambda t: t.numpy()), _versions("tensorflow")


def _torch_step(loss_fn, embeddings, labels):
    import torch

    x = torch.from_numpy(embeddings).requires_grad_(True)
    y = torch.from_numpy(labels)

    def step():
        value = loss_fn(y, x)
        (grad,) = torch.autograd.grad(value, x)
        return value, grad

    return step, (lambda t: t.detach().numpy()), _versions("torch")


def _tf_keras_fit_step(loss, embeddings, labels):
    """One ``tf_keras`` ``model.fit`` step of a small model trained with ``loss``.

    The model maps the ``(B, D)`` inputs through ``Dense(D)`` and ``UnitNormalization`` to
    the embeddings the loss sees. ``step()`` is one call of the model's train function, what
    ``model.fit`` calls once per batch (next batch from the dataset iterator, forward, loss,
    gradient, one SGD update), as ``tf_keras`` compiles it by default: a ``tf.function``
    without XLA. (``train_on_batch`` would add about 10 ms of per-call set-up, a new
    dataset each time, which ``fit`` pays once per epoch.) Runs under
    ``TF_USE_LEGACY_KERAS=1``; ``loss`` is a ``tf_keras`` loss or a plain
    ``loss(y_true, y_pred)`` function.
    """
    import tensorflow as tf
    import tf_keras

    dim = embeddings.shape[1]
    model = tf_keras.Sequential(
        [
            tf_keras.Input((dim,)),
            tf_keras.layers.Dense(dim),
            tf_keras.layers.UnitNormalization(),
        ]
    )
    model.compile(tf_keras.optimizers.SGD(learning_rate=1e-4), loss)
    batches = iter(tf.data.Dataset.from_tensors((embeddings, labels)).repeat())
    train_function = model.make_train_function()

    def step():
        return (train_function(batches)["loss"],)

    step.notes = {"step": "tf_keras train_function", "jit_compile": bool(model.jit_compile)}
    return step, (lambda t: t.numpy()), _versions("tensorflow", "tf-keras")


class NotAvailable(Exception):
    """A loss that this checkout of triplet-tools does not have (yet): reported as missing."""


def _ours(module, name):
    """``module.name`` from triplet-tools, or :class:`NotAvailable` if this checkout lacks it.

    Only a missing module or name counts: an error raised while importing a module that
    exists is a real failure and propagates.

    Example:

    >>> try:
    ...     _ours("triplet_tools", "no_such_loss")
    ... except NotAvailable as error:
    ...     print(str(error).split(" (")[0])
    triplet_tools.no_such_loss is not in this triplet-tools
    """
    import importlib

    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not (module == error.name or module.startswith(error.name + ".")):
            raise
        raise NotAvailable(f"{module}.{name} is not in this triplet-tools ({error})") from None
    if not hasattr(found, name):
        raise NotAvailable(
            f"{module}.{name} is not in this triplet-tools "
            f"({_versions('triplet-tools').get('triplet-tools', 'unknown version')})"
        )
    return getattr(found, name)


def keras_loss(make_loss, variant=None, distributions=("triplet-tools", "keras")):
    """A Keras 3 loss (``make_loss()`` builds it) on the backend named by ``KERAS_BACKEND``.

    TensorFlow runs under ``tf.function(jit_compile=True)`` (``variant="graph"``: a plain
    ``tf.function``, TensorFlow's graph mode without XLA, as ``tf_keras``' ``model.fit``
    runs it; ``variant="fit"``: one ``tf_keras`` ``model.fit`` step of a small model, see
    :func:`_tf_keras_fit_step`, through ``triplet_tools.legacy.to_tf_keras``), JAX under
    ``jax.jit(jax.value_and_grad(...))``, PyTorch eagerly, or with ``variant="compiled"``
    under ``torch.compile`` (the loss; the gradient by autograd through the compiled graph).
    """

    def build(embeddings, labels):
        import keras

        loss = make_loss()
        backend = keras.backend.backend()
        versions = _versions(*distributions)
        if variant == "fit":
            from triplet_tools.legacy import to_tf_keras

            step, to_numpy, more = _tf_keras_fit_step(to_tf_keras(loss), embeddings, labels)
        elif backend == "tensorflow":
            jit_compile = variant != "graph"
            step, to_numpy, more = _tensorflow_step(loss, embeddings, labels, jit_compile)
        elif backend == "jax":
            import jax

            value_and_grad = jax.jit(jax.value_and_grad(lambda x, y: loss(y, x)))
            x, y = jax.numpy.asarray(embeddings), jax.numpy.asarray(labels)
            step = lambda: jax.block_until_ready(value_and_grad(x, y))  # noqa: E731
            to_numpy, more = np.asarray, _versions("jax", "jaxlib")
        else:
            if variant == "compiled":
                import torch

                loss = torch.compile(loss)
            step, to_numpy, more = _torch_step(loss, embeddings, labels)
        return step, to_numpy, {**versions, **more}

    return build


def ours(strategy, distance=DISTANCE, variant=None):
    """Our ``TripletLoss`` with ``negative_mining_strategy=strategy`` (see :func:`keras_loss`)."""

    def make_loss():
        from triplet_tools.losses import TripletLoss

        return TripletLoss(distance=distance, margin=MARGIN, negative_mining_strategy=strategy)

    return keras_loss(make_loss, variant)


#: ``TripletLoss`` per anchor: loss name -> (negative strategy, distance).
TRIPLETS = {
    "semi-hard": ("semi-hard", DISTANCE),
    "batch-hard": ("hard", DISTANCE),
    "semi-hard-l2n": ("semi-hard", "euclidean_norm"),
    "batch-hard-l2n": ("hard", "euclidean_norm"),
}
#: How a Keras loss runs besides the backend's default (see :func:`keras_loss`): worker case
#: suffix -> ``variant``.
VARIANTS = {"": None, "-compiled": "compiled", "-graph": "graph", "-fit": "fit"}


#: Our losses beyond ``TripletLoss`` (the SPEC's "Every pair, every triplet, and the pair-based
#: losses"): loss name -> (module, name, keyword arguments). Where a peer has the same loss,
#: its arguments match these (see :data:`SETTINGS`).
OURS = {
    "batch-all": (
        "triplet_tools",
        "triplet_batch_all_loss",
        {"margin": MARGIN, "metric": DISTANCE},
    ),
    "tfa-semihard": (
        "triplet_tools.tfa",
        "TripletSemiHardLoss",
        {"margin": MARGIN, "distance_metric": "angular"},
    ),
    "multi-similarity": ("triplet_tools.losses", "MultiSimilarityLoss", {}),
    "circle": ("triplet_tools.losses", "CircleLoss", {}),
    "soft-nn": ("triplet_tools.losses", "SoftNearestNeighborLoss", {}),
    "lifted": ("triplet_tools.tfa", "LiftedStructLoss", {}),
    "supcon": ("triplet_tools.losses", "SupConLoss", {}),
    "infonce": ("triplet_tools.losses", "InfoNCELoss", {}),
}
#: Losses over (query, document) pairs: their inputs are :func:`paired_inputs`.
PAIRED = ("infonce",)

#: What each loss is measured with, ours and the peers' alike (the report's header says it).
SETTINGS = {
    "semi-hard": f"`{DISTANCE}`, margin {MARGIN}",
    "batch-hard": f"`{DISTANCE}`, margin {MARGIN}",
    "semi-hard-l2n": f"`euclidean_norm` (0.2.3's default), margin {MARGIN}",
    "batch-hard-l2n": f"`euclidean_norm`, margin {MARGIN}",
    "batch-all": f"`{DISTANCE}`, margin {MARGIN}, mean over the triplets with a positive loss",
    "tfa-semihard": f"tfa's `angular` (= `{DISTANCE}`), margin {MARGIN}, every positive pair",
    "multi-similarity": "`cosine`, alpha 2, beta 40, epsilon 0.1, lambda (base) 0.5 "
    "(SPEC's and TF Similarity's defaults)",
    "circle": "`cosine`, gamma 80, margin 0.4 (the defaults everywhere)",
    "soft-nn": "`squared_euclidean`, temperature 1 (the defaults)",
    "lifted": "`euclidean`, margin 1 (tfa's defaults)",
    "supcon": "`cosine`, temperature 0.1 (the defaults; pytorch-metric-learning's too)",
    "infonce": "`cosine`, temperature 0.05 (= sentence-transformers' scale 20, the defaults); "
    "B queries, each with one positive document, no hard negative: B x B pairs",
}


def our_loss(loss, variant=None):
    """Our loss ``loss`` (a key of :data:`OURS`) built with its default or matched arguments."""
    module, name, kwargs = OURS[loss]
    build = keras_loss(lambda: _ours(module, name)(**kwargs), variant)
    return paired(build) if loss in PAIRED else build


def paired_inputs(embeddings, seed=1):
    """``(B, 2, D)`` (query, positive document) pairs from the ``(B, D)`` inputs: the
    queries are the inputs, each document a unit vector near its query.

    Example:

    >>> x, _ = make_inputs(4, 3, 2, seed=0)
    >>> pairs = paired_inputs(x)
    >>> pairs.shape, bool(np.array_equal(pairs[:, 0], x))
    ((4, 2, 3), True)
    """
    rng = np.random.default_rng(seed)
    documents = embeddings + 0.5 * rng.standard_normal(embeddings.shape, dtype=np.float32)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    return np.stack([embeddings, documents], axis=1)


def paired(build):
    """``build`` given :func:`paired_inputs` instead of the ``(B, D)`` inputs."""
    return lambda embeddings, labels: build(paired_inputs(embeddings), labels)


def keras_version():
    """The installed Keras version (for the ``keras.losses.Circle`` row's label)."""
    return _versions("keras").get("keras", "(not installed)")


def keras_circle():
    """``keras.losses.Circle()`` (its defaults: gamma 80, margin 0.4) on the Keras backend."""

    def make_loss():
        import keras

        return keras.losses.Circle()

    return keras_loss(make_loss, distributions=("keras",))


#: Anchors per block tried for the floor; each must divide ``B`` (else one block of all).
FLOOR_ROWS = (256, 512, 1024, 2048)
#: Anchors the block sizes are compared on (against all ``B`` references) at large ``B``.
FLOOR_CALIBRATION_ROWS = 4096


def floor(backend):
    """The floor: the forward ``B x B x D`` product at the backend's best blocked rate.

    An exact miner never writes the whole ``B x B`` matrix, so neither does the floor: per
    block of anchors, ``max(block @ x.T, axis=1)``, the product reduced while it is in
    cache (an unblocked ``x @ x.T`` that writes 64 MB at ``B = 4096`` is slower, and a loss
    could beat it). The block size is the fastest of :data:`FLOOR_ROWS`, compared on
    :data:`FLOOR_CALIBRATION_ROWS` anchors; no loss that mines exactly can take less than
    this one product, so no row of the table can read below 1x the floor.
    """

    def build(embeddings, labels):
        products, to_numpy, versions = _BLOCKED_PRODUCTS[backend]()
        batch = len(embeddings)
        sample = embeddings[: min(batch, FLOOR_CALIBRATION_ROWS)]
        candidates = [rows for rows in FLOOR_ROWS if rows < batch and batch % rows == 0]
        best_rows, best_s = batch, float("inf")
        for rows in candidates or [batch]:
            calibrate = products(sample, embeddings, rows)
            calibrate()  # compile
            took = min(_time_once(calibrate) for _ in range(2))
            if took < best_s:
                best_rows, best_s = rows, took
        product = products(embeddings, embeddings, best_rows)

        def step():
            return (product(),)

        step.notes = {"rows_per_block": best_rows}
        return step, to_numpy, versions

    return build


def _time_once(step):
    tick = time.perf_counter()
    step()
    return time.perf_counter() - tick


def _tensorflow_products():
    import tensorflow as tf

    def products(anchors, references, rows):
        a, r = tf.constant(anchors), tf.constant(references)

        @tf.function(jit_compile=True)
        def row_maxima(a, r):
            blocks = tf.reshape(a, (-1, rows, a.shape[1]))
            maxima = tf.map_fn(
                lambda b: tf.reduce_max(tf.matmul(b, r, transpose_b=True), axis=1), blocks
            )
            return tf.reshape(maxima, (-1,))

        return lambda: row_maxima(a, r)

    return products, (lambda t: t.numpy()), _versions("tensorflow")


def _jax_products():
    import jax

    def products(anchors, references, rows):
        a, r = jax.numpy.asarray(anchors), jax.numpy.asarray(references)

        @jax.jit
        def row_maxima(a, r):
            blocks = a.reshape(-1, rows, a.shape[1])
            return jax.lax.map(lambda b: (b @ r.T).max(axis=1), blocks).reshape(-1)

        return lambda: jax.block_until_ready(row_maxima(a, r))

    return products, np.asarray, _versions("jax", "jaxlib")


def _torch_products():
    import torch

    def products(anchors, references, rows):
        a, r = torch.from_numpy(anchors), torch.from_numpy(references)
        return lambda: torch.cat([(block @ r.T).amax(dim=1) for block in a.split(rows)])

    return products, (lambda t: t.numpy()), _versions("torch")


_BLOCKED_PRODUCTS = {
    "tensorflow": _tensorflow_products,
    "jax": _jax_products,
    "torch": _torch_products,
}


def triplet_tools_023(embeddings, labels):
    """triplet-tools 0.2.3 ``triplet_batch_semihard_loss`` in a TF graph (``tf.function``)."""
    import triplet_tools

    _check_installed_copy(triplet_tools, "triplet-tools", "0.2.3")
    loss = triplet_tools.triplet_batch_semihard_loss(margin=MARGIN, metric=DISTANCE)
    step, to_numpy, versions = _tensorflow_step(loss, embeddings, labels, jit_compile=False)
    return step, to_numpy, {**versions, **_versions("triplet-tools")}


def triplet_tools_023_fit(embeddings, labels):
    """triplet-tools 0.2.3 ``triplet_batch_semihard_loss`` in a ``tf_keras`` ``model.fit`` step."""
    import triplet_tools

    _check_installed_copy(triplet_tools, "triplet-tools", "0.2.3")
    loss = triplet_tools.triplet_batch_semihard_loss(margin=MARGIN, metric=DISTANCE)
    step, to_numpy, versions = _tf_keras_fit_step(loss, embeddings, labels)
    return step, to_numpy, {**versions, **_versions("triplet-tools")}


def tf_similarity(loss_name, fit=False):
    """TF Similarity's ``PNLoss`` / ``TripletLoss`` (semi-hard) under ``tf_keras``, in a graph
    (``fit=True``: in a ``tf_keras`` ``model.fit`` step, see :func:`_tf_keras_fit_step`)."""

    def build(embeddings, labels):
        from tensorflow_similarity import losses

        loss = getattr(losses, loss_name)(
            distance=DISTANCE, negative_mining_strategy="semi-hard", margin=MARGIN
        )
        if fit:
            step, to_numpy, versions = _tf_keras_fit_step(loss, embeddings, labels)
        else:
            step, to_numpy, versions = _tensorflow_step(loss, embeddings, labels, jit_compile=False)
        return step, to_numpy, {**versions, **_versions("tensorflow-similarity", "tf-keras")}

    return build


def metric_learning(miner_name):
    """pytorch-metric-learning: a miner followed by ``TripletMarginLoss``, eager PyTorch.

    ``batch-hard``: ``BatchHardMiner``; ``batch-semihard``: ``BatchEasyHardMiner`` with the
    hardest positive and a semi-hard negative per anchor; ``triplet-margin-semihard``:
    ``TripletMarginMiner(type_of_triplets="semihard")``, which enumerates every triplet (cubic).
    """

    def build(embeddings, labels):
        from pytorch_metric_learning import distances, losses, miners

        distance = distances.CosineSimilarity()
        if miner_name == "batch-hard":
            miner = miners.BatchHardMiner(distance=distance)
        elif miner_name == "batch-semihard":
            miner = miners.BatchEasyHardMiner(
                pos_strategy="hard", neg_strategy="semihard", distance=distance
            )
        else:
            miner = miners.TripletMarginMiner(
                margin=MARGIN, type_of_triplets="semihard", distance=distance
            )
        loss = losses.TripletMarginLoss(margin=MARGIN, distance=distance)

        def loss_fn(y, x):
            return loss(x, y, miner(x, y))

        step, to_numpy, versions = _torch_step(loss_fn, embeddings, labels)
        return step, to_numpy, {**versions, **_versions("pytorch-metric-learning")}

    return build


def tf_similarity_pair(loss_name):
    """TF Similarity's pair-based losses with their defaults, under ``tf_keras``, in a graph."""

    def build(embeddings, labels):
        from tensorflow_similarity import losses

        loss = getattr(losses, loss_name)()
        step, to_numpy, versions = _tensorflow_step(loss, embeddings, labels, jit_compile=False)
        return step, to_numpy, {**versions, **_versions("tensorflow-similarity", "tf-keras")}

    return build


def metric_learning_loss(loss_name):
    """pytorch-metric-learning without a per-anchor miner, eager PyTorch.

    ``all-triplets``: ``TripletMarginLoss`` alone, every triplet of the batch (its default
    ``AvgNonZeroReducer``); ``multi-similarity``: ``MultiSimilarityMiner(epsilon=0.1)`` then
    ``MultiSimilarityLoss(alpha=2, beta=40, base=0.5)`` (TF Similarity's defaults, the
    miner being its pair selection); ``circle``: ``CircleLoss(m=0.4, gamma=80)``;
    ``supcon``: ``SupConLoss(temperature=0.1)`` (cosine).
    """

    def build(embeddings, labels):
        from pytorch_metric_learning import distances, losses, miners

        miner = None
        if loss_name == "all-triplets":
            loss = losses.TripletMarginLoss(margin=MARGIN, distance=distances.CosineSimilarity())
        elif loss_name == "multi-similarity":
            miner = miners.MultiSimilarityMiner(epsilon=0.1)
            loss = losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)
        elif loss_name == "supcon":
            loss = losses.SupConLoss(temperature=0.1)
        else:
            loss = losses.CircleLoss(m=0.4, gamma=80.0)

        def loss_fn(y, x):
            return loss(x, y, miner(x, y)) if miner is not None else loss(x, y)

        step, to_numpy, versions = _torch_step(loss_fn, embeddings, labels)
        return step, to_numpy, {**versions, **_versions("pytorch-metric-learning")}

    return build


def tensorflow_addons(loss_name):
    """tensorflow-addons 0.23 (TensorFlow 2.15, Keras 2) in a TF graph (``tf.function``).

    ``semihard``: ``TripletSemiHardLoss(margin, distance_metric="angular")``, every positive
    pair; ``lifted``: ``LiftedStructLoss()`` (``lifted_struct_loss``, euclidean, margin 1).
    """

    def build(embeddings, labels):
        import tensorflow_addons as tfa

        if loss_name == "semihard":
            loss = tfa.losses.TripletSemiHardLoss(margin=MARGIN, distance_metric="angular")
        else:
            loss = tfa.losses.LiftedStructLoss(margin=1.0)
        step, to_numpy, versions = _tensorflow_step(loss, embeddings, labels, jit_compile=False)
        more = _versions("tensorflow-cpu", "tensorflow-addons")
        return step, to_numpy, {**versions, **more}

    return build


def sentence_transformers(loss_name):
    """sentence-transformers' batch-level triplet losses, called on the embeddings, eager PyTorch.

    ``BatchAllTripletLoss.batch_all_triplet_loss`` / ``BatchSemiHardTripletLoss
    .batch_semi_hard_triplet_loss`` with its cosine distance and the margin: the losses take a
    model only to embed text, so a stand-in module is passed and no model is ever loaded.
    """

    def build(embeddings, labels):
        import torch

        try:  # sentence-transformers >= 6 moved them; the old path warns
            from sentence_transformers.sentence_transformer import losses
        except ImportError:
            from sentence_transformers import losses

        distance = losses.BatchHardTripletLossDistanceFunction.cosine_distance
        cls = {
            "batch-all": losses.BatchAllTripletLoss,
            "batch-semihard": losses.BatchSemiHardTripletLoss,
        }[loss_name]
        loss = cls(torch.nn.Identity(), distance_metric=distance, margin=MARGIN)
        batch_loss = (
            loss.batch_all_triplet_loss
            if loss_name == "batch-all"
            else loss.batch_semi_hard_triplet_loss
        )
        step, to_numpy, versions = _torch_step(batch_loss, embeddings, labels)
        return step, to_numpy, {**versions, **_versions("sentence-transformers")}

    return build


def sentence_transformers_mnrl(embeddings, labels):
    """sentence-transformers' ``MultipleNegativesRankingLoss`` (defaults: cosine, scale 20) on
    :func:`paired_inputs`, through ``compute_loss_from_embeddings`` (``model=None``: no
    model is built), eager PyTorch."""
    try:  # sentence-transformers >= 6 moved it; the old path warns
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses

    loss = losses.MultipleNegativesRankingLoss(None)

    def loss_fn(y, x):
        return loss.compute_loss_from_embeddings([x[:, 0], x[:, 1]], y)

    step, to_numpy, versions = _torch_step(loss_fn, paired_inputs(embeddings), labels)
    return step, to_numpy, {**versions, **_versions("sentence-transformers")}


def _check_installed_copy(module, distribution, version):
    # triplet-tools 0.2.3 shares our import name: make sure the peer's copy was imported.
    found = importlib.metadata.version(distribution)
    if found != version or not os.path.abspath(module.__file__).startswith(sys.prefix):
        raise RuntimeError(
            f"expected {distribution}=={version} from {sys.prefix}; imported {found} "
            f"from {module.__file__}"
        )


#: Case name -> builder(embeddings, labels) -> (step, to_numpy, versions).
def row_function_loss():
    """The contrastive loss that ``tests/test_pair_toolkit.py`` writes as a value-only row
    function (issue #26: a new pair loss in a few lines holds B = 65,536 like the built-in
    ones), margin 0.5, ``cosine``."""

    def build():
        tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
        sys.path.insert(0, tests)
        from test_pair_toolkit import Contrastive

        return Contrastive(margin=0.5, distance=DISTANCE)

    return keras_loss(build)


CASES = {
    **{
        f"ours-{loss}{suffix}": ours(strategy, distance, variant)
        for loss, (strategy, distance) in TRIPLETS.items()
        for suffix, variant in VARIANTS.items()
    },
    **{
        f"ours-{loss}{suffix}": our_loss(loss, variant)
        for loss in OURS
        for suffix, variant in VARIANTS.items()
    },
    "ours-contrastive-row": row_function_loss(),
    "keras-circle": keras_circle(),
    "floor-tensorflow": floor("tensorflow"),
    "floor-jax": floor("jax"),
    "floor-torch": floor("torch"),
    "triplet-tools-0.2.3": triplet_tools_023,
    "tfsim-pn": tf_similarity("PNLoss"),
    "tfsim-triplet": tf_similarity("TripletLoss"),
    "triplet-tools-0.2.3-fit": triplet_tools_023_fit,
    "tfsim-triplet-fit": tf_similarity("TripletLoss", fit=True),
    "pml-batch-hard": metric_learning("batch-hard"),
    "pml-batch-semihard": metric_learning("batch-semihard"),
    "pml-triplet-margin-semihard": metric_learning("triplet-margin-semihard"),
    "pml-all-triplets": metric_learning_loss("all-triplets"),
    "pml-multi-similarity": metric_learning_loss("multi-similarity"),
    "pml-circle": metric_learning_loss("circle"),
    "pml-supcon": metric_learning_loss("supcon"),
    "tfsim-multi-similarity": tf_similarity_pair("MultiSimilarityLoss"),
    "tfsim-circle": tf_similarity_pair("CircleLoss"),
    "tfsim-soft-nn": tf_similarity_pair("SoftNearestNeighborLoss"),
    "tfa-semihard": tensorflow_addons("semihard"),
    "tfa-lifted": tensorflow_addons("lifted"),
    "st-batch-all": sentence_transformers("batch-all"),
    "st-batch-semihard": sentence_transformers("batch-semihard"),
    "st-mnrl": sentence_transformers_mnrl,
}


def memory_mb(pid="self"):
    """``{"VmRSS": ..., "VmHWM": ...}`` of a process in MiB (VmHWM: its peak), ``{}`` if unknown.

    Example:

    >>> sorted(memory_mb()) in (["VmHWM", "VmRSS"], [])
    True
    """
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return found


def measure(case, batch, dim=128, per_class=8, seed=0, repeats=5, budget_s=float("inf")):
    """Builds ``case`` and times its step; returns the result dict.

    Args:
        case: a key of :data:`CASES`.
        batch, dim, per_class, seed: the inputs (see :func:`make_inputs`).
        repeats: timed calls after the first one (more, up to :data:`MAX_CALLS`, until
            they add up to :data:`MIN_TIMED_S` seconds).
        budget_s: stop repeating once the next call would likely end past this many
            seconds since the start (at least one timed call is always made).

    Returns:
        A dict with ``median_s``, ``min_s``, ``times_s``, ``first_call_s``,
        ``setup_rss_mb`` (after imports and inputs), ``peak_rss_mb`` (``VmHWM``, the
        process's peak), ``loss``, ``grad_finite``, ``versions`` and ``notes`` (what the
        case chose, e.g. the floor's block size), memory in MiB.
    """
    start = time.perf_counter()
    embeddings, labels = make_inputs(batch, dim, per_class, seed)
    step, to_numpy, versions = CASES[case](embeddings, labels)
    setup_rss_mb = memory_mb().get("VmRSS")

    tick = time.perf_counter()
    outputs = step()
    first_call_s = time.perf_counter() - tick
    values = [to_numpy(t) for t in outputs]
    outputs = None

    times = []
    # At least `repeats` calls, and for fast steps enough calls to fill MIN_TIMED_S: five
    # sub-millisecond calls are too few for a stable median.
    while len(times) < repeats or (sum(times) < MIN_TIMED_S and len(times) < MAX_CALLS):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
        if time.perf_counter() - start + min(times) > budget_s:
            break
    return {
        "status": "ok",
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "first_call_s": first_call_s,
        "setup_rss_mb": setup_rss_mb,
        "peak_rss_mb": memory_mb().get("VmHWM"),
        # For the floor, "loss" is the mean of the product and there is no gradient.
        "loss": float(np.mean(values[0])),
        "grad_finite": bool(np.all(np.isfinite(values[1]))) if len(values) > 1 else None,
        "versions": versions,
        # What the case chose while it was built (the floor: its block size).
        "notes": getattr(step, "notes", {}),
    }


def main(argv=None):
    """Runs one measurement and prints ``BENCH_RESULT {json}``; exit status 0 unless it crashed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=float("inf"))
    args = parser.parse_args(argv)
    result = run_measurement(
        args.case, args.batch, args.dim, args.per_class, args.seed, args.repeats, args.budget
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_measurement(case, *args):
    """:func:`measure` (same arguments), a failure turned into its result dict: ``status``
    ``missing`` (this checkout lacks the loss), ``oom`` or ``error``, with ``detail``."""
    try:
        result = measure(case, *args)
    except NotAvailable as error:
        result = {"status": "missing", "detail": str(error)[-600:]}
    except MemoryError as error:
        result = {"status": "oom", "detail": f"MemoryError: {error}"[:300]}
    except Exception as error:  # noqa: BLE001  (reported, never dropped)
        detail = f"{type(error).__name__}: {error}"
        out_of_memory = any(
            words in detail.lower()
            for words in (
                "out of memory",
                "can't allocate memory",
                "resourceexhausted",
                "resource_exhausted",
                "failed to allocate",
            )
        )
        result = {"status": "oom" if out_of_memory else "error", "detail": detail[-600:]}
    return result


if __name__ == "__main__":
    sys.exit(main())
