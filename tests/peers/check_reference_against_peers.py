"""Checks the NumPy reference of SPEC's last part (``tests/reference_pairs.py``) against the
real peers wherever SPEC says that we agree with them. Not part of the test suite (pytest
does not collect this file): each peer runs in its own environment.

- ``tfa``: ``tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0``;
- ``tfsim``: ``bench/peers/tf-similarity-0.17.1.txt`` under ``bench/peers/constraints.txt``,
  run with ``TF_USE_LEGACY_KERAS=1``;
- ``pml``: ``torch==2.13.0 pytorch-metric-learning==2.9.0``;
- ``keras``: the project's own environment (``keras.losses.circle``), any backend.

    python tests/peers/check_reference_against_peers.py tfa   # or tfsim, pml, keras

Each line gives the peer's value, ours (the reference's) and the largest relative
difference of values and of gradients with respect to the raw embeddings, on random batches
in which every anchor has a positive and a negative (where SPEC claims equality). Lines
marked ``differs (SPEC)`` are the differences SPEC documents; they are printed to show their
size. The script exits non-zero when a claimed equality does not hold within 1e-5 relative
(values) / 1e-4 relative (gradients; the peers compute in float32 where they cannot do
float64).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import reference_pairs as rp

VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-4
FAILURES = []


def batches():
    """Random batches where every anchor is valid: P x K, uneven class sizes, one 2-D."""
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        yield f"4x3/s{seed}", np.tile(np.arange(4), 3), rng.normal(size=(12, 4))
        labels = rng.permutation(np.repeat([0, 1, 2, 3], [2, 3, 5, 2]))
        yield f"uneven/s{seed}", labels, rng.normal(size=(12, 4))


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))


def report(peer, what, batch, peer_value, our_value, peer_grad=None, our_grad=None, claimed=True):
    value_gap = _relative(peer_value, our_value)
    grad_gap = None if peer_grad is None else _relative(peer_grad, our_grad)
    ok = value_gap <= VALUE_RTOL and (grad_gap is None or grad_gap <= GRAD_RTOL)
    if claimed and not ok:
        FAILURES.append((peer, what, batch))
    tag = ("ok" if ok else "MISMATCH") if claimed else "differs (SPEC)"
    shown_peer = np.asarray(peer_value, np.float64).reshape(-1)[:4]
    shown_ours = np.asarray(our_value, np.float64).reshape(-1)[:4]
    grad_text = "" if grad_gap is None else f"  grad rel {grad_gap:.1e}"
    print(
        f"{peer:5s} {what:44s} {batch:10s} peer {np.array2string(shown_peer, precision=6)}"
        f" ours {np.array2string(shown_ours, precision=6)}  value rel {value_gap:.1e}"
        f"{grad_text}  {tag}"
    )


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- tensorflow-addons 0.23 --------------------------------------------------------------------


def check_tfa():
    import tensorflow as tf
    import tensorflow_addons as tfa

    def tf_value_and_grad(fn, x, dtype):
        x = tf.constant(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return value.numpy(), tape.gradient(value, x).numpy()

    # tfa's losses build float32 masks and constants: they run in float32 only.
    for batch, labels, x in batches():
        y = tf.constant(labels, tf.int32)
        for metric in ("L2", "squared-L2", "angular"):
            for margin in (1.0, 0.3):
                value, grad = tf_value_and_grad(
                    lambda t, y=y, m=margin, d=metric: tfa.losses.triplet_semihard_loss(y, t, m, d),
                    x,
                    tf.float32,
                )
                want = rp.tfa_semihard_loss(labels, x, margin, metric)
                want_grad = rp.triplet_gradient(
                    labels,
                    x,
                    distance_name=rp.TFA_DISTANCES[metric],
                    positive="all",
                    negative="semi-hard",
                    margin=margin,
                )
                report(
                    "tfa",
                    f"TripletSemiHardLoss({margin}, {metric!r}) [float32]",
                    batch,
                    value,
                    want,
                    grad,
                    want_grad,
                )
            for soft in (False, True):
                value, grad = tf_value_and_grad(
                    lambda t, y=y, s=soft, d=metric: tfa.losses.triplet_hard_loss(y, t, 1.0, s, d),
                    x,
                    tf.float32,
                )
                want = rp.tfa_hard_loss(labels, x, 1.0, soft, metric)
                want_grad = rp.triplet_gradient(
                    labels,
                    x,
                    distance_name=rp.TFA_DISTANCES[metric],
                    positive="hard",
                    negative="hard",
                    soft_margin=soft,
                )
                report(
                    "tfa",
                    f"TripletHardLoss(soft={soft}, {metric!r}) [float32]",
                    batch,
                    value,
                    want,
                    grad,
                    want_grad,
                )
        for margin in (1.0, 0.5):
            value, grad = tf_value_and_grad(
                lambda t, y=y, m=margin: tfa.losses.lifted_struct_loss(y, t, m), x, tf.float32
            )
            want = rp.pair_loss("lifted_struct", labels, x, margin=margin)
            want_grad = rp.pair_gradient(
                "lifted_struct", labels, x, distance_name="euclidean", margin=margin
            )
            report(
                "tfa",
                f"lifted_struct_loss(margin={margin}) [float32]",
                batch,
                value,
                want,
                grad,
                want_grad,
            )


# --- TensorFlow Similarity 0.17.1 ----------------------------------------------------------------


def check_tfsim():
    import tensorflow as tf
    from tensorflow_similarity.distances import distance_canonicalizer
    from tensorflow_similarity.losses.circle_loss import circle_loss
    from tensorflow_similarity.losses.multisim_loss import multisimilarity_loss
    from tensorflow_similarity.losses.softnn_loss import soft_nn_loss

    def per_anchor(fn, labels, x, normalise):
        """TF Similarity's per-anchor values and the gradient of their sum over valid anchors
        (SPEC's default reduction divides by the number of valid anchors: all of them here)."""
        y = tf.constant(labels, tf.int32)
        x = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            e = tf.math.l2_normalize(x, axis=1) if normalise else x
            values = tf.reshape(fn(y, e, y, e), [-1])
            mean = tf.reduce_mean(values)
        return values.numpy(), tape.gradient(mean, x).numpy()

    cosine, sql2 = distance_canonicalizer("cosine"), distance_canonicalizer("sql2")
    for batch, labels, x in batches():
        for kwargs in ({}, {"alpha": 1.0, "beta": 20.0, "epsilon": 0.3, "lmda": 0.6}):
            values, grad = per_anchor(
                lambda *a, kw=kwargs: multisimilarity_loss(*a, distance=cosine, **kw),
                labels,
                x,
                True,
            )
            totals, counts = rp.multi_similarity_per_anchor(labels, x, **kwargs)
            valid = counts > 0
            want_grad = (
                rp.pair_gradient("multi_similarity", labels, x, distance_name="cosine", **kwargs)
                if valid.all()
                else None
            )
            report(
                "tfsim",
                f"multisimilarity_loss({kwargs or 'defaults'}) [float32]",
                f"{batch}:{int(valid.sum())}v",
                values,
                totals,
                grad if valid.all() else None,
                want_grad,
            )
        for temperature in (1.0, 0.5):
            values, grad = per_anchor(
                lambda *a, t=temperature: soft_nn_loss(*a, distance=sql2, temperature=t),
                labels,
                x,
                False,
            )
            totals, _ = rp.soft_nearest_neighbor_per_anchor(labels, x, temperature=temperature)
            # SPEC: TF Similarity computes -log(1e-9 + exp(-l_a)) on valid anchors.
            saturated = -np.log(1e-9 + np.exp(-totals))
            want_grad = rp.numerical_gradient(
                lambda d, labels=labels, t=temperature: float(
                    np.mean(
                        -np.log(
                            1e-9
                            + np.exp(
                                -rp.soft_nearest_neighbor_per_anchor(
                                    labels, None, temperature=t, distances=d
                                )[0]
                            )
                        )
                    )
                ),
                x,
                "squared_euclidean",
            )
            report(
                "tfsim",
                f"soft_nn_loss(T={temperature}) = -log(1e-9+e^-l) [float32]",
                batch,
                values,
                saturated,
                grad,
                want_grad,
            )
            report(
                "tfsim",
                f"soft_nn_loss(T={temperature}) vs our l_a",
                batch,
                values,
                totals,
                claimed=False,
            )
        values, _ = per_anchor(lambda *a: circle_loss(*a, distance=cosine), labels, x, True)
        totals, _ = rp.circle_per_anchor(labels, x)
        report("tfsim", "circle_loss (two log(1+sum) terms)", batch, values, totals, claimed=False)
    # Saturation: TF Similarity's -log(1e-9 + exp(-l)) stops near 20.7; ours does not.
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.1, 0.0], [3.1, 0.0]])
    values, _ = per_anchor(
        lambda *a: soft_nn_loss(*a, distance=sql2, temperature=0.05), labels, x, False
    )
    totals, _ = rp.soft_nearest_neighbor_per_anchor(labels, x, temperature=0.05)
    report("tfsim", "soft_nn_loss(T=0.05) far positives", "4 points", values, totals, claimed=False)


# --- pytorch-metric-learning 2.9.0 ---------------------------------------------------------------


def check_pml():
    import torch
    from pytorch_metric_learning.losses import CircleLoss

    for batch, labels, x in batches():
        for gamma, margin in ((80.0, 0.4), (32.0, 0.25)):
            t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            value = CircleLoss(m=margin, gamma=gamma)(t, torch.tensor(labels))
            (grad,) = torch.autograd.grad(value, t)
            want = rp.pair_loss("circle", labels, x, gamma=gamma, margin=margin)
            want_grad = rp.pair_gradient(
                "circle", labels, x, distance_name="cosine", gamma=gamma, margin=margin
            )
            report(
                "pml",
                f"CircleLoss(m={margin}, gamma={gamma}) value+grad",
                batch,
                value.item(),
                want,
                grad.numpy(),
                want_grad,
            )


# --- keras.losses.circle -------------------------------------------------------------------------


def check_keras():
    import keras

    backend = keras.backend.backend()
    for batch, labels, x in batches():
        for gamma, margin in ((80.0, 0.4), (32.0, 0.25)):
            unit = _unit_rows(x).astype("float32")
            values = keras.ops.convert_to_numpy(
                keras.losses.circle(labels, unit, gamma=gamma, margin=margin)
            )
            totals, _ = rp.circle_per_anchor(labels, x, gamma=gamma, margin=margin)
            report(
                "keras",
                f"losses.circle(gamma={gamma}, margin={margin}) [{backend}]",
                batch,
                values,
                totals,
            )
    # Gradients differ: Keras differentiates through alpha. Shown on one batch, against the
    # reference's central differences with alpha free (what Keras does) and held (SPEC).
    _, labels, x = next(iter(batches()))
    free = rp.numerical_gradient(
        lambda d: rp.reduce(*rp.circle_per_anchor(labels, None, distances=d)), x, "cosine"
    )
    held = rp.pair_gradient("circle", labels, x, distance_name="cosine")
    keras_grad = _keras_circle_gradient(labels, x)
    report("keras", "circle gradient vs alpha differentiated", "4x3/s0", keras_grad, free)
    report(
        "keras",
        "circle gradient vs alpha under stop_gradient",
        "4x3/s0",
        keras_grad,
        held,
        claimed=False,
    )


def _keras_circle_gradient(labels, x):
    import keras

    backend = keras.backend.backend()

    def fn(t):
        unit = t / keras.ops.sqrt(keras.ops.sum(t * t, axis=1, keepdims=True))
        return keras.ops.mean(keras.losses.circle(labels, unit))

    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(np.asarray(x, np.float32)))
    if backend == "torch":
        import torch

        t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        (grad,) = torch.autograd.grad(fn(t), t)
        return grad.numpy()
    import tensorflow as tf

    t = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(t)
        value = fn(t)
    return tape.gradient(value, t).numpy()


SECTIONS = {"tfa": check_tfa, "tfsim": check_tfsim, "pml": check_pml, "keras": check_keras}

if __name__ == "__main__":
    names = sys.argv[1:] or list(SECTIONS)
    for name in names:
        SECTIONS[name]()
    if FAILURES:
        print(f"{len(FAILURES)} claimed equalities failed: {FAILURES}")
        sys.exit(1)
    print("every claimed equality holds")
