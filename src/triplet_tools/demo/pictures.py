"""The demo's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

import numpy as np

#: 2-D map methods of :func:`project_2d`.
MAP_METHODS = ("tsne", "pca")


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def project_2d(features, method="tsne", seed=0):
    """``(N, 2)`` coordinates of ``features`` ``(N, D)`` by t-SNE (keeps neighbourhoods) or PCA
    (a linear projection); ``seed`` fixes either.

    Example:

    >>> import numpy as np
    >>> project_2d(np.random.default_rng(0).normal(size=(40, 5)), "pca").shape
    (40, 2)
    """
    if method not in MAP_METHODS:
        raise ValueError(
            f"Unknown map method: received {method!r}; allowed values are "
            f"{', '.join(map(repr, MAP_METHODS))}."
        )
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    # One OpenMP thread: on a busy 2-core machine, spinning worker threads made t-SNE of 540
    # points take 15 s instead of 1 s. 500 iterations (not 1000) settle a map this small.
    with threadpool_limits(limits=1):
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed
        ).fit_transform(features)


def embedding_map(raw, trained, labels, class_names, scores, path, method="tsne", seed=0):
    """Two scatter plots side by side, raw features and trained embedding, coloured by class.

    Args:
        raw: ``(N, D)`` held-out features; trained: ``(N, E)`` their embeddings.
        labels: ``(N,)`` ints in ``0 .. C-1``; class_names: ``C`` names for the legend.
        scores: ``(raw MAP@R, trained MAP@R)`` for the titles.
        path: the PNG to write.
        method: ``"tsne"`` (default) or ``"pca"``, see :func:`project_2d`; seed: its seed.

    Example:

    >>> import os, tempfile
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> path = os.path.join(tempfile.mkdtemp(), "map.png")
    >>> embedding_map(rng.normal(size=(30, 4)), rng.normal(size=(30, 3)), np.arange(30) % 3,
    ...               ("a", "b", "c"), (0.4, 0.9), path, method="pca")
    >>> os.path.getsize(path) > 0
    True
    """
    figure = _figure(11, 5.2)
    axes = figure.subplots(1, 2)
    colours = _colours(len(class_names))
    titles = (f"raw features (MAP@R {scores[0]:.2f})", f"trained embedding (MAP@R {scores[1]:.2f})")
    for axis, features, title in zip(axes, (raw, trained), titles):
        points = project_2d(features, method, seed)
        for label, name in enumerate(class_names):
            chosen = labels == label
            axis.scatter(
                points[chosen, 0], points[chosen, 1], s=9, color=colours[label], label=str(name)
            )
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    name = "t-SNE" if method == "tsne" else "PCA"
    figure.suptitle(f"Held-out points, {name} map, one colour per class")
    if len(class_names) <= 20:
        axes[1].legend(
            title="class",
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            markerscale=2,
            frameon=False,
        )
    figure.savefig(path)


def training_curves(epochs, loss, active, map_at_r, raw_map_at_r, path):
    """Loss, share of active triplets and validation MAP@R per epoch, in three panels.

    Args:
        epochs: the 0-based epochs of ``map_at_r``; loss, active: one value per epoch.
        map_at_r: held-out MAP@R at ``epochs``; raw_map_at_r: the raw features' (a line).
        path: the PNG to write.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> training_curves([0, 1], [0.5, 0.3], [1.0, 0.8], [0.6, 0.7], 0.5, path)
    >>> os.path.getsize(path) > 0
    True
    """
    figure = _figure(12, 3.6)
    axes = figure.subplots(1, 3)
    epochs = np.asarray(epochs) + 1
    axes[0].plot(epochs, loss, marker=".")
    axes[0].set_title("training loss")
    axes[1].plot(epochs, active, marker=".", color="tab:orange")
    axes[1].set_title("share of active triplets (loss > 0)")
    axes[1].set_ylim(-0.03, 1.03)
    axes[2].plot(epochs, map_at_r, marker=".", color="tab:green", label="trained embedding")
    axes[2].axhline(raw_map_at_r, color="grey", linestyle="--", label="raw features")
    axes[2].set_title("held-out MAP@R")
    axes[2].set_ylim(0, 1.02)
    axes[2].legend(loc="lower right")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    figure.savefig(path)


def _colours(count):
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]
