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

import keras

# The arithmetic the distances are built from has its own module; its public names are
# part of this module's API (__all__).
from triplet_tools._distance_math import (
    NORM_EPSILON_SQUARED,
    ProductForm,
    _signed_square,
    _squared_norms,
    common_origin,
    gram,
    l2_normalize,
    moved_to,
    safe_sqrt,
)
from triplet_tools._ops import ops


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


# In the order of the API page (docs/api/distances.md orders by __all__).
__all__ = [
    "NORM_EPSILON_SQUARED",
    "ProductForm",
    "Distance",
    "SquaredEuclidean",
    "Euclidean",
    "EuclideanNorm",
    "Cosine",
    "Manhattan",
    "DISTANCE_NAMES",
    "l2_normalize",
    "safe_sqrt",
    "gram",
    "common_origin",
    "moved_to",
    "get",
    "serialize",
]
