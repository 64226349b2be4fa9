"""Shared by the tests of SPEC's last part: the random batches, the tolerances and a
``.keras`` save / reload helper. Imports nothing from the library, so that each test module
fails only on its own imports."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

from backend import to_numpy

#: float32 computations against the float64 reference, on values of order 1.
VALUE_TOL = {"rtol": 1e-4, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-3, "atol": 5e-5}


def batch(kind):
    """Random batches, rows in shuffled class order.

    ``full``: 4 classes x 3, every anchor valid. ``uneven``: a class of 6, of 3, of 2 and
    two classes of 1 (anchors without a positive: invalid, left out of every count).
    """
    if kind == "full":
        labels = np.tile(np.arange(4), 3)
        seed = 11
    else:
        labels = np.random.default_rng(5).permutation(np.repeat([0, 1, 2, 3, 4], [6, 3, 2, 1, 1]))
        seed = 12
    x = np.random.default_rng(seed).normal(size=(len(labels), 3)).astype("float32")
    return labels, x


def save_and_reload(tmp_path, losses, fresh_process=False):
    """Saves one small compiled model per loss to ``.keras`` and reloads it with
    ``keras.models.load_model`` and no custom_objects, here or (``fresh_process``) in a new
    process that imports nothing but ``triplet_tools``. Returns, per loss, the reloaded
    loss's class name, config and value on a fixed batch, and the values of the originals."""
    labels, x = batch("uneven")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    paths, expected = [], []
    for i, loss in enumerate(losses):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
        model.compile("adam", loss)
        path = tmp_path / f"model{i}.keras"
        model.save(path)
        paths.append(str(path))
        expected.append(float(to_numpy(loss(labels, model.predict(x, verbose=0)))))
    if not fresh_process:
        reloaded = []
        for path in paths:
            model = keras.models.load_model(path)
            value = to_numpy(model.loss(labels, model.predict(x, verbose=0)))
            reloaded.append(
                {
                    "class": type(model.loss).__name__,
                    "config": model.loss.get_config(),
                    "value": float(value),
                }
            )
        return reloaded, expected
    script = textwrap.dedent(f"""
        import json, numpy as np, keras
        import triplet_tools  # registers the losses
        x = np.load({str(tmp_path / "x.npy")!r}); y = np.load({str(tmp_path / "y.npy")!r})
        out = []
        for path in {paths!r}:
            model = keras.models.load_model(path)
            value = model.loss(y, model.predict(x, verbose=0))
            if hasattr(value, "detach"):
                value = value.detach()
            out.append({{"class": type(model.loss).__name__, "config": model.loss.get_config(),
                         "value": float(keras.ops.convert_to_numpy(value))}})
        print(json.dumps(out))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), expected
