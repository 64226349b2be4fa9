"""The verification benchmark: the recipe it measures computes what ours computes, and a
worker reports its figures (tiny N; nothing here asserts a speed)."""

import json
import subprocess
import sys

import pytest

import verification_bench
from triplet_tools.evaluation import verification_metrics


def test_recipe_agrees_with_ours():
    data = verification_bench.make_data(400, dim=8, classes=20)
    theirs = verification_bench.recipe(data["embeddings"], data["labels"], far=(0.01, 0.1))
    ours = verification_metrics(data["embeddings"], data["labels"], far=(0.01, 0.1))
    for name, value in theirs.items():  # scipy's float64 distances against our float32
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_runner_reports_a_case(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            verification_bench.__file__,
            "--quick",
            "--cases",
            "retrieval-groups-20k",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert result["n"] == 2000 and result["peak_mb"] > 0 and 0 < result["map"] <= 1, done.stdout
