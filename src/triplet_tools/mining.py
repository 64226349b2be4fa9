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

from triplet_tools import distances as distances_module
from triplet_tools._ops import ops

#: Accepted values of ``positive_mining_strategy``.
POSITIVE_STRATEGIES = ("hard", "easy")
#: Accepted values of ``negative_mining_strategy``.
NEGATIVE_STRATEGIES = ("hard", "semi-hard", "easy")

# Scores mined at once. XLA fuses the passes over a block, which then run in cache at about
# a million scores (4 MB in float32). Eager torch pays a Python round trip per op and block,
# so it takes blocks four times larger.
_BLOCK_ELEMENTS = 2**22 if keras.backend.backend() == "torch" else 2**20


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
    """Rows of anchors mined at once: all when ``B*M`` is small, else blocks of ~2**20 scores.

    The target is 2**20 scores per block under XLA (TensorFlow, JAX) and 2**22 in eager
    torch; a distance that materialises ``(n, m, D)`` differences gets ``D`` times fewer rows.

    Args:
        num_anchors: ``B``, or ``None`` when unknown at trace time (then one block).
        num_references: ``M``, or ``None``.
        dim: the embedding width ``D``.
        distance: the ``Distance``; one that materialises ``(n, m, D)`` differences gets
            blocks ``D`` times smaller.

    Example:

    >>> from triplet_tools.distances import get
    >>> rows = auto_block_rows(65536, 65536, 128, get("cosine"))
    >>> rows in (16, 64)   # 16 under XLA, 64 in eager torch
    True
    """
    if num_anchors is None or num_references is None:
        return num_anchors
    per_row = num_references * (dim if distance.materializes_differences else 1)
    if num_anchors * per_row <= _BLOCK_ELEMENTS:
        return num_anchors
    rows = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
    return min(num_anchors, 1 << (rows.bit_length() - 1))


_INF = float("inf")


def _arg_extreme(values, largest):
    """Per row: ``(max or min value, its first column)``; masked entries hold -inf or +inf.

    XLA's CPU argmax is a slow variadic reduction; a value reduction followed by a float-min
    over column numbers runs vectorised and lands on the same (first) index.
    """
    best = ops.max(values, axis=1) if largest else ops.min(values, axis=1)
    num_columns = ops.shape(values)[1]
    columns = ops.arange(num_columns, dtype=values.dtype)
    past_end = ops.cast(num_columns, values.dtype)
    hits = ops.where(ops.equal(values, best[:, None]), columns[None, :], past_end)
    first = ops.min(hits, axis=1)
    # No hit only when the row holds NaN; any in-range index will do, NaN reaches the loss.
    return best, ops.cast(ops.where(first < past_end, first, 0), "int32")


def semi_hard_threshold(distance, positive_score, anchors, semi_margin):
    """The score of ``d(a, p*) + semi_margin`` for each anchor ``(n,)``."""
    if semi_margin == 0:
        return positive_score
    return distance.distance_to_score(
        distance.score_to_distance(positive_score, anchors) + semi_margin, anchors
    )


def _mine_block(
    anchors, anchor_labels, anchor_positions, references, reference_labels, reference_mask, *,
    distance, positive_strategy, negative_strategy, semi_margin,
):
    """Mines one block of anchors against all references; see the module docstring.

    Written for XLA (TensorFlow, JAX): every step is an elementwise select or a row
    reduction over the block's scores, which XLA fuses into a few passes.
    """
    scores = distance.mining_scores(anchors, references)
    reference_index = ops.arange(ops.shape(references)[0], dtype="int32")
    same = ops.equal(anchor_labels[:, None], reference_labels[None, :])
    not_self = ops.not_equal(anchor_positions[:, None], reference_index[None, :])
    positive_mask = ops.logical_and(same, not_self)
    if reference_mask is not None:
        # A masked-out reference is neither positive nor negative: treat it as "same".
        positive_mask = ops.logical_and(positive_mask, reference_mask[None, :])
        same = ops.logical_or(same, ops.logical_not(reference_mask)[None, :])

    hard_positive = positive_strategy == "hard"
    fill = -_INF if hard_positive else _INF
    positive_score, positive = _arg_extreme(
        ops.where(positive_mask, scores, fill), largest=hard_positive
    )
    has_positive = ops.not_equal(positive_score, fill)

    if negative_strategy == "hard":
        negative_score, negative = _arg_extreme(ops.where(same, _INF, scores), largest=False)
        return positive, negative, ops.logical_and(has_positive, negative_score < _INF)

    negative_scores = ops.where(same, -_INF, scores)
    farthest_score, negative = _arg_extreme(negative_scores, largest=True)
    valid = ops.logical_and(has_positive, farthest_score > -_INF)
    if negative_strategy == "easy":
        return positive, negative, valid

    threshold = semi_hard_threshold(distance, positive_score, anchors, semi_margin)
    # Negatives strictly beyond the threshold keep their (positive) excess; every other
    # entry, positives included (-inf), becomes +inf. Without any, keep the farthest.
    excess = ops.threshold(negative_scores - threshold[:, None], 0.0, _INF)
    semi_hard_excess, semi_hard = _arg_extreme(excess, largest=False)
    negative = ops.where(semi_hard_excess < _INF, semi_hard, negative)
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
    reference_mask=None,
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
        reference_mask: optional ``(M,)`` bool; a ``False`` reference is never chosen (an
            empty slot of a memory, say).
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
    anchors = ops.stop_gradient(ops.convert_to_tensor(anchors))
    features = distance.mining_features(anchors)
    if references is None:
        reference_features = None
    else:
        references = ops.cast(ops.convert_to_tensor(references), anchors.dtype)
        reference_features = distance.mining_features(ops.stop_gradient(references))
    return mine_features(
        features, anchor_labels, reference_features, reference_labels, anchor_positions,
        reference_mask=reference_mask, distance=distance, positive_strategy=positive_strategy,
        negative_strategy=negative_strategy, semi_margin=semi_margin, block_size=block_size,
    )


def mine_features(
    features,
    anchor_labels,
    reference_features=None,
    reference_labels=None,
    anchor_positions=None,
    *,
    reference_mask=None,
    distance="euclidean_norm",
    positive_strategy="hard",
    negative_strategy="semi-hard",
    semi_margin=0.0,
    block_size=None,
):
    """:func:`mine_triplets` on rows already passed through ``distance.mining_features``.

    The losses compute the features once, with gradient, and use them both to mine (here,
    under ``stop_gradient``) and to measure the chosen triplets. Arguments as for
    :func:`mine_triplets`, with ``features`` / ``reference_features`` in place of the
    embeddings.
    """
    distance = distances_module.get(distance)
    check_choice(positive_strategy, POSITIVE_STRATEGIES, "positive_mining_strategy")
    check_choice(negative_strategy, NEGATIVE_STRATEGIES, "negative_mining_strategy")

    features = ops.stop_gradient(ops.convert_to_tensor(features))
    anchor_labels = ops.convert_to_tensor(anchor_labels)
    num_anchors = features.shape[0]
    if reference_features is None:
        reference_features, reference_labels = features, anchor_labels
        if anchor_positions is None:
            anchor_positions = ops.arange(ops.shape(features)[0], dtype="int32")
    else:
        if reference_labels is None:
            raise ValueError("reference_labels are required when references are given.")
        reference_features = ops.stop_gradient(
            ops.cast(ops.convert_to_tensor(reference_features), features.dtype))
        reference_labels = ops.convert_to_tensor(reference_labels)
        if anchor_positions is None:
            anchor_positions = -ops.ones_like(anchor_labels, dtype="int32")
    anchor_labels, reference_labels = _common_label_dtype(anchor_labels, reference_labels)
    if reference_mask is not None:
        reference_mask = ops.cast(ops.convert_to_tensor(reference_mask), "bool")
    anchor_positions = ops.cast(anchor_positions, "int32")
    if num_anchors == 0:
        # An empty batch has no valid anchor (and nothing to reduce over).
        nothing = ops.zeros((0,), "int32")
        return MinedTriplets(nothing, nothing, ops.zeros((0,), "bool"))

    rules = dict(distance=distance, positive_strategy=positive_strategy,
                 negative_strategy=negative_strategy, semi_margin=semi_margin)
    rows = block_size or auto_block_rows(
        num_anchors, reference_features.shape[0], features.shape[-1], distance
    )
    if keras.backend.backend() == "torch":
        from triplet_tools import _torch_mining

        return MinedTriplets(*_torch_mining.mine(
            features, anchor_labels, anchor_positions, reference_features, reference_labels,
            reference_mask, rows=rows or num_anchors, **rules,
        ))

    def mine_block(a, la, pa):
        return _mine_block(
            a, la, pa, reference_features, reference_labels, reference_mask, **rules
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
