"""``keras.ops``, with a shorter path for the few ops every eager PyTorch call runs.

Under TensorFlow and JAX the losses are traced once, so ``keras.ops``' argument handling
costs nothing per step and ``ops`` here *is* ``keras.ops``. Eager PyTorch pays it on every
call, several times the cost of the torch op itself (docs/performance.md, "Implementation
choices"), which at small batches was a large share of a training step's loss. Under torch,
``ops`` is this module: the functions below call torch directly, with the results
``keras.ops`` gives for the inputs the library passes them (backend tensors of one float
dtype, Python scalars); every other name falls through to ``keras.ops``.

Example:

>>> import numpy as np
>>> from triplet_tools._ops import ops
>>> x = ops.convert_to_tensor(np.array([1.0, -2.0], "float32"))
>>> ops.convert_to_numpy(ops.where(x > 0, ops.square(x), 0)).tolist()
[1.0, 0.0]
"""

import functools

import keras
from keras import ops as _keras_ops

if keras.backend.backend() != "torch":
    ops = _keras_ops
else:
    import builtins
    import sys

    import torch

    _DTYPES = {
        "float32": torch.float32,
        "float64": torch.float64,
        "int32": torch.int32,
        "int64": torch.int64,
        "bool": torch.bool,
    }

    # keras.ops.convert_to_tensor moves a tensor to Keras' device; on a machine without an
    # accelerator every tensor is already there.
    _CPU_ONLY = not (torch.cuda.is_available() or torch.backends.mps.is_available())

    def __getattr__(name):
        return getattr(_keras_ops, name)

    def convert_to_tensor(x, dtype=None):
        if _CPU_ONLY and dtype is None and isinstance(x, torch.Tensor):
            return x
        return _keras_ops.convert_to_tensor(x, dtype)

    def cast(x, dtype):
        if isinstance(x, torch.Tensor):
            if isinstance(dtype, torch.dtype):
                return x.to(dtype)
            if dtype in _DTYPES:
                return x.to(_DTYPES[dtype])
        return _keras_ops.cast(x, dtype)

    def stop_gradient(x):
        return x.detach() if isinstance(x, torch.Tensor) else _keras_ops.stop_gradient(x)

    def take(x, indices, axis=None):
        """Rows of a 2-D tensor (``axis=0``, indices in range); else ``keras.ops.take``."""
        if axis == 0 and isinstance(x, torch.Tensor) and x.ndim == 2:
            return x.index_select(0, convert_to_tensor(indices))
        return _keras_ops.take(x, indices, axis=axis)

    def where(condition, x1, x2):
        if isinstance(condition, torch.Tensor) and _tensor_or_number(x1, x2):
            return torch.where(condition, x1, x2)
        return _keras_ops.where(condition, x1, x2)

    def _tensor_or_number(x1, x2):
        """Both are tensors or Python numbers, and one of them is a tensor."""
        tensors = isinstance(x1, torch.Tensor), isinstance(x2, torch.Tensor)
        numbers = isinstance(x1, (int, float)), isinstance(x2, (int, float))
        # builtins: this module's own all() (below) is the tensor op.
        return builtins.any(tensors) and builtins.all(t or n for t, n in zip(tensors, numbers))

    def sum(x, axis=None, keepdims=False):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.sum() if axis is None else x.sum(dim=axis, keepdim=keepdims)
        return _keras_ops.sum(x, axis=axis, keepdims=keepdims)

    def maximum(x1, x2):
        if isinstance(x1, torch.Tensor) and isinstance(x2, (int, float)):
            return x1.clamp_min(x2)
        if isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor) and x1.dtype == x2.dtype:
            # keras.ops.maximum computes two float64 tensors in float32 (Keras 3.15).
            return torch.maximum(x1, x2)
        return _keras_ops.maximum(x1, x2)

    def matmul(x1, x2):
        if isinstance(x1, torch.Tensor) and isinstance(x2, torch.Tensor) and x1.dtype == x2.dtype:
            # keras.ops.matmul computes two float64 tensors in float32 (Keras 3.15).
            return torch.matmul(x1, x2)
        return _keras_ops.matmul(x1, x2)

    def abs(x):
        return torch.abs(x) if isinstance(x, torch.Tensor) else _keras_ops.abs(x)

    def max(x, axis=None, keepdims=False):
        if isinstance(x, torch.Tensor) and axis is not None and x.numel():
            return torch.amax(x, dim=axis, keepdim=keepdims)
        return _keras_ops.max(x, axis=axis, keepdims=keepdims)

    def sqrt(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return torch.sqrt(x)
        return _keras_ops.sqrt(x)

    def isfinite(x):
        return torch.isfinite(x) if isinstance(x, torch.Tensor) else _keras_ops.isfinite(x)

    def all(x, axis=None, keepdims=False):
        if isinstance(x, torch.Tensor) and x.dtype == torch.bool and axis is not None:
            return torch.all(x, dim=axis, keepdim=keepdims)
        return _keras_ops.all(x, axis=axis, keepdims=keepdims)

    def ones_like(x, dtype=None):
        if isinstance(x, torch.Tensor) and dtype is None:
            return torch.ones_like(x)
        return _keras_ops.ones_like(x, dtype=dtype)

    def square(x):
        return torch.square(x) if isinstance(x, torch.Tensor) else _keras_ops.square(x)

    def rsqrt(x):
        return torch.rsqrt(x) if isinstance(x, torch.Tensor) else _keras_ops.rsqrt(x)

    def relu(x):
        return torch.relu(x) if isinstance(x, torch.Tensor) else _keras_ops.relu(x)

    ops = sys.modules[__name__]


def row_sum(x):
    """``sum(x, axis=1)`` of an ``(n, M)`` block.

    On XLA's CPU backends (TensorFlow, JAX) a row sum of a fused elementwise expression
    compiles to a loop several times slower than the expression itself; a product with a
    vector of ones runs at the product's rate (docs/performance.md). Eager torch sums, and
    so does an accelerator, whose float32 products may run in reduced precision (TF32).

    Example:

    >>> import numpy as np
    >>> ops.convert_to_numpy(row_sum(ops.convert_to_tensor(np.ones((2, 3), "float32")))).tolist()
    [3.0, 3.0]
    """
    if keras.backend.backend() == "torch" or not _xla_on_cpu():
        return ops.sum(x, axis=1)
    return ops.matmul(x, ops.ones((ops.shape(x)[1],), x.dtype))


@functools.cache
def _xla_on_cpu():
    """Whether TensorFlow or JAX computes on the CPU (no GPU or TPU is visible)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "cpu"
    import tensorflow as tf

    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
