"""The arithmetic the distances are built from (re-exported by :mod:`triplet_tools.distances`).

* :func:`l2_normalize` and :func:`safe_sqrt`: finite gradients at zero, no overflow;
* :func:`gram`: the ``x @ y.T`` product, in the input dtype on every backend;
* :func:`common_origin` and :func:`moved_to`: exact Euclidean distances under a common offset;
* :class:`ProductForm`: a distance computed from one matrix product, and its gradient in
  closed form (what the pair engine uses instead of differentiating a block).
"""

from typing import NamedTuple

import keras

from triplet_tools._ops import ops, row_sum

#: Squared-norm floor used by :func:`l2_normalize` (a norm floor of 1e-6).
NORM_EPSILON_SQUARED = 1e-12


def l2_normalize(x, axis=-1):
    """Scales rows to unit length; the zero vector stays zero, with a finite gradient.

    ```
    x_hat = x / max(||x||, 1e-6)
    ```

    No overflow: each row is first divided by its largest absolute entry, so embeddings of
    1e30 normalise like any other. On TensorFlow and JAX the gradient is written out,
    ``(g - x_hat (g . x_hat)) / max(||x||, 1e-6)``, so that extra pass adds no backward ops;
    compiled torch fuses it; eager torch takes the plain ``x / sqrt(sum(x ** 2))`` unless a
    squared norm overflows. Either way a row with one non-zero entry becomes exactly a unit
    vector (``sqrt(x * x) == |x|`` in binary floating point), so parallel rows get equal
    features and mining and the loss decide ties alike. NaN or inf in a row makes it NaN.

    Args:
        x: tensor of shape ``(..., D)``, float32 or float64.
        axis: the axis to normalise along.

    Returns:
        A tensor of the same shape and dtype.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> y = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0], [3e30, 4e30]], "float32"))
    >>> np.round(ops.convert_to_numpy(y).astype("float64"), 3).tolist()
    [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]]
    """
    x = ops.convert_to_tensor(x)
    if 0 in x.shape:  # an empty batch: nothing to normalise (and no max to take)
        return x
    if keras.backend.backend() == "torch":
        return _torch_l2_normalize(x, axis)
    return _unit_rows(x, axis)


def _torch_l2_normalize(x, axis):
    import torch

    if torch.compiler.is_compiling():  # one fused kernel: the scaled form costs nothing more
        return _rescaled_l2_normalize(x, axis)
    # Eager: the host decides from one flag, so the common case is four ops.
    squared_norm = torch.sum(torch.square(x), dim=axis, keepdim=True)
    if bool(torch.isinf(squared_norm).any()):
        return _rescaled_l2_normalize(x, axis)
    return x / torch.sqrt(torch.clamp_min(squared_norm, NORM_EPSILON_SQUARED))


def _unit_rows(x, axis):
    """The scaled ``l2_normalize`` with its gradient written out (XLA backends)."""

    @ops.custom_gradient
    def forward(x):
        y, inverse_norm, floored = _rescaled_l2_normalize(x, axis, parts=True)

        def backward(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient alone; torch passes the
            # inputs, then upstream= (keras.ops.custom_gradient's two conventions).
            g = args[0] if upstream is None else upstream
            projection = ops.where(floored, 0.0, ops.sum(g * y, axis=axis, keepdims=True))
            return (g - y * projection) * inverse_norm

        return y, backward

    return forward(x)


def _rescaled_l2_normalize(x, axis, parts=False):
    """``l2_normalize`` that divides each row by its largest entry first (no overflow)."""
    largest = ops.max(ops.abs(x), axis=axis, keepdims=True)
    scale = ops.where(largest > 0, largest, ops.ones_like(largest))
    scaled = x / scale
    # max(||x||, 1e-6) = scale * max(||scaled||, 1e-6 / scale); the floor may overflow to
    # inf for tiny rows, which then (correctly, to float precision) normalise to zero.
    floor = NORM_EPSILON_SQUARED / ops.square(scale)
    squared = ops.sum(ops.square(scaled), axis=axis, keepdims=True)
    norm = ops.sqrt(ops.maximum(squared, floor))
    y = scaled / norm
    if not parts:
        return y
    floored = squared < floor
    return y, ops.where(floored, 1 / NORM_EPSILON_SQUARED**0.5, 1 / scale / norm), floored


def safe_sqrt(x):
    """``sqrt(max(x, 0))`` whose gradient at 0 is 0 instead of infinity; NaN stays NaN.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(safe_sqrt(np.array([4.0, 0.0, -1e-9, np.nan], "float32"))).tolist()
    [2.0, 0.0, 0.0, nan]
    """
    positive = x > 0
    # |x| * 0 is +0 for the non-positive (rounding noise) entries, with gradient 0, and NaN
    # for NaN, which must reach the loss.
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), ops.abs(x) * 0)


#: Products of at most this many entries use ``matmul`` on torch (see :func:`gram`).
_TORCH_MATMUL_MAX = 2**16


def gram(x, y):
    """``x @ y.T`` for ``(n, D)`` and ``(m, D)``.

    Not ``keras.ops.matmul``: on the torch backend (Keras 3.15) it computes float64 inputs
    in float32. An einsum everywhere, except for small products on torch, where ``matmul``
    is faster; large ones stay on the einsum, which was faster in the first steps of a fresh
    process (measurements: docs/performance.md, "Implementation choices").
    """
    if keras.backend.backend() == "torch" and x.shape[0] * y.shape[0] <= _TORCH_MATMUL_MAX:
        return ops.convert_to_tensor(x) @ ops.convert_to_tensor(y).mT
    return ops.einsum("nd,md->nm", x, y)


def _squared_norms(x):
    return ops.sum(ops.square(x), axis=-1)


def common_origin(rows, kept=None):
    """A point to measure ``rows`` from: the finite (and ``kept``) row nearest to their
    mean, without gradient; the zero vector when there is none.

    ```
    m = mean of the kept finite rows        o = argmin_{r_j kept, finite} ||r_j - m||
    ```

    The Euclidean family computes ``||a - r||^2`` as ``||a||^2 + ||r||^2 - 2 a.r``, which
    cancels catastrophically when the rows share a large offset (a bias, a ReLU output):
    at offset 1000 with unit spread, float32 keeps three digits of the distance. These
    distances depend on ``a - r`` only, so subtracting one ``o`` from the anchors and the
    references changes neither the distances nor their gradient (``o`` is a constant), and
    leaves the float32 rounding of the spread, whatever the offset. A row, not the mean
    itself: rows on a grid (integers) stay exact, so exact ties stay ties, and the origin
    is a gathered value, which no compiler can round two ways (see :func:`moved_to`).

    Args:
        rows: ``(M, D)`` float.
        kept: optional ``(M,)`` bool; rows left out.

    Returns:
        ``(D,)`` of the dtype of ``rows``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> r = np.array([[1000.0, 1.0], [1003.0, 3.0], [1001.0, 2.0], [np.nan, 0.0]], "float32")
    >>> ops.convert_to_numpy(common_origin(r)).tolist()
    [1001.0, 2.0]
    """
    rows = ops.stop_gradient(ops.convert_to_tensor(rows))
    if rows.shape[0] == 0:
        return ops.zeros(ops.shape(rows)[1:], rows.dtype)
    counted = ops.all(ops.isfinite(rows), axis=-1)
    if kept is not None:
        counted = ops.logical_and(counted, ops.cast(kept, "bool"))
    count = ops.sum(ops.cast(counted, rows.dtype))
    share = 1 / ops.maximum(count, ops.ones_like(count))
    inside = counted[:, None]
    mean = ops.sum(ops.where(inside, rows * share, ops.zeros_like(rows)), axis=0)
    gaps = ops.sum(ops.square(ops.where(inside, rows - mean, ops.zeros_like(rows))), axis=-1)
    nearest = ops.reshape(ops.argmin(ops.where(counted, gaps, float("inf"))), (1,))
    origin = ops.take(rows, nearest, axis=0)[0]
    return ops.where(ops.take(counted, nearest)[0], origin, ops.zeros_like(origin))


def moved_to(origin, x, y):
    """``(x - origin, y - origin)``, ``(n, D)`` and ``(m, D)``, as one subtraction.

    One subtraction, so that every row is moved alike: when the origin was the mean itself,
    XLA's CPU backend copied its division into two consumers and contracted one copy with
    the subtraction into a fused multiply-add, moving anchors and references by origins
    3e-4 apart at an offset of 1e4 (``d(a, a)`` no longer 0).
    """
    count = ops.shape(x)[0]
    moved = ops.concatenate([x, y], axis=0) - origin
    return moved[:count], moved[count:]


def _signed_square(d):
    # Monotone on the whole real line, so a negative threshold (a negative semi_margin)
    # stays below every non-negative distance.
    return ops.sign(d) * ops.square(d)


class ProductForm(NamedTuple):
    """A distance computed from one matrix product, and its gradient in closed form.

    ```
    z(a, r) = norms * (||a||^2 + ||r||^2) + scale * a.r (+ a constant)
    d(a, r) = sqrt(max(z, 0))   (root)      or      z   (clamped at 0 for squared norms)
    ```

    For a loss ``L = sum_aj W_aj d(a_a, r_j)`` with ``W`` known (the pair engine's
    ``dL/dd``), the gradients are again products: with ``C = dL/dz = W`` (or
    ``W / (2d)`` under the root, 0 at ``d = 0`` as for :func:`safe_sqrt`),

    ```
    dL/dA = scale * C @ R + 2 * norms * rowsum(C) * A
    dL/dR = scale * C^T @ A + 2 * norms * colsum(C) * R
    ```

    so the pair engine never differentiates an ``(n, M)`` block.

    Attributes:
        scale: the factor of the inner product (``-1`` cosine, ``-2`` the Euclidean family).
        norms: whether the squared norms enter ``z``.
        root: whether ``d`` is the square root of ``z``.
    """

    scale: float
    norms: bool
    root: bool

    @property
    def translation_invariant(self):
        """Whether ``z = ||a - r||^2`` (``norms`` with ``scale = -2``): then ``d`` depends on
        ``a - r`` only, and the pair engine and the miner measure anchors and references
        from a :func:`common_origin` (exact distances under a common offset)."""
        return self.norms and self.scale == -2.0

    def slopes(self, weights, distances):
        """``C = dL/dz`` from ``W = dL/dd`` and the distances, elementwise."""
        if not self.root:
            return weights
        positive = distances > 0
        return ops.where(positive, weights / ops.where(positive, 2 * distances, 1), 0)

    def anchor_gradient(self, slopes, anchors, references):
        """``dL/dA`` ``(n, D)`` for ``C`` ``(n, M)``, anchors ``(n, D)``, references ``(M, D)``."""
        gradient = ops.matmul(slopes, references) * self.scale
        if self.norms:
            gradient = gradient + 2 * row_sum(slopes)[:, None] * anchors
        return gradient

    def reference_gradient_transposed(self, slopes, anchors):
        """The product part of ``dL/dR``, transposed: ``scale * A^T @ C``, ``(D, M)``.

        Transposed because then both operands are read along their rows: XLA's CPU product
        of ``C^T @ A`` ran at half the rate of ``A^T @ C`` (docs/performance.md). The norm
        part, ``2 * colsum(C) * R``, is added once after all blocks
        (:meth:`finish_reference_gradient`)."""
        return ops.matmul(ops.transpose(anchors), slopes) * self.scale

    def finish_reference_gradient(self, transposed, column_sums, references):
        """``dL/dR`` ``(M, D)`` from the summed :meth:`reference_gradient_transposed` and the
        summed column sums of ``C`` ``(M,)``."""
        gradient = ops.transpose(transposed)
        if self.norms:
            gradient = gradient + 2 * column_sums[:, None] * references
        return gradient

    def paired_gradients(self, slopes, anchors, references, distances):
        """``(dL/da, dL/dr)``, each ``(n, D)``, for ``L = sum_i s_i d(a_i, r_i)``: the
        gradient of single pairs (the units the pair engine gathers)."""
        slopes = self.slopes(slopes, distances)[:, None]
        to_anchor = self.scale * slopes * references
        to_reference = self.scale * slopes * anchors
        if self.norms:
            to_anchor = to_anchor + 2 * slopes * anchors
            to_reference = to_reference + 2 * slopes * references
        return to_anchor, to_reference
