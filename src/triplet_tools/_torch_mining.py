"""Row-block mining for eager PyTorch: the rules of ``mining._mine_block``, in place.

Eager torch runs one kernel per op and allocates every result. At ``B x M`` scale the fresh
pages of those allocations cost more than the arithmetic, so this path writes each pass into
one reused ``(rows, M)`` buffer, uses torch's single-pass ``argmax``/``argmin``, and skips
work that the data makes unnecessary (the semi-hard fallback, when no anchor of the block
needs it). It selects exactly what the ``keras.ops`` version selects (ties aside).
"""

import torch
import torch.nn.functional as F

from triplet_tools.mining import semi_hard_threshold

_INF = float("inf")


def mine(anchors, anchor_labels, anchor_positions, references, reference_labels,
         reference_mask, *, rows, distance, positive_strategy, negative_strategy, semi_margin):
    """Returns ``(positive, negative, valid)``, each ``(B,)``; see ``mining.mine_triplets``."""
    num_anchors = anchors.shape[0]
    outputs = (
        torch.empty(num_anchors, dtype=torch.int32, device=anchors.device),
        torch.empty(num_anchors, dtype=torch.int32, device=anchors.device),
        torch.empty(num_anchors, dtype=torch.bool, device=anchors.device),
    )
    with torch.no_grad():
        buffer = torch.empty((min(rows, num_anchors), references.shape[0]),
                             dtype=_score_dtype(distance, anchors, references),
                             device=anchors.device)
        for start in range(0, num_anchors, rows):
            block = slice(start, start + rows)
            chosen = _mine_block(
                anchors[block], anchor_labels[block], anchor_positions[block], references,
                reference_labels, reference_mask, buffer, distance=distance,
                positive_strategy=positive_strategy, negative_strategy=negative_strategy,
                semi_margin=semi_margin,
            )
            for out, value in zip(outputs, chosen):
                out[block] = value
    return outputs


def _score_dtype(distance, anchors, references):
    return distance.mining_scores(anchors[:1], references[:1]).dtype


def _arg_extreme(values, largest):
    index = values.argmax(1) if largest else values.argmin(1)
    return values.gather(1, index[:, None])[:, 0], index.to(torch.int32)


def _mine_block(anchors, anchor_labels, anchor_positions, references, reference_labels,
                reference_mask, buffer, *, distance, positive_strategy, negative_strategy,
                semi_margin):
    scores = distance.mining_scores(anchors, references)
    same = anchor_labels[:, None] == reference_labels[None, :]
    if reference_mask is not None:
        # A masked-out reference is neither positive nor negative: treat it as "same"
        # and drop it from the positives after they are scored.
        same |= ~reference_mask[None, :]
    work = buffer[: scores.shape[0]]
    rows = torch.arange(scores.shape[0], device=scores.device)
    is_reference = anchor_positions >= 0
    self_rows, self_columns = rows[is_reference], anchor_positions[is_reference].long()

    hard_positive = positive_strategy == "hard"
    fill = -_INF if hard_positive else _INF
    torch.where(same, scores, torch.tensor(fill, dtype=scores.dtype), out=work)
    work[self_rows, self_columns] = fill
    if reference_mask is not None:
        work.masked_fill_(~reference_mask[None, :], fill)
    positive_score, positive = _arg_extreme(work, largest=hard_positive)
    has_positive = positive_score != fill

    if negative_strategy == "hard":
        torch.where(same, torch.tensor(_INF, dtype=scores.dtype), scores, out=work)
        negative_score, negative = _arg_extreme(work, largest=False)
        return positive, negative, has_positive & (negative_score < _INF)
    if negative_strategy == "easy":
        scores.masked_fill_(same, -_INF)
        negative_score, negative = _arg_extreme(scores, largest=True)
        return positive, negative, has_positive & (negative_score > -_INF)

    threshold = semi_hard_threshold(distance, positive_score, anchors, semi_margin)
    if hard_positive and semi_margin == 0 and reference_mask is None:
        # Every positive scores at most the hardest one, the threshold itself, so its
        # excess is <= 0 and the strict threshold drops it: no label mask needed. The
        # anchor's own column is dropped explicitly (rounding could lift it above).
        torch.sub(scores, threshold[:, None], out=work)
        work[self_rows, self_columns] = -_INF
    else:
        torch.where(same, torch.tensor(-_INF, dtype=scores.dtype), scores, out=work)
        work.sub_(threshold[:, None])
    F.threshold_(work, 0.0, _INF)
    semi_hard_excess, negative = _arg_extreme(work, largest=False)
    has_semi_hard = semi_hard_excess < _INF
    # Anchors without a positive are invalid whatever their negative: they need no fallback.
    if bool((has_semi_hard | ~has_positive).all()):
        return positive, negative, has_positive
    scores.masked_fill_(same, -_INF)
    farthest_score, farthest = _arg_extreme(scores, largest=True)
    negative = torch.where(has_semi_hard, negative, farthest)
    return positive, negative, has_positive & (farthest_score > -_INF)
