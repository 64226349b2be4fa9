"""Fixed-shape online mining: which references each anchor is scored against.

The rules are stated once in :mod:`triplet_tools.mining.rules` (strategies, validity, the
semi-hard threshold). Two engines apply them:

* per anchor (hard / easy positive with hard / semi-hard / easy negative): one positive and
  one negative index per anchor, from :func:`mine_triplets` / :func:`mine_features`; the
  ``keras.ops`` kernel (``kernel``) serves TensorFlow and JAX, ``torch_kernel`` eager
  PyTorch, chosen once at import;
* every pair (strategy ``"all"``, and the pair-based losses): ``pairs``.

Everything here runs under ``stop_gradient`` and returns integer indices, so it is never
differentiated: the loss gathers the chosen rows and recomputes their distances with
gradient, which keeps the backward pass O(B*D). Shapes are static and nothing branches on
tensor values, so mining compiles under ``tf.function(jit_compile=True)`` and ``jax.jit``.
Large problems are mined in row blocks of anchors (:mod:`triplet_tools.mining.blocks`), so
peak memory is O(block*M) instead of O(B*M).
"""

from typing import NamedTuple

import keras

from triplet_tools._ops import ops
from triplet_tools._validation import check_choice
from triplet_tools.distances import common_origin, moved_to
from triplet_tools.mining.blocks import auto_block_rows, map_blocks, xla_in_tensorflow_graph
from triplet_tools.mining.rules import (
    NEGATIVE_STRATEGIES,
    POSITIVE_STRATEGIES,
    MiningRules,
    mining_rules,
    semi_hard_threshold,
)

_EAGER_TORCH = keras.backend.backend() == "torch"
if _EAGER_TORCH:
    import torch

    from triplet_tools.mining import torch_kernel as _torch_kernel

    _compiling = torch.compiler.is_compiling
else:
    from triplet_tools.mining import kernel as _kernel

__all__ = [
    "NEGATIVE_STRATEGIES",
    "POSITIVE_STRATEGIES",
    "MinedTriplets",
    "MiningRules",
    "auto_block_rows",
    "check_choice",
    "finite_rows",
    "mine_features",
    "mine_triplets",
    "mining_rules",
    "semi_hard_threshold",
]


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


def common_label_dtype(a, b):
    """The two label tensors in one integer dtype (int64 if they differ)."""
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
    rules = mining_rules(distance, positive_strategy, negative_strategy, semi_margin)
    anchors = ops.stop_gradient(ops.convert_to_tensor(anchors))
    features = rules.distance.mining_features(anchors)
    if references is None:
        reference_features = None
    else:
        references = ops.cast(ops.convert_to_tensor(references), anchors.dtype)
        reference_features = rules.distance.mining_features(ops.stop_gradient(references))
    return mine_features(
        features,
        anchor_labels,
        reference_features,
        reference_labels,
        anchor_positions,
        rules=rules,
        reference_mask=reference_mask,
        block_size=block_size,
    )


def finite_rows(features, mask=None):
    """``mask`` and-ed with "this row is finite": a reference whose embedding holds NaN or
    inf is never chosen (see :mod:`triplet_tools.mining.rules`).

    Under eager PyTorch the check costs one pass over ``(M, D)`` and returns ``mask``
    unchanged when every row is finite, so the common case pays nothing more.
    """
    finite = ops.all(ops.isfinite(features), axis=-1)
    if _EAGER_TORCH and not _compiling() and bool(finite.all()):
        return mask
    return finite if mask is None else ops.logical_and(mask, finite)


def mine_features(
    features,
    anchor_labels,
    reference_features=None,
    reference_labels=None,
    anchor_positions=None,
    *,
    rules,
    reference_mask=None,
    block_size=None,
):
    """:func:`mine_triplets` on rows already passed through ``distance.mining_features``.

    The losses compute the features once, with gradient, and use them both to mine (here,
    under ``stop_gradient``) and to measure the chosen triplets. Arguments as for
    :func:`mine_triplets`, with ``features`` / ``reference_features`` in place of the
    embeddings and the checked :class:`~triplet_tools.mining.rules.MiningRules` in place
    of the four mining arguments.
    """
    if not rules.per_anchor:
        raise ValueError(
            "mine_triplets chooses one positive and one negative per anchor; the strategy "
            f"'all' (received positive={rules.positive!r}, negative={rules.negative!r}) is "
            "scored over every pair by the losses themselves, e.g. "
            "TripletLoss(positive_mining_strategy='all')."
        )
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
            ops.cast(ops.convert_to_tensor(reference_features), features.dtype)
        )
        reference_labels = ops.convert_to_tensor(reference_labels)
        if anchor_positions is None:
            anchor_positions = -ops.ones_like(anchor_labels, dtype="int32")
    anchor_labels, reference_labels = common_label_dtype(anchor_labels, reference_labels)
    if reference_mask is not None:
        reference_mask = ops.cast(ops.convert_to_tensor(reference_mask), "bool")
    reference_mask = finite_rows(reference_features, reference_mask)
    form = rules.distance.product_form
    if form is not None and form.translation_invariant:
        # Scores ||r||^2 - 2 a.r measured from a common origin: an offset shared by the rows
        # would otherwise cancel their digits and choose the wrong indices.
        origin = common_origin(reference_features, reference_mask)
        if reference_features is features:  # in-batch
            features = reference_features = features - origin
        else:
            features, reference_features = moved_to(origin, features, reference_features)
    anchor_positions = ops.cast(anchor_positions, "int32")
    if num_anchors == 0:
        # An empty batch has no valid anchor (and nothing to reduce over).
        nothing = ops.zeros((0,), "int32")
        return MinedTriplets(nothing, nothing, ops.zeros((0,), "bool"))

    rows = block_size or auto_block_rows(
        num_anchors, reference_features.shape[0], features.shape[-1], rules.distance
    )
    if _EAGER_TORCH:
        return MinedTriplets(
            *_torch_kernel.mine(
                features,
                anchor_labels,
                anchor_positions,
                reference_features,
                reference_labels,
                reference_mask,
                rows=rows or num_anchors,
                rules=rules,
            )
        )

    def mine(features, anchor_labels, anchor_positions, references, reference_labels, *mask):
        def mine_block(a, la, pa):
            return _kernel.mine_block(
                a, la, pa, references, reference_labels, mask[0] if mask else None, rules
            )

        blocks = (features, anchor_labels, anchor_positions)
        return map_blocks(mine_block, blocks, rows=rows, pad_values=(0, 0, -1))

    mask = () if reference_mask is None else (reference_mask,)
    mined = xla_in_tensorflow_graph(mine)(
        features, anchor_labels, anchor_positions, reference_features, reference_labels, *mask
    )
    return MinedTriplets(*mined)
