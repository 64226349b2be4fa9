"""Draws docs/verification_roc.png: the ROC of a synthetic verification set, log-scale FAR.

Run from the repository root (any backend): ``.venv/bin/python docs/roc_picture.py``.
The curve is :func:`triplet_tools.evaluation.verification_roc` (exact points at every 16-bit
bucket of the distance); the marked points are ``tar@far=F`` of ``verification_metrics``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from triplet_tools.evaluation import verification_metrics, verification_roc  # noqa: E402

FAR = (1e-4, 1e-3, 1e-2)


def main():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 300, 6000)  # 6,000 faces of 300 people: 18 million pairs
    centres = rng.normal(size=(300, 64))
    embeddings = (centres[labels] + 1.5 * rng.normal(size=(6000, 64))).astype("float32")
    roc = verification_roc(embeddings, labels)
    metrics = verification_metrics(embeddings, labels, far=FAR)
    figure, axes = plt.subplots(figsize=(5.5, 4), dpi=100)
    shown = roc["far"] > 0
    axes.plot(roc["far"][shown], roc["tar"][shown], color="tab:blue", label="ROC (cosine)")
    for target in FAR:
        tar = metrics[f"tar@far={target:g}"]
        axes.plot([target], [tar], "o", color="tab:red")
        axes.annotate(
            f"TAR {tar:.3f} @ FAR {target:g}",
            (target, tar),
            (6, -12),
            textcoords="offset points",
            fontsize=8,
        )
    eer = metrics["eer"]
    axes.plot([eer], [1 - eer], "s", color="tab:green", label=f"EER {eer:.3f}")
    axes.set_xscale("log")
    axes.set_xlim(1e-6, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title(f"ROC AUC {metrics['roc_auc']:.4f}, 6,000 embeddings, every pair")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    out = Path(__file__).with_name("verification_roc.png")
    figure.savefig(out)
    print(out, metrics)


if __name__ == "__main__":
    main()
