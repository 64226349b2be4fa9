"""The demo's last step: use the trained embedding to decide "which class, or unknown".

```
classes never trained on (20% of them, with 6+ classes) -> the "unseen" queries
held-out rows of the trained classes -> 50% gallery (indexed), 25% calibration, 25% report
unseen rows -> 50% calibration, 50% report
EmbeddingIndex(gallery) -> calibrate a threshold (best F1) -> match the report queries
-> share of known queries given their right label, of unseen ones refused; open_set.png
```

The threshold sees some unseen-class rows (as one would calibrate with a sample of
distractors); the reported rows are disjoint from every row used to choose it.
"""

import os

import numpy as np
from keras import ops

from triplet_tools.index import EmbeddingIndex

#: Classes never trained on: this share of them, when there are at least MIN_CLASSES.
UNSEEN_FRACTION = 0.2
MIN_CLASSES = 6
#: The label a refused query gets (class ids are >= 0).
UNKNOWN = -1


def unseen_classes(labels, seed):
    """The class ids kept out of training: ``round(0.2 * C)`` of them (at least one) when
    there are ``C >= 6`` classes, else none.

    Example:

    >>> unseen_classes(np.arange(10), seed=0).tolist(), unseen_classes(np.arange(5), 0).tolist()
    ([4, 8], [])
    """
    classes = np.unique(labels)
    if len(classes) < MIN_CLASSES:
        return classes[:0]
    count = max(1, int(round(UNSEEN_FRACTION * len(classes))))
    return np.sort(np.random.default_rng(seed + 1).permutation(classes)[:count])


def kept_out_note(split, dataset):
    """The end of the demo's ``data:`` line: the classes kept out of training, if any."""
    if len(split["y_unseen"]) == 0:
        return ""
    names = ", ".join(str(dataset.class_names[c]) for c in np.unique(split["y_unseen"]))
    return f"; classes {names} ({len(split['y_unseen'])} samples) kept out for the open set"


def _parts(labels, fractions, rng):
    """Per class, consecutive shares of its shuffled rows: one mask per fraction."""
    masks = [np.zeros(len(labels), bool) for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum([0, *fractions]) * len(members)).astype(int)
        for mask, start, stop in zip(masks, bounds[:-1], bounds[1:]):
            mask[members[start:stop]] = True
    return masks


def evaluate(embed, x_known, y_known, x_unseen, y_unseen, distance, seed):
    """Index, calibrate and match; returns what it measured.

    Args:
        embed: maps model inputs ``(n, F)`` to embeddings ``(n, D)`` (NumPy).
        x_known, y_known: held-out rows of the trained classes.
        x_unseen, y_unseen: rows of the classes never trained on.
        distance: the index's distance.
        seed: fixes the split.

    Returns:
        A dict: ``threshold``, ``known_right`` (share of known report queries given their
        right label), ``known_refused``, ``unseen_refused``, ``known_right_without_threshold``,
        the counts, and ``calibration`` (the :class:`~triplet_tools.calibration.Calibration`,
        not JSON: the caller draws and drops it).
    """
    rng = np.random.default_rng(seed + 2)
    gallery, calibrate_known, report_known = _parts(y_known, (0.5, 0.25, 0.25), rng)
    calibrate_unseen, report_unseen = _parts(y_unseen, (0.5, 0.5), rng)
    index = EmbeddingIndex(distance)
    index.add(embed(x_known[gallery]), labels=y_known[gallery])
    calibration = index.calibrate(
        embed(np.concatenate([x_known[calibrate_known], x_unseen[calibrate_unseen]])),
        np.concatenate([y_known[calibrate_known], y_unseen[calibrate_unseen]]),
        metric="f1",
    )
    known = embed(x_known[report_known])
    predicted_known = index.match(known, calibration, unknown=UNKNOWN)
    predicted_unseen = index.match(embed(x_unseen[report_unseen]), calibration, unknown=UNKNOWN)
    nearest = index.search(known, 1).labels[:, 0]
    truth = y_known[report_known]
    return {
        "threshold": calibration.threshold,
        "calibration_f1": calibration.value,
        "gallery": int(gallery.sum()),
        "calibration_queries": int(calibrate_known.sum() + calibrate_unseen.sum()),
        "known_queries": int(report_known.sum()),
        "unseen_queries": int(report_unseen.sum()),
        "known_right": float(np.mean(predicted_known == truth)),
        "known_refused": float(np.mean(predicted_known == UNKNOWN)),
        "unseen_refused": float(np.mean(predicted_unseen == UNKNOWN)),
        "known_right_without_threshold": float(np.mean(nearest == truth)),
        "calibration": calibration,
    }


def report_lines(measured, unseen_names, distance):
    """The demo's lines about the open-set step.

    Example:

    >>> m = {"gallery": 200, "calibration_queries": 150, "threshold": 0.25,
    ...      "calibration_f1": 0.9, "known_queries": 100, "unseen_queries": 90,
    ...      "known_right": 0.9, "known_refused": 0.08, "unseen_refused": 0.85,
    ...      "known_right_without_threshold": 0.97}
    >>> for line in report_lines(m, ["7", "9"], "cosine"):
    ...     print(line)
    open set: classes 7, 9 never seen in training; 200 held-out embeddings of the others indexed
      cosine threshold 0.250: best F1 (0.900) on 150 calibration queries
      known-class queries (100): 90.0% right label, 8.0% refused (97.0% right, no threshold)
      unseen-class queries (90): 85.0% refused as unknown
    """
    m = measured
    return [
        f"open set: classes {', '.join(unseen_names)} never seen in training; {m['gallery']} "
        "held-out embeddings of the others indexed",
        f"  {distance} threshold {m['threshold']:.3f}: best F1 ({m['calibration_f1']:.3f}) on "
        f"{m['calibration_queries']} calibration queries",
        f"  known-class queries ({m['known_queries']}): {m['known_right']:.1%} right label, "
        f"{m['known_refused']:.1%} refused ({m['known_right_without_threshold']:.1%} right, "
        "no threshold)",
        f"  unseen-class queries ({m['unseen_queries']}): {m['unseen_refused']:.1%} refused as "
        "unknown",
    ]


def run_step(model, split, class_names, distance, seed, out, echo):
    """The demo's open-set step on the trained ``model`` and the demo's ``split``: prints
    :func:`report_lines`, draws ``open_set.png`` in ``out``; returns the measures (with
    ``picture``, its path), or ``None`` when no class was kept out of training."""
    if len(split["y_unseen"]) == 0:
        return None
    embed = lambda x: ops.convert_to_numpy(model.predict(x, verbose=0))  # noqa: E731
    measured = evaluate(
        embed,
        split["x_test"],
        split["y_test"],
        split["x_unseen"],
        split["y_unseen"],
        distance,
        seed,
    )
    names = [str(class_names[c]) for c in np.unique(split["y_unseen"])]
    for line in report_lines(measured, names, distance):
        echo(line)
    measured["picture"] = os.path.join(out, "open_set.png")
    threshold_picture(measured.pop("calibration"), measured["picture"])
    measured["unseen_classes"] = names
    return measured


def threshold_picture(calibration, path):
    """Precision, recall and F1 against the distance threshold, the chosen one marked.

    Example:

    >>> import os, tempfile
    >>> from triplet_tools.calibration import calibrate_from_votes
    >>> cal = calibrate_from_votes(np.array([0.1, 0.2, 0.3]), np.array([True, False, True]))
    >>> path = os.path.join(tempfile.mkdtemp(), "open_set.png")
    >>> threshold_picture(cal, path)
    >>> os.path.getsize(path) > 0
    True
    """
    from triplet_tools.demo.pictures import _figure

    figure = _figure(7, 4)
    axis = figure.subplots()
    curve = calibration.curve
    for key, colour in (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green")):
        axis.plot(curve["threshold"], curve[key], label=key, color=colour, drawstyle="steps-post")
    axis.axvline(calibration.threshold, color="black", linestyle="--", linewidth=1)
    axis.annotate(
        f"chosen {calibration.threshold:.3f}\n({calibration.metric} {calibration.value:.3f})",
        (calibration.threshold, 0.05),
        xytext=(6, 0),
        textcoords="offset points",
    )
    axis.set_xlabel("distance threshold (accept a match iff distance <= threshold)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title("calibration: known classes matched, unseen classes refused")
    axis.grid(alpha=0.3)
    axis.legend(loc="center right")
    figure.savefig(path)
