"""Which Keras backend ``import keras`` will load, found without importing Keras.

``triplet_tools/__init__.py`` asks :func:`import_problem` before it imports Keras, and the
``triplet-tools`` command asks :func:`choose_for_command` before it imports anything that
does, so that a backend Keras cannot load ends in one line instead of a traceback. Keras
picks its backend from ``KERAS_BACKEND``, else from ``keras.json`` in ``KERAS_HOME`` (or
``~/.keras``), else TensorFlow; this module reads the same places and imports nothing.

Example:

>>> WORKING
('tensorflow', 'jax', 'torch')
>>> import_problem() is None  # this process imported triplet_tools, so Keras loaded
True
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

#: The backends triplet-tools trains on.
WORKING = ("tensorflow", "jax", "torch")
#: Every backend name Keras itself knows, with the package it imports.
KERAS_BACKENDS = {
    "tensorflow": "tensorflow",
    "jax": "jax",
    "torch": "torch",
    "numpy": "numpy",
    "openvino": "openvino",
}


def _keras_json():
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(os.path.expanduser(home), "keras.json")


def configured():
    """``(backend, where it comes from)`` as Keras will choose it (or has chosen it)."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        name = keras.config.backend()
        named = os.environ.get("KERAS_BACKEND") == name
        return name, "KERAS_BACKEND" if named else "the Keras already imported"
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    try:
        with open(_keras_json(), encoding="utf-8") as handle:
            name = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        name = None
    # Keras writes "tensorflow" into a new keras.json itself: that is its default, not a choice.
    if name and name != "tensorflow":
        return name, _keras_json()
    return "tensorflow", "Keras' default"


def is_installed(backend):
    """Whether the package of Keras backend ``backend`` can be imported (nothing is imported)."""
    package = KERAS_BACKENDS.get(backend)
    try:
        return package is not None and importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken half-import
        return False


def installed():
    """The backends of :data:`WORKING` that are installed, in that order."""
    return [name for name in WORKING if is_installed(name)]


def _installed_text():
    return ", ".join(installed()) or "none"


def import_problem():
    """Why ``import keras`` would fail (an unknown or missing backend), or ``None``."""
    name, source = configured()
    if name not in KERAS_BACKENDS:
        return (
            f"Keras backend {name!r} (from {source}) does not exist; the backends that "
            f"work are {', '.join(WORKING)} (installed: {_installed_text()}): set "
            "KERAS_BACKEND to one of them"
        )
    if not is_installed(name):
        return (
            f"Keras backend {name!r} (from {source}) is not installed; installed: "
            f"{_installed_text()}: set KERAS_BACKEND to one of them, or pip install "
            f'"triplet-tools[{name}]"'
        )
    return None


def choose_for_command():
    """Settles the backend before the command imports Keras; returns a note or ``None``.

    Without ``KERAS_BACKEND`` and with TensorFlow (Keras' default) missing, the one installed
    backend is chosen (``KERAS_BACKEND`` is set for this process) and the note says so.

    Raises:
        ValueError: one line naming the backends that work and those installed, when the
            backend is unknown, not installed, one triplet-tools cannot train on (numpy,
            openvino), or when several or none could be chosen.
    """
    name, source = configured()
    if source == "Keras' default" and not is_installed(name):
        choices = installed()
        if len(choices) == 1:
            os.environ["KERAS_BACKEND"] = choices[0]
            return (
                f"KERAS_BACKEND is not set and TensorFlow (Keras' default) is not "
                f"installed: using {choices[0]}, the one installed backend"
            )
        if choices:
            raise ValueError(
                f"KERAS_BACKEND is not set and TensorFlow (Keras' default) is not "
                f"installed; choose one of the installed backends: "
                f"KERAS_BACKEND={' or '.join(choices)}"
            )
        raise ValueError(
            'no Keras backend is installed: pip install "triplet-tools[jax]" '
            "(or [tensorflow], or [torch])"
        )
    problem = import_problem()
    if problem:
        raise ValueError(problem)
    if name not in WORKING:
        raise ValueError(
            f"Keras backend {name!r} (from {source}) cannot train (no model.fit); "
            f"the backends that work are {', '.join(WORKING)} (installed: "
            f"{_installed_text()}): set KERAS_BACKEND to one of them"
        )
    return None
