"""Fixed-shape online mining: one positive and one negative reference per anchor.

For anchor ``a`` with references ``R`` (the batch itself, or an explicit reference set):

```
P(a) = {j in R : label(j) == label(a), j is not a itself}     N(a) = {j in R : label(j) != label(a)}
valid(a) = P(a) non-empty and N(a) non-empty

positive  hard: p* = argmax_{P(a)} d(a, j)        easy: p* = argmin_{P(a)} d(a, j)
negative  hard: n* = argmin_{N(a)} d(a, j)        easy: n* = argmax_{N(a)} d(a, j)
     semi-hard: S(a) = {j in N(a) : d(a, j) > d(a, p*) + semi_margin}
                n* = argmin_{S(a)} d(a, j) if S(a) is non-empty, else argmax_{N(a)} d(a, j)
```

Everything here runs under ``stop_gradient`` and returns integer indices, so it is never
differentiated: the loss gathers the chosen rows and recomputes their distances with
gradient, which keeps the backward pass O(B*D). Shapes are static and nothing branches on
tensor values, so mining compiles under ``tf.function(jit_compile=True)`` and ``jax.jit``.
Large problems are mined in row blocks of anchors, so peak memory is O(block*M) instead of
O(B*M).
"""

from typing import NamedTuple

import keras
from keras import ops

from triplet_tools import distances as distances_module

#: Accepted values of ``positive_mining_strategy``.
POSITIVE_STRATEGIES = ("hard", "easy")
#: Accepted values of ``negative_mining_strategy``.
NEGATIVE_STRATEGIES = ("hard", "semi-hard", "easy")

# Score-matrix elements mined at once when the problem is split into row blocks, and the
# largest problem mined in a single block.
_BLOCK_ELEMENTS = 2**22
_SINGLE_BLOCK_ELEMENTS = 2**24


class MinedTriplets(NamedTuple):
    """Result of :func:`mine_triplets`; every field has shape ``(B,)``.

    Attributes:
        positive: int32 index into the references of each anchor's positive ``p*``.
        negative: int32 index into the references of each anchor's negative ``n*``.
        valid: bool, whether the anchor has at least one positive and one negative. For an
            invalid anchor the two indices point at an arbitrary reference.
    """

    positive: object
    negative: object
    valid: object


def check_choice(value, allowed, argument):
    """Returns ``value`` if it is one of ``allowed``, else raises a ValueError naming both."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"Invalid {argument}: received {value!r}; allowed values are "
            f"{', '.join(repr(a) for a in allowed)}."
        )
    return value


def auto_block_rows(num_anchors, num_references, dim, distance):
    """Rows of anchors mined at once: all of them when small, else blocks of ~4M scores.

    Args:
        num_anchors: ``B``, or ``None`` when unknown at trace time (then one block).
        num_references: ``M``, or ``None``.
        dim: the embedding width ``D``.
        distance: the ``Distance``; one that materialises ``(n, m, D)`` differences gets
            blocks ``D`` times smaller.

    Example:

    >>> from triplet_tools.distances import get
    >>> auto_block_rows(1024, 1024, 128, get("cosine"))
    1024
    >>> auto_block_rows(65536, 65536, 128, get("cosine"))
    64
    """
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = num_references * (dim if distance.materializes_differences else 1)
    if num_anchors * per_row <= _SINGLE_BLOCK_ELEMENTS:
        return num_anchors
    rows = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
    return min(num_anchors, 1 << (rows.bit_length() - 1))


def _mine_block(
    anchors, anchor_labels, anchor_positions, references, reference_labels, *,
    distance, positive_strategy, negative_strategy, semi_margin,
):
    """Mines one block of anchors against all references; see the module docstring."""
    scores = distance.mining_scores(anchors, references)
    reference_index = ops.arange(ops.shape(references)[0], dtype="int32")
    same = ops.equal(anchor_labels[:, None], reference_labels[None, :])
    not_self = ops.not_equal(anchor_positions[:, None], reference_index[None, :])
    positive_mask = ops.logical_and(same, not_self)
    negative_mask = ops.logical_not(same)
    inf = float("inf")

    if positive_strategy == "hard":
        positive = ops.argmax(ops.where(positive_mask, scores, -inf), axis=1)
    else:
        positive = ops.argmin(ops.where(positive_mask, scores, inf), axis=1)
    positive = ops.cast(positive, "int32")

    if negative_strategy == "hard":
        negative = ops.argmin(ops.where(negative_mask, scores, inf), axis=1)
    else:
        # "easy", and the semi-hard fallback: the farthest negative.
        negative = ops.argmax(ops.where(negative_mask, scores, -inf), axis=1)
    if negative_strategy == "semi-hard":
        positive_score = ops.take_along_axis(scores, positive[:, None], axis=1)[:, 0]
        if semi_margin == 0:
            threshold = positive_score
        else:
            threshold = distance.distance_to_score(
                distance.score_to_distance(positive_score, anchors) + semi_margin, anchors
            )
        semi_hard_mask = ops.logical_and(negative_mask, scores > threshold[:, None])
        semi_hard = ops.argmin(ops.where(semi_hard_mask, scores, inf), axis=1)
        negative = ops.where(ops.any(semi_hard_mask, axis=1), semi_hard, negative)
    negative = ops.cast(negative, "int32")

    valid = ops.logical_and(ops.any(positive_mask, axis=1), ops.any(negative_mask, axis=1))
    return positive, negative, valid


def _common_label_dtype(a, b):
    da, db = keras.backend.standardize_dtype(a.dtype), keras.backend.standardize_dtype(b.dtype)
    if da == db:
        return a, b
    return ops.cast(a, "int64"), ops.cast(b, "int64")


def mine_triplets(
    anchors,
    anchor_labels,
    references=None,
    reference_labels=None,
    anchor_positions=None,
    *,
    distance="euclidean_norm",
    positive_strategy="hard",
    negative_strategy="semi-hard",
    semi_margin=0.0,
    block_size=None,
):
    """Chooses a positive and a negative reference for every anchor (no gradient).

    See the module docstring for the exact rules. Ties go to any of the tied indices.

    Args:
        anchors: ``(B, D)`` float embeddings.
        anchor_labels: ``(B,)`` integer class ids.
        references: ``(M, D)`` reference embeddings, or ``None`` to mine inside the batch
            (then ``references = anchors`` and an anchor is never its own positive).
        reference_labels: ``(M,)`` class ids of the references (required with ``references``).
        anchor_positions: ``(B,)`` int index of each anchor within ``references`` (excluded
            from its positives), or ``-1`` for an anchor that is not among them. Defaults to
            ``arange(B)`` without references and to all ``-1`` with them.
        distance: a name from ``triplet_tools.distances.DISTANCE_NAMES`` or a ``Distance``.
        positive_strategy: ``"hard"`` or ``"easy"``.
        negative_strategy: ``"hard"``, ``"semi-hard"`` or ``"easy"``.
        semi_margin: the semi-hard offset (distance units).
        block_size: anchors mined at once; ``None`` picks one (see :func:`auto_block_rows`).

    Returns:
        A :class:`MinedTriplets` of ``(B,)`` tensors.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.array([[0.0], [1.0], [3.0], [10.0]], "float32")
    >>> mined = mine_triplets(x, np.array([0, 0, 1, 1]), distance="euclidean",
    ...                       negative_strategy="hard")
    >>> [ops.convert_to_numpy(t).tolist() for t in mined]
    [[1, 0, 3, 2], [2, 2, 1, 1], [True, True, True, True]]
    """
    distance = distances_module.get(distance)
    check_choice(positive_strategy, POSITIVE_STRATEGIES, "positive_mining_strategy")
    check_choice(negative_strategy, NEGATIVE_STRATEGIES, "negative_mining_strategy")

    anchors = ops.stop_gradient(ops.convert_to_tensor(anchors))
    anchor_labels = ops.convert_to_tensor(anchor_labels)
    num_anchors = anchors.shape[0]
    if references is None:
        features = distance.mining_features(anchors)
        reference_features, reference_labels = features, anchor_labels
        if anchor_positions is None:
            anchor_positions = ops.arange(ops.shape(anchors)[0], dtype="int32")
    else:
        if reference_labels is None:
            raise ValueError("reference_labels are required when references are given.")
        references = ops.stop_gradient(ops.cast(ops.convert_to_tensor(references), anchors.dtype))
        reference_labels = ops.convert_to_tensor(reference_labels)
        features = distance.mining_features(anchors)
        reference_features = distance.mining_features(references)
        if anchor_positions is None:
            anchor_positions = -ops.ones_like(anchor_labels, dtype="int32")
    anchor_labels, reference_labels = _common_label_dtype(anchor_labels, reference_labels)
    anchor_positions = ops.cast(anchor_positions, "int32")

    mine_block = lambda a, la, pa: _mine_block(  # noqa: E731
        a, la, pa, reference_features, reference_labels,
        distance=distance, positive_strategy=positive_strategy,
        negative_strategy=negative_strategy, semi_margin=semi_margin,
    )
    rows = block_size or auto_block_rows(
        num_anchors, reference_features.shape[0], anchors.shape[-1], distance
    )
    if rows is None or num_anchors is None or rows >= num_anchors:
        return MinedTriplets(*mine_block(features, anchor_labels, anchor_positions))

    num_blocks = -(-num_anchors // rows)
    padding = num_blocks * rows - num_anchors
    if padding:
        features = ops.pad(features, [[0, padding], [0, 0]])
        anchor_labels = ops.pad(anchor_labels, [[0, padding]])
        anchor_positions = ops.pad(anchor_positions, [[0, padding]], constant_values=-1)
    blocks = (
        ops.reshape(features, (num_blocks, rows, features.shape[-1])),
        ops.reshape(anchor_labels, (num_blocks, rows)),
        ops.reshape(anchor_positions, (num_blocks, rows)),
    )
    mined = ops.map(lambda block: mine_block(*block), blocks)
    return MinedTriplets(*(ops.reshape(t, (-1,))[:num_anchors] for t in mined))
