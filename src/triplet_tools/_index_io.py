"""The file format of :class:`~triplet_tools.index.EmbeddingIndex`: no pickle anywhere.

One ``.npz`` archive (``numpy.savez``) of plain arrays: ``settings`` (UTF-8 JSON bytes:
format, version, distance, engine, HNSW parameters, the calibration's scalars), ``rows``
``(N, D)`` float32, ``ids`` ``(N,)`` int64, optional ``labels`` (int64, float64 or unicode),
optional ``faiss`` (faiss' own serialization, uint8) and ``curve_<name>`` for a calibration.
It is read with ``numpy.load(..., allow_pickle=False)``.
"""

import json
import zipfile

import numpy as np

from triplet_tools import _search
from triplet_tools import distances as distances_module
from triplet_tools.calibration import CURVE_KEYS, METRICS, VOTES, Calibration

FORMAT = "triplet_tools.EmbeddingIndex"
VERSION = 1


def save_index(index, path):
    settings = {
        "format": FORMAT,
        "version": VERSION,
        "distance": distances_module.serialize(index.distance),
        "engine": index.engine,
        "hnsw_m": index.hnsw_m,
        "ef_construction": index.ef_construction,
        "ef_search": index.ef_search,
        "dim": index.dim,
        "has_labels": index._has_labels,
        "calibration": None,
    }
    arrays = {"rows": index._rows, "ids": index._ids}
    if index._labels is not None:
        arrays["labels"] = index._labels
    if index.engine == "faiss" and len(index):
        index.search(index._rows[:1], 1)  # builds the graph if a remove dropped it
        arrays["faiss"] = _search.serialize_faiss(index._faiss)
    cal = index.calibration
    if cal is not None:
        settings["calibration"] = {
            "threshold": cal.threshold,
            "metric": cal.metric,
            "value": cal.value,
            "k": cal.k,
            "vote": cal.vote,
        }
        arrays.update({f"curve_{key}": cal.curve[key] for key in CURVE_KEYS})
    arrays["settings"] = np.frombuffer(json.dumps(settings).encode(), np.uint8)
    with open(path, "wb") as file:  # a file object: numpy appends no ".npz" to the name
        np.savez(file, **arrays)


def load_index(cls, path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        settings = json.loads(arrays.pop("settings").tobytes().decode())
        if not isinstance(settings, dict) or settings.get("format") != FORMAT:
            raise ValueError("no EmbeddingIndex settings")
        if settings.get("version") != VERSION:
            raise ValueError(f"format version {settings.get('version')!r}, expected {VERSION}")
        index = cls(
            settings["distance"],
            settings["engine"],
            hnsw_m=settings["hnsw_m"],
            ef_construction=settings["ef_construction"],
            ef_search=settings["ef_search"],
        )
        _restore(index, settings, arrays)
    except FileNotFoundError:
        raise
    except ImportError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a readable EmbeddingIndex file (corrupt or foreign): {error}"
        ) from None
    return index


def _restore(index, settings, arrays):
    rows, ids = arrays["rows"], arrays["ids"]
    has_labels = settings["has_labels"]
    labels = arrays.get("labels")
    if (
        rows.dtype != np.float32
        or rows.ndim != 2
        or ids.dtype != np.int64
        or ids.shape != (len(rows),)
        or np.any(np.diff(ids) <= 0)
        or not np.all(np.isfinite(rows))
        or (labels is None) == bool(has_labels)
        or (labels is not None and labels.shape != ids.shape)
        or (settings["dim"] is not None and rows.shape[1] != settings["dim"])
    ):
        raise ValueError("inconsistent arrays")
    if has_labels is not None:
        index._rows, index._ids, index._has_labels = rows, ids, bool(has_labels)
        index._labels = labels
    if "faiss" in arrays:
        index._features = _search.features(index.distance, rows)
        index._faiss = _search.deserialize_faiss(arrays["faiss"])
        if index._faiss.ntotal != len(ids):
            raise ValueError("the faiss index does not hold every row")
    cal = settings["calibration"]
    if cal is not None:
        curve = {key: arrays[f"curve_{key}"].astype(np.float64) for key in CURVE_KEYS}
        if cal["metric"] not in METRICS or cal["vote"] not in VOTES:
            raise ValueError("unknown calibration metric or vote")
        index.calibration = Calibration(
            threshold=float(cal["threshold"]),
            metric=cal["metric"],
            value=float(cal["value"]),
            k=int(cal["k"]),
            vote=cal["vote"],
            curve=curve,
        )
