"""One benchmark measurement, run in its own process by :mod:`triplet_tools.benchmark`.

This file is executed by path with ``python -I`` -- by the project's environment for our
losses and the floor, and by each peer's own virtual environment for the peers -- so it
imports nothing but the standard library and NumPy at module level, and only the library
under test inside its case. It prints one line, ``BENCH_RESULT {json}``, and exits.

```
inputs  = fixed-seed float32 embeddings (B, D) and int32 labels, `per_class` rows per class
step    = loss + gradient with respect to the embeddings (the floor: one B x B x D product)
result  = first call (trace + compile + run), then the median of `repeats` timed calls, or of
          as many as fill one second (at most 2000) when the step is fast
```

Example (from a source checkout, in the project's environment)::

    KERAS_BACKEND=jax python -I src/triplet_tools/bench_worker.py \\
        --case ours-semi-hard --batch 256
"""

import argparse
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
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
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


def ours(strategy, torch_compile=False):
    """Our ``TripletLoss`` on the Keras backend named by ``KERAS_BACKEND``.

    TensorFlow runs under ``tf.function(jit_compile=True)``, JAX under
    ``jax.jit(jax.value_and_grad(...))``, PyTorch eagerly, or with ``torch_compile`` under
    ``torch.compile`` (the loss; the gradient by autograd through the compiled graph).
    """

    def build(embeddings, labels):
        import keras
        from triplet_tools.losses import TripletLoss

        loss = TripletLoss(distance=DISTANCE, margin=MARGIN, negative_mining_strategy=strategy)
        backend = keras.backend.backend()
        versions = _versions("triplet-tools", "keras")
        if backend == "tensorflow":
            step, to_numpy, more = _tensorflow_step(loss, embeddings, labels, jit_compile=True)
        elif backend == "jax":
            import jax

            value_and_grad = jax.jit(jax.value_and_grad(lambda x, y: loss(y, x)))
            x, y = jax.numpy.asarray(embeddings), jax.numpy.asarray(labels)
            step = lambda: jax.block_until_ready(value_and_grad(x, y))  # noqa: E731
            to_numpy, more = np.asarray, _versions("jax", "jaxlib")
        else:
            if torch_compile:
                import torch

                loss = torch.compile(loss)
            step, to_numpy, more = _torch_step(loss, embeddings, labels)
        return step, to_numpy, {**versions, **more}

    return build


def floor(backend):
    """The floor: one forward ``B x B x D`` product ``x @ x.T``, no loss and no backward."""

    def build(embeddings, labels):
        if backend == "tensorflow":
            import tensorflow as tf

            x = tf.constant(embeddings)
            product = tf.function(lambda x: tf.matmul(x, x, transpose_b=True), jit_compile=True)
            return (lambda: (product(x),)), (lambda t: t.numpy()), _versions("tensorflow")
        if backend == "jax":
            import jax

            x = jax.numpy.asarray(embeddings)
            product = jax.jit(lambda x: x @ x.T)
            step = lambda: (jax.block_until_ready(product(x)),)  # noqa: E731
            return step, np.asarray, _versions("jax", "jaxlib")
        import torch

        x = torch.from_numpy(embeddings)
        return (lambda: (x @ x.T,)), (lambda t: t.numpy()), _versions("torch")

    return build


def triplet_tools_023(embeddings, labels):
    """triplet-tools 0.2.3 ``triplet_batch_semihard_loss`` in a TF graph (``tf.function``)."""
    import triplet_tools

    _check_installed_copy(triplet_tools, "triplet-tools", "0.2.3")
    loss = triplet_tools.triplet_batch_semihard_loss(margin=MARGIN, metric=DISTANCE)
    step, to_numpy, versions = _tensorflow_step(loss, embeddings, labels, jit_compile=False)
    return step, to_numpy, {**versions, **_versions("triplet-tools")}


def tf_similarity(loss_name):
    """TF Similarity's ``PNLoss`` / ``TripletLoss`` (semi-hard) under ``tf_keras``, in a graph."""

    def build(embeddings, labels):
        from tensorflow_similarity import losses

        loss = getattr(losses, loss_name)(
            distance=DISTANCE, negative_mining_strategy="semi-hard", margin=MARGIN
        )
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


def _check_installed_copy(module, distribution, version):
    # triplet-tools 0.2.3 shares our import name: make sure the peer's copy was imported.
    found = importlib.metadata.version(distribution)
    if found != version or not os.path.abspath(module.__file__).startswith(sys.prefix):
        raise RuntimeError(
            f"expected {distribution}=={version} from {sys.prefix}; imported {found} "
            f"from {module.__file__}"
        )


#: Case name -> builder(embeddings, labels) -> (step, to_numpy, versions).
CASES = {
    "ours-semi-hard": ours("semi-hard"),
    "ours-batch-hard": ours("hard"),
    "ours-semi-hard-compiled": ours("semi-hard", torch_compile=True),
    "ours-batch-hard-compiled": ours("hard", torch_compile=True),
    "floor-tensorflow": floor("tensorflow"),
    "floor-jax": floor("jax"),
    "floor-torch": floor("torch"),
    "triplet-tools-0.2.3": triplet_tools_023,
    "tfsim-pn": tf_similarity("PNLoss"),
    "tfsim-triplet": tf_similarity("TripletLoss"),
    "pml-batch-hard": metric_learning("batch-hard"),
    "pml-batch-semihard": metric_learning("batch-semihard"),
    "pml-triplet-margin-semihard": metric_learning("triplet-margin-semihard"),
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
        process's peak), ``loss``, ``grad_finite`` and ``versions``, memory in MiB.
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
    try:
        result = measure(
            args.case, args.batch, args.dim, args.per_class, args.seed, args.repeats, args.budget
        )
    except MemoryError as error:
        result = {"status": "oom", "detail": f"MemoryError: {error}"[:300]}
    except Exception as error:  # noqa: BLE001  (reported, never dropped)
        detail = f"{type(error).__name__}: {error}"
        out_of_memory = any(
            words in detail.lower()
            for words in ("out of memory", "can't allocate memory", "resourceexhausted",
                          "resource_exhausted", "failed to allocate")
        )
        result = {"status": "oom" if out_of_memory else "error", "detail": detail[-600:]}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
