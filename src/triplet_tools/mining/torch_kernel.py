"""The per-anchor kernel for eager PyTorch: the rules of ``mining.rules``, in fewer passes.

Eager torch runs one kernel per op, so every op over a ``(rows, M)`` block of scores is a
full pass through memory, and every fresh result costs page faults. This path keeps those
passes to the few that need all scores:

* Positives are few (a class's other members). Sorting the references by label once gives
  every anchor its positives as a short ``(rows, K)`` list of columns, where ``K`` is the
  largest class: the positive is chosen by gathering ``K`` scores per row, and positives are
  excluded from the negatives by writing ``K`` entries per row. No ``(rows, M)`` label mask.
* The remaining passes write into one reused buffer or into the fresh scores in place.
* The semi-hard fallback (farthest negative) is computed only for the rows that need it.
* Wide rows find their nearest/farthest column in two levels (``amin`` over chunks, then
  ``argmin`` inside one chunk): CPU ``argmin`` is not vectorised, ``amin`` is.
* Small problems (at most ``DENSE_MAX_SCORES`` scores) are cheaper the other way round: the
  cost there is the number of ops, not the passes, so :func:`_mine_dense` builds the
  ``(n, M)`` label mask and mines in about fifteen ops.

It selects what the ``keras.ops`` kernel (``mining.kernel``) selects (ties aside); the tests
hold both to the same brute-force reference. It is the one kernel that does not call the
choice functions of ``mining.rules`` (``semi_hard_negative``): written in ``keras.ops``, a
choice is a fresh ``(rows, M)`` result per step and computes the farthest negative for every
row, where this path writes in place and computes it only for the rows without a
semi-hard negative (see ``mining.rules``).
"""

import torch
import torch.nn.functional as F

from triplet_tools.mining.rules import semi_hard_threshold

_INF = float("inf")


def mine(
    anchors,
    anchor_labels,
    anchor_positions,
    references,
    reference_labels,
    reference_mask,
    *,
    rows,
    rules,
):
    """Returns ``(positive, negative, valid)``, each ``(B,)``; see ``mining.mine_triplets``."""
    num_anchors = anchors.shape[0]
    distance = rules.distance
    with torch.no_grad():
        anchor_positions = anchor_positions.long()
        dense = num_anchors * references.shape[0] <= DENSE_MAX_SCORES
        if dense or rows >= num_anchors:
            scores = distance.mining_scores(anchors, references)
            if dense:
                positive, negative, valid = _mine_dense(
                    scores,
                    anchors,
                    anchor_labels,
                    anchor_positions,
                    reference_labels,
                    reference_mask,
                    rules,
                )
            else:
                positive, negative, valid = _mine_block(
                    scores,
                    anchors,
                    anchor_labels,
                    anchor_positions,
                    _ReferenceClasses(reference_labels, reference_mask),
                    torch.empty_like(scores),
                    rules,
                )
            return positive.to(torch.int32), negative.to(torch.int32), valid
        classes = _ReferenceClasses(reference_labels, reference_mask)
        outputs = (
            torch.empty(num_anchors, dtype=torch.int32, device=anchors.device),
            torch.empty(num_anchors, dtype=torch.int32, device=anchors.device),
            torch.empty(num_anchors, dtype=torch.bool, device=anchors.device),
        )
        buffer = None
        for start in range(0, num_anchors, rows):
            block = slice(start, start + rows)
            scores = distance.mining_scores(anchors[block], references)
            if buffer is None:
                buffer = torch.empty(
                    (rows, scores.shape[1]), dtype=scores.dtype, device=scores.device
                )
            chosen = _mine_block(
                scores,
                anchors[block],
                anchor_labels[block],
                anchor_positions[block],
                classes,
                buffer[: scores.shape[0]],
                rules,
            )
            for out, value in zip(outputs, chosen):
                out[block] = value
    return outputs


class _ReferenceClasses:
    """The references grouped by label: every anchor's same-label columns, as a short list."""

    def __init__(self, labels, mask):
        self.order = torch.argsort(labels, stable=True)
        self.sorted_labels = labels[self.order].contiguous()
        # Masked-out references (empty memory slots) are neither positive nor negative.
        self.mask = mask
        self.excluded = None if mask is None else torch.nonzero(~mask).flatten()

    def same_label_columns(self, anchor_labels):
        """``(columns (n, K), present (n, K))``: the same-label references of each anchor.

        Padding entries repeat the row's first column, or point at column 0 with
        ``present`` False when the label has no reference at all.
        """
        labels = anchor_labels.to(self.sorted_labels.dtype)
        first = torch.searchsorted(self.sorted_labels, labels, right=False)
        count = torch.searchsorted(self.sorted_labels, labels, right=True) - first
        width = max(int(count.max()), 1) if count.numel() else 1
        offsets = torch.arange(width, device=labels.device)
        present = offsets[None, :] < count[:, None]
        slots = torch.where(present, first[:, None] + offsets[None, :], first[:, None])
        slots = slots.clamp(max=self.order.shape[0] - 1)
        return self.order[slots], present


#: Problems of at most this many scores (B=256 in-batch) are mined by :func:`_mine_dense`,
#: where it was faster than the label-sorted path (docs/performance.md, "Implementation
#: choices").
DENSE_MAX_SCORES = 2**16

#: Rows at least this wide find their extreme in two levels (see :func:`arg_extreme`).
TWO_LEVEL_MIN_WIDTH = 1024


def arg_extreme(values, largest):
    """``(extreme value, first index of it)`` of every row of ``values``.

    PyTorch's CPU ``argmin``/``argmax`` are not vectorised: over a row they run about 20
    times slower than ``amin``/``amax``. For wide rows, the value-only reduction first
    finds each row's extreme over chunks of ``c`` columns, ``argmin`` picks the first chunk
    holding it (``M / c`` values per row), and a second ``argmin`` looks inside that chunk
    (``c`` values). A tail of ``M mod c`` columns is searched on its own and wins only when
    strictly better, so the first index among ties is kept.
    """
    width = values.shape[1]
    if width < TWO_LEVEL_MIN_WIDTH:
        index = values.argmax(1) if largest else values.argmin(1)
        return values.gather(1, index[:, None])[:, 0], index
    chunk = 64 if width < 8192 else 128
    main = width - width % chunk
    chunks = values[:, :main].unflatten(1, (-1, chunk))
    if largest:
        best_chunk = chunks.amax(2).argmax(1)
    else:
        best_chunk = chunks.amin(2).argmin(1)
    rows = torch.arange(values.shape[0], device=values.device)
    value, inner = arg_extreme(chunks[rows, best_chunk], largest)
    index = best_chunk * chunk + inner
    if main < width:
        tail_value, tail_index = arg_extreme(values[:, main:], largest)
        better = tail_value > value if largest else tail_value < value
        value = torch.where(better, tail_value, value)
        index = torch.where(better, tail_index + main, index)
    return value, index


def _set_columns(values, columns, present, fill):
    """Writes ``fill`` at ``values[i, columns[i, j]]`` where ``present`` (padding repeats
    columns, so a scatter of kept values could overwrite the fill)."""
    rows = torch.arange(values.shape[0], device=values.device)[:, None].expand_as(columns)
    values[rows[present], columns[present]] = fill


def _mine_dense(
    scores, anchors, anchor_labels, anchor_positions, reference_labels, reference_mask, rules
):
    """The rules of ``mining.rules`` with a dense ``(n, M)`` label mask; overwrites
    ``scores``. Row reductions return the first index of ties, as ``arg_extreme`` does."""
    same = anchor_labels[:, None] == reference_labels[None, :]
    columns = torch.arange(scores.shape[1], device=scores.device)
    positive_mask = same & (columns[None, :] != anchor_positions[:, None])
    if reference_mask is not None:
        # A masked-out reference is neither positive nor negative: treat it as "same".
        positive_mask &= reference_mask[None, :]
        same |= ~reference_mask[None, :]

    hard_positive = rules.positive == "hard"
    fill = -_INF if hard_positive else _INF
    positive_scores = torch.where(positive_mask, scores, fill)
    positive_score, positive = positive_scores.max(1) if hard_positive else positive_scores.min(1)
    has_positive = positive_score != fill

    if rules.negative == "hard":
        negative_score, negative = scores.masked_fill_(same, _INF).min(1)
        return positive, negative, has_positive & (negative_score < _INF)
    negative_scores = scores.masked_fill_(same, -_INF)
    farthest_score, negative = negative_scores.max(1)
    valid = has_positive & (farthest_score > -_INF)
    if rules.negative == "easy":
        return positive, negative, valid
    threshold = semi_hard_threshold(rules.distance, positive_score, anchors, rules.semi_margin)
    excess = F.threshold_(negative_scores - threshold[:, None], 0.0, _INF)
    semi_hard_excess, semi_hard = excess.min(1)
    return positive, torch.where(semi_hard_excess < _INF, semi_hard, negative), valid


def _mine_block(scores, anchors, anchor_labels, anchor_positions, classes, work, rules):
    rows = torch.arange(scores.shape[0], device=scores.device)
    columns, same = classes.same_label_columns(anchor_labels)
    not_self = columns != anchor_positions[:, None]
    candidates = same & not_self
    if classes.mask is not None:
        candidates &= classes.mask[columns]

    # The positive, from the K same-label scores of each row.
    hard_positive = rules.positive == "hard"
    fill = -_INF if hard_positive else _INF
    positive_scores = torch.where(candidates, scores.gather(1, columns), fill)
    positive_score, choice = arg_extreme(positive_scores, largest=hard_positive)
    positive = columns[rows, choice]
    has_positive = candidates.any(1)

    # From here on, same-label columns (the anchor's own among them) are never negatives.
    hard_negative = rules.negative == "hard"
    fill = _INF if hard_negative else -_INF
    _set_columns(scores, columns, same, fill)
    if classes.excluded is not None:
        scores[:, classes.excluded] = fill
    if hard_negative:
        negative_score, negative = arg_extreme(scores, largest=False)
        return positive, negative, has_positive & (negative_score < _INF)
    if rules.negative == "easy":
        negative_score, negative = arg_extreme(scores, largest=True)
        return positive, negative, has_positive & (negative_score > -_INF)

    # Semi-hard: negatives strictly beyond the threshold keep their excess; the rest
    # (including every -inf above) becomes +inf.
    threshold = semi_hard_threshold(rules.distance, positive_score, anchors, rules.semi_margin)
    torch.sub(scores, threshold[:, None], out=work)
    F.threshold_(work, 0.0, _INF)
    semi_hard_excess, negative = arg_extreme(work, largest=False)
    has_semi_hard = semi_hard_excess < _INF
    has_negative = has_semi_hard.clone()
    # Anchors without a positive are invalid whatever their negative: no fallback needed.
    fallback = torch.nonzero(~has_semi_hard & has_positive).flatten()
    if fallback.numel():
        farthest_score, farthest = arg_extreme(scores[fallback], largest=True)
        negative[fallback] = farthest
        has_negative[fallback] = farthest_score > -_INF
    return positive, negative, has_positive & has_negative
