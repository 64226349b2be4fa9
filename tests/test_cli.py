"""The triplet-tools command: one-line errors for bad input, and a small end-to-end demo run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from triplet_tools.demo import cli
from triplet_tools.demo import data as datasets


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of ``triplet-tools ARGS`` run in this process."""
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# absl's log format, which TensorFlow 2.21 prints at import even with TF_CPP_MIN_LOG_LEVEL=3.
BACKEND_IMPORT_LOG = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |"
                                r"WARNING: All log messages before absl::InitializeLog\(\))")


def assert_one_line_error(status, err, expected, backend_noise=False):
    assert status == 2
    lines = err.splitlines()
    if backend_noise:  # a fresh process imports the backend; its own log lines are not ours
        lines = [line for line in lines if not BACKEND_IMPORT_LOG.match(line)]
    assert len(lines) == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert lines[0].startswith("triplet-tools") and expected in lines[0], err


@pytest.fixture
def files(tmp_path):
    """Bad input files, by name."""
    paths = {}

    def npz(name, **arrays):
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], **arrays)

    npz("rank3", x=np.zeros((6, 2, 2)), y=np.arange(6) % 2)
    npz("lengths", x=np.zeros((6, 2)), y=np.arange(5) % 2)
    npz("one_class", x=np.random.default_rng(0).normal(size=(8, 2)), y=np.zeros(8))
    npz("no_y", x=np.zeros((6, 2)))
    npz("text_x", x=np.array([["a", "b"]] * 6), y=np.arange(6) % 2)
    npz("tiny_classes", x=np.random.default_rng(0).normal(size=(6, 2)), y=np.arange(6) % 2)
    paths["not_npz"] = tmp_path / "fake.npz"
    paths["not_npz"].write_text("x,y\n")
    paths["text_csv"] = tmp_path / "text.csv"
    paths["text_csv"].write_text("f1,f2,label\n1,2,a\n3,oops,b\n")
    paths["ragged_csv"] = tmp_path / "ragged.csv"
    paths["ragged_csv"].write_text("f1,f2,label\n1,2,a\n3,b\n")
    paths["txt"] = tmp_path / "data.txt"
    paths["txt"].write_text("1 2 3\n")
    return paths


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--data", "{missing}"], "no such file: "),
        (["--data", "rank3"], "x must be (N, D) with D >= 1 and y (N,); received x of shape (6, 2, 2)"),
        (["--data", "lengths"], "received x of shape (6, 2) and y of shape (5,)"),
        (["--data", "one_class"], "too few classes: found 1, need at least 2"),
        (["--data", "no_y"], "no array named 'y' (found: x)"),
        (["--data", "text_x"], "x must hold numbers; received dtype <U1"),
        (["--data", "tiny_classes"], "no class has 2 or more samples in the held-out 30%"),
        (["--data", "not_npz"], "not a .npz archive"),
        (["--data", "text_csv"], "line 3, column 'f2': non-numeric feature 'oops'"),
        (["--data", "ragged_csv"], "line 3: 2 fields, the header has 3"),
        (["--data", "text_csv", "--label-column", "class"], "no column named 'class' in the header row (found: f1, f2, label)"),
        (["--data", "txt"], "unsupported file type '.txt'"),
        (["--loss", "triplet"], "argument --loss: invalid choice: 'triplet'"),
        (["--distance", "hamming"], "argument --distance: invalid choice: 'hamming'"),
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1; received '0'"),
        (["--batch-size", "3"], "--batch-size must be at least 4 (2 classes x 2 samples); received 3"),
        (["--memory", "-5"], "argument --memory: expected an integer >= 0; received '-5'"),
    ],
)
def test_bad_input_gives_one_error_line_and_status_2(capsys, tmp_path, files, args, expected):
    args = [str(files.get(a, a)).replace("{missing}", str(tmp_path / "missing.npz")) for a in args]
    status, out, err = run_cli(capsys, "demo", "--out", str(tmp_path / "out"), *args)
    assert_one_line_error(status, err, expected)
    assert not (tmp_path / "out").exists()


def test_no_subcommand(capsys):
    with_status = run_cli(capsys)
    assert_one_line_error(with_status[0], with_status[2], "required: COMMAND")


def test_python_dash_m(capsys, tmp_path, monkeypatch):
    """`python -m triplet_tools` runs the same main() (in this process, via runpy)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["triplet_tools", "demo", "--data", str(tmp_path / "no.npz")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("triplet_tools", run_name="__main__")
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "no such file: ")


def test_installed_console_script_fails_cleanly(tmp_path):
    """The `triplet-tools` script that pip installed, in a fresh process."""
    script = os.path.join(os.path.dirname(sys.executable), "triplet-tools")
    done = subprocess.run([script, "demo", "--data", str(tmp_path / "missing.npz")],
                          capture_output=True, text=True)
    assert_one_line_error(done.returncode, done.stderr, "no such file: ", backend_noise=True)


def digits_subset(path, per_class=24):
    """The first ``per_class`` digits of every class, as an .npz file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    np.savez(path, x=digits.data[rows], y=digits.target[rows])
    return digits.data[rows], digits.target[rows]


def test_demo_end_to_end_on_a_small_subset(capsys, tmp_path):
    x, y = digits_subset(tmp_path / "digits.npz")
    out = tmp_path / "out"
    status, printed, err = run_cli(capsys, "demo", "--data", str(tmp_path / "digits.npz"),
                                   "--epochs", "2", "--out", str(out), "--seed", "3")
    assert status == 0, err
    for row in ("raw features", "trained embedding"):
        assert row in printed
    assert "map@r" in printed and "val_map@r" in printed and "active_triplets" in printed
    assert str(out.resolve()) in printed.splitlines()[-1]

    report = json.loads((out / "metrics.json").read_text())
    held_out = datasets.holdout_split(np.unique(y, return_inverse=True)[1], 0.3, seed=3)
    assert held_out.sum() == 10 * 7  # round(0.3 * 24) of every class
    want = ref.retrieval_metrics(x[held_out], y[held_out], distance_name="cosine")
    assert report["raw"] == pytest.approx(want, abs=1e-6)
    assert len(report["history"]["val_map@r"]) == 2 and report["history"]["valid_anchors"] == [1.0, 1.0]
    assert set(report["trained"]) == set(want)

    from matplotlib.image import imread

    for name, shape in (("embedding_map.png", (520, 1100)), ("training_curves.png", (360, 1200))):
        assert imread(out / name).shape[:2] == shape


@pytest.mark.parametrize("memory", [0, 24])
def test_demo_on_a_csv_with_string_labels(capsys, tmp_path, memory):
    rng = np.random.default_rng(0)
    lines = ["a,label,b,c"]
    for i in range(60):
        label = ["cat", "dog", "emu"][i % 3]
        centre = {"cat": 0.0, "dog": 3.0, "emu": 6.0}[label]
        a, b, c = rng.normal(centre, 1.0, size=3)
        lines.append(f"{a},{label},{b},{c}")
    (tmp_path / "animals.csv").write_text("\n".join(lines) + "\n")
    status, printed, err = run_cli(capsys, "demo", "--data", str(tmp_path / "animals.csv"),
                                   "--epochs", "1", "--loss", "priming", "--distance", "l2",
                                   "--map", "pca", "--batch-size", "12", "--out",
                                   str(tmp_path / "out"), "--memory", str(memory))
    assert status == 0, err
    assert "60 samples, 3 features, 3 classes; 18 held out" in printed
    assert "batches: 3 classes x 4 samples" in printed
    assert f"cross-batch memory: {memory or 'none'}" in printed
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["memory"] == memory
    assert (tmp_path / "out" / "embedding_map.png").exists()


def test_holdout_split_takes_30_percent_of_every_class():
    labels = np.repeat([0, 1, 2], [10, 5, 2])
    held_out = datasets.holdout_split(labels, 0.3, seed=0)
    assert [int(held_out[labels == c].sum()) for c in range(3)] == [3, 2, 1]  # round(3, 1.5, 0.6)
