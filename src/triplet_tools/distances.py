"""Distances between embeddings: a pairwise matrix for mining and paired rows for the loss.

Every distance answers two questions:

* ``pairwise(x, y)`` -- the ``(n, m)`` matrix ``d(x_i, y_j)``, used to choose triplets;
* ``paired(x, y)`` -- the ``(n,)`` vector ``d(x_i, y_i)``, differentiable, used to score them.

Mining only needs the *order* of the distances along each anchor's row, so a distance may
also provide cheaper *mining scores*: any quantity that increases with the distance along
each row (for the Euclidean family, the squared distance without the anchor's own norm;
for the normalised ones, the negated cosine similarity). The two conversions
``score_to_distance`` / ``distance_to_score`` translate the semi-hard threshold between the
two scales. A user-defined distance needs only ``pairwise`` and ``paired``; the mining
hooks then default to the exact distances.

Names and aliases (SPEC):

```
name                definition                     aliases
euclidean_norm      ||a/||a|| - b/||b||||          --
euclidean           ||a - b||                      l2
squared_euclidean   ||a - b||^2                    sql2
cosine              1 - (a/||a||).(b/||b||)        --
manhattan           sum |a - b|                    l1
```

Normalisation divides by ``max(||a||, 1e-6)``, so the zero vector maps to the zero vector, and
every distance has a finite gradient at zero distance (square roots use the subgradient 0
there). NaN or inf in an embedding gives NaN distances, never a finite stand-in.
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


class Distance:
    """Base class of every distance; subclass it to plug in your own.

    A user-defined distance implements two methods on tensors of shape ``(n, D)`` and
    ``(m, D)`` (``(n, D)`` for ``paired``), written with ``keras.ops`` so it runs on every
    backend:

    * ``pairwise(x, y)`` -> ``(n, m)``, the distance of every pair, used to mine;
    * ``paired(x, y)`` -> ``(n,)``, the distance of row ``i`` of ``x`` to row ``i`` of ``y``,
      differentiable, used to compute the loss.

    Both must agree (``paired(x, y)[i] == pairwise(x, y)[i, i]``) and mining assumes that a
    smaller value means more similar. Optionally, override the mining hooks
    (``mining_features`` with ``paired_features``, ``mining_scores``, ``score_to_distance``,
    ``distance_to_score``) to transform rows once and mine on a cheaper monotone transform.
    To save and reload models that use it, register it with
    ``keras.saving.register_keras_serializable`` and give it a ``get_config``.

    Example:

    >>> import keras
    >>> from keras import ops
    >>> from triplet_tools.distances import Distance
    >>> from triplet_tools import TripletLoss
    >>> @keras.saving.register_keras_serializable(package="docs")
    ... class Chebyshev(Distance):
    ...     name = "chebyshev"
    ...     def pairwise(self, x, y):
    ...         return ops.max(ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)
    ...     def paired(self, x, y):
    ...         return ops.max(ops.abs(x - y), axis=-1)
    >>> loss = TripletLoss(distance=Chebyshev())
    >>> float(loss([0, 0, 1, 1], [[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 0.5]]))
    0.0
    """

    #: The name used in configs and error messages.
    name = "custom"
    #: Memory-relevant width of ``pairwise``: ``True`` when it builds an ``(n, m, D)``
    #: intermediate (mining then uses smaller row blocks).
    materializes_differences = False
    #: How ``pairwise_features`` comes from one matrix product (a :class:`ProductForm`), so
    #: that the pair engine gives its gradient in closed form; ``None``: the engine
    #: differentiates ``pairwise_features`` block by block instead (slower, same values). A
    #: subclass that overrides ``pairwise`` or ``pairwise_features`` drops an inherited
    #: form unless it declares its own.
    product_form: ProductForm | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if {"pairwise", "pairwise_features"} & set(vars(cls)) and "product_form" not in vars(cls):
            cls.product_form = None

    def pairwise(self, x, y):
        """Distance of every row of ``x`` ``(n, D)`` to every row of ``y`` ``(m, D)``:
        ``(n, m)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement pairwise(x, y) -> (n, m) distances."
        )

    def paired(self, x, y):
        """Distance of row ``i`` of ``x`` to row ``i`` of ``y``, both ``(n, D)``: ``(n,)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement paired(x, y) -> (n,) distances."
        )

    # --- mining hooks: defaults mine on the exact distance ---------------------------------

    def mining_features(self, x):
        """Per-row transform applied once to anchors and references before ``mining_scores``
        and ``paired_features`` (the L2 normalisation of the normalised distances)."""
        return x

    def paired_features(self, x, y):
        """``paired`` on rows already passed through ``mining_features``: ``(n,)``.

        The losses transform each row once and measure the chosen triplets with this.
        Override it together with ``mining_features``; by default it is ``paired``.
        """
        return self.paired(x, y)

    def pairwise_features(self, x, y):
        """``pairwise`` on rows already passed through ``mining_features``: ``(n, m)``,
        differentiable (the losses over every pair measure a block of anchors with it).
        Override it together with ``mining_features``; by default it is ``pairwise``."""
        return self.pairwise(x, y)

    def mining_scores(self, anchors, references):
        """``(n, m)`` scores that increase with the distance along each anchor's row."""
        return self.pairwise(anchors, references)

    def score_to_distance(self, scores, anchors):
        """Maps one score per anchor ``(n,)`` back to the distance scale."""
        return scores

    def distance_to_score(self, distances, anchors):
        """Maps one distance per anchor ``(n,)`` (possibly negative) to the score scale,
        monotonically."""
        return distances

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


class SquaredEuclidean(Distance):
    """``d(a, b) = ||a - b||^2``; names ``squared_euclidean``, ``sql2``.

    Mining scores are ``||b||^2 - 2 a.b``: one matrix product, the anchor's own norm dropped
    (the miner first moves anchors and references to a :func:`common_origin`). ``pairwise``
    measures both from the row of ``y`` nearest to their mean: an offset costs no digits.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = SquaredEuclidean().paired(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
    >>> ops.convert_to_numpy(d).tolist()
    [25.0]
    """

    name = "squared_euclidean"
    product_form = ProductForm(scale=-2.0, norms=True, root=False)

    def pairwise(self, x, y):
        x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
        x, y = moved_to(common_origin(y), x, y)
        squared = _squared_norms(x)[:, None] + _squared_norms(y)[None, :] - 2 * gram(x, y)
        return ops.maximum(squared, 0)

    def paired(self, x, y):
        return _squared_norms(x - y)

    def mining_scores(self, anchors, references):
        # The -2 scales the (n, D) operand, not the (n, m) product: one pass fewer.
        return gram(-2 * anchors, references) + _squared_norms(references)

    def score_to_distance(self, scores, anchors):
        return ops.maximum(scores + _squared_norms(anchors), 0)

    def distance_to_score(self, distances, anchors):
        return distances - _squared_norms(anchors)


class Euclidean(SquaredEuclidean):
    """``d(a, b) = ||a - b||``; names ``euclidean``, ``l2``. Gradient 0 at zero distance.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = Euclidean().paired(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]))
    >>> ops.convert_to_numpy(d).tolist()
    [5.0]
    """

    name = "euclidean"
    product_form = ProductForm(scale=-2.0, norms=True, root=True)

    def pairwise(self, x, y):
        return safe_sqrt(super().pairwise(x, y))

    def paired(self, x, y):
        return safe_sqrt(super().paired(x, y))

    def score_to_distance(self, scores, anchors):
        return safe_sqrt(super().score_to_distance(scores, anchors))

    def distance_to_score(self, distances, anchors):
        return super().distance_to_score(_signed_square(distances), anchors)


class EuclideanNorm(Euclidean):
    """``d(a, b) = ||a/||a|| - b/||b||||``; name ``euclidean_norm`` (the triplet-tools default).

    The distance lies in ``[0, 2]``; for unit vectors it equals ``sqrt(2 - 2 cos)``. A zero
    vector normalises to zero, so its distance to any unit vector is 1.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = EuclideanNorm().paired(np.array([[2.0, 0.0]]), np.array([[0.0, 5.0]]))
    >>> round(float(ops.convert_to_numpy(d)[0]), 4)
    1.4142
    """

    name = "euclidean_norm"
    product_form = ProductForm(scale=-2.0, norms=True, root=True)

    def pairwise(self, x, y):
        return super().pairwise(l2_normalize(x), l2_normalize(y))

    def paired(self, x, y):
        return super().paired(l2_normalize(x), l2_normalize(y))

    def mining_features(self, x):
        return l2_normalize(x)

    def paired_features(self, x, y):
        return Euclidean.paired(self, x, y)

    def pairwise_features(self, x, y):
        return Euclidean.pairwise(self, x, y)


class Cosine(Distance):
    """``d(a, b) = 1 - a.b / (||a|| ||b||)``; name ``cosine``. Inputs are normalised internally.

    Mining scores are ``-a_hat.b_hat``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = Cosine().paired(np.array([[1.0, 0.0]]), np.array([[-2.0, 0.0]]))
    >>> ops.convert_to_numpy(d).tolist()
    [2.0]
    """

    name = "cosine"
    product_form = ProductForm(scale=-1.0, norms=False, root=False)

    def pairwise(self, x, y):
        return 1 - gram(l2_normalize(x), l2_normalize(y))

    def paired(self, x, y):
        return self.paired_features(l2_normalize(x), l2_normalize(y))

    def mining_features(self, x):
        return l2_normalize(x)

    def paired_features(self, x, y):
        return 1 - ops.sum(x * y, axis=-1)

    def pairwise_features(self, x, y):
        return 1 - gram(x, y)

    def mining_scores(self, anchors, references):
        return gram(-anchors, references)

    def score_to_distance(self, scores, anchors):
        return 1 + scores

    def distance_to_score(self, distances, anchors):
        return distances - 1


class Manhattan(Distance):
    """``d(a, b) = sum_k |a_k - b_k|``; names ``manhattan``, ``l1``.

    The pairwise matrix builds an ``(n, m, D)`` difference, so mining uses smaller row blocks.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> d = Manhattan().paired(np.array([[0.0, 0.0]]), np.array([[3.0, -4.0]]))
    >>> ops.convert_to_numpy(d).tolist()
    [7.0]
    """

    name = "manhattan"
    materializes_differences = True

    def pairwise(self, x, y):
        return ops.sum(ops.abs(x[:, None, :] - y[None, :, :]), axis=-1)

    def paired(self, x, y):
        return ops.sum(ops.abs(x - y), axis=-1)


_BUILTIN = (EuclideanNorm, Euclidean, SquaredEuclidean, Cosine, Manhattan)
for _builtin in _BUILTIN:  # so that a config may also hold one as a Keras object (tfa's)
    keras.saving.register_keras_serializable(package="triplet_tools")(_builtin)
_ALIASES = {"l2": "euclidean", "sql2": "squared_euclidean", "l1": "manhattan"}

#: Every accepted distance name (canonical names first, then aliases).
DISTANCE_NAMES = tuple(cls.name for cls in _BUILTIN) + tuple(_ALIASES)


def get(identifier):
    """Returns the :class:`Distance` for a name, an alias, a config dict or an instance.

    Args:
        identifier: one of :data:`DISTANCE_NAMES` (case-insensitive), a ``Distance``
            instance (returned as is), or a dict produced by
            ``keras.saving.serialize_keras_object`` of a registered ``Distance``.

    Returns:
        A ``Distance`` instance.

    Raises:
        ValueError: for an unknown name, listing the valid ones.

    Example:

    >>> get("l2").name
    'euclidean'
    """
    if isinstance(identifier, Distance):
        return identifier
    if isinstance(identifier, dict):
        distance = keras.saving.deserialize_keras_object(identifier)
        if isinstance(distance, Distance):
            return distance
    if isinstance(identifier, str):
        name = identifier.strip().lower()
        name = _ALIASES.get(name, name)
        for cls in _BUILTIN:
            if cls.name == name:
                return cls()
    raise ValueError(
        f"Unknown distance: {identifier!r}. Valid names are {', '.join(DISTANCE_NAMES)}, "
        "or pass an instance of triplet_tools.distances.Distance."
    )


def serialize(distance):
    """The config value for a distance: its name if built in, else its Keras serialization."""
    if type(distance) in _BUILTIN:
        return distance.name
    return keras.saving.serialize_keras_object(distance)
