"""Backend-specific helpers for the tests: gradients, compilation, conversion.

The library never imports a backend; the tests do, to differentiate and compile.
"""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def to_numpy(x):
    if BACKEND == "torch" and hasattr(x, "detach"):
        x = x.detach()
    return np.asarray(keras.ops.convert_to_numpy(x))


def tensor(x, dtype=None):
    return keras.ops.convert_to_tensor(np.asarray(x) if dtype is None else np.asarray(x, dtype))


def value_and_grad(fn, x):
    """Returns ``(fn(x), d fn / d x)`` as NumPy for a scalar-valued ``fn`` of one tensor."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return to_numpy(value), to_numpy(tape.gradient(value, x))
    if BACKEND == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(keras.ops.convert_to_tensor(x))
        return to_numpy(value), to_numpy(grad)
    import torch

    x = keras.ops.convert_to_tensor(x).detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return to_numpy(value.detach()), to_numpy(grad)


#: ``compile_it`` values for a test run eager and compiled (torch: ``compiled`` is eager,
#: so once).
COMPILE_MODES = [False] if BACKEND == "torch" else [False, True]
COMPILE_IDS = ["eager"] if BACKEND == "torch" else ["eager", "compiled"]


def compiled(fn):
    """``fn`` under the backend's compiler: XLA for TensorFlow and JAX, eager for torch."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def compiled_value_and_grad(fn, x):
    """Value and gradient computed inside one compiled function."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return value, tape.gradient(value, x)

        value, grad = step(tf.convert_to_tensor(x))
        return to_numpy(value), to_numpy(grad)
    if BACKEND == "jax":
        import jax

        value, grad = jax.jit(jax.value_and_grad(fn))(keras.ops.convert_to_tensor(x))
        return to_numpy(value), to_numpy(grad)
    return value_and_grad(fn, x)
