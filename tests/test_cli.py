"""The triplet-tools command: one-line errors for bad input, and a small end-to-end demo run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from triplet_tools.demo import cli, openset
from triplet_tools.demo import data as datasets


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of ``triplet-tools ARGS`` run in this process."""
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# absl's log format, which TensorFlow 2.21 prints at import even with TF_CPP_MIN_LOG_LEVEL=3.
BACKEND_IMPORT_LOG = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |"
    r"WARNING: All log messages before absl::InitializeLog\(\))"
)


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
    paths["two_labels_csv"] = tmp_path / "two_labels.csv"
    paths["two_labels_csv"].write_text("label,f1,label\na,1,b\nb,2,a\n")
    paths["overflow_csv"] = tmp_path / "overflow.csv"
    paths["overflow_csv"].write_text("f1,f2,label\n1e39,2,a\n3,-2e39,b\n1,1,a\n")
    npz("overflow", x=np.array([[0.0, 1.0], [0.0, 5e38], [1.0, 1.0], [2.0, 2.0]]), y=[0, 0, 1, 1])
    paths["folder"] = tmp_path / "a_folder"
    paths["folder"].mkdir()
    return paths


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--data", "{missing}"], "no such file: "),
        (
            ["--data", "rank3"],
            "x must be (N, D) with D >= 1 and y (N,); received x of shape (6, 2, 2)",
        ),
        (["--data", "lengths"], "received x of shape (6, 2) and y of shape (5,)"),
        (["--data", "one_class"], "too few classes: found 1, need at least 2"),
        (["--data", "no_y"], "no array named 'y' (found: x)"),
        (["--data", "text_x"], "x must hold numbers; received dtype <U1"),
        (["--data", "tiny_classes"], "no class has 2 or more samples in the held-out 30%"),
        (["--data", "not_npz"], "not a .npz archive"),
        (["--data", "text_csv"], "line 3, column 'f2': non-numeric feature 'oops'"),
        (["--data", "ragged_csv"], "line 3: 2 fields, the header has 3"),
        (
            ["--data", "text_csv", "--label-column", "class"],
            "no column named 'class' in the header row (found: f1, f2, label)",
        ),
        (["--data", "txt"], "unsupported file type '.txt'"),
        (["--loss", "triplet"], "argument --loss: invalid choice: 'triplet'"),
        (["--distance", "hamming"], "argument --distance: invalid choice: 'hamming'"),
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1; received '0'"),
        (
            ["--batch-size", "3"],
            "--batch-size must be at least 4 (2 classes x 2 samples); received 3",
        ),
        (["--memory", "-5"], "argument --memory: expected an integer >= 0; received '-5'"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0; received '-1'"),
        (["--seed", "1.5"], "argument --seed: expected an integer >= 0; received '1.5'"),
        (
            ["--data", "two_labels_csv"],
            "the header names 'label' 2 times (columns 1, 3); name the label column once",
        ),
        (
            ["--data", "overflow_csv"],
            (
                "2 values overflow float32 (largest 3.403e+38), which the model computes in: "
                "line 2 column 'f1' = 1e39, line 3 column 'f2' = -2e39"
            ),
        ),
        (
            ["--data", "overflow"],
            "1 values overflow float32 (largest 3.403e+38), which the model computes in: "
            "x[1, 1] = 5e+38",
        ),
        (["--data", "folder"], "a_folder is a folder; --data takes a .npz or .csv file"),
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


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]], ids=["top", "demo"])
def test_help_text_has_no_format_escapes(capsys, argv):
    """argparse %-formats help strings but not descriptions: "30%%" in the demo's description
    used to reach the screen as a literal "%%"."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "%%" not in out and "%(" not in out, out
    if argv[0] == "demo":
        assert "holding out 30% of every class" in " ".join(out.split())


def test_python_dash_m(capsys, tmp_path, monkeypatch):
    """`python -m triplet_tools` runs the same main() (in this process, via runpy)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["triplet_tools", "demo", "--data", str(tmp_path / "no.npz")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("triplet_tools", run_name="__main__")
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "no such file: ")


@pytest.mark.slow
def test_installed_console_script_fails_cleanly(tmp_path):
    """The `triplet-tools` script that pip installed, in a fresh process."""
    script = os.path.join(os.path.dirname(sys.executable), "triplet-tools")
    done = subprocess.run(
        [script, "demo", "--data", str(tmp_path / "missing.npz")], capture_output=True, text=True
    )
    assert_one_line_error(done.returncode, done.stderr, "no such file: ", backend_noise=True)


def digits_subset(path, per_class=24):
    """The first ``per_class`` digits of every class, as an .npz file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(10)])
    np.savez(path, x=digits.data[rows], y=digits.target[rows])
    return digits.data[rows], digits.target[rows]


@pytest.mark.slow
def test_demo_end_to_end_on_a_small_subset(capsys, tmp_path):
    x, y = digits_subset(tmp_path / "digits.npz")
    out = tmp_path / "out"
    status, printed, err = run_cli(
        capsys,
        "demo",
        "--data",
        str(tmp_path / "digits.npz"),
        "--epochs",
        "2",
        "--out",
        str(out),
        "--seed",
        "3",
    )
    assert status == 0, err
    for row in ("raw features", "trained embedding"):
        assert row in printed
    assert "map@r" in printed and "val_map@r" in printed and "active_triplets" in printed
    assert str(out.resolve()) in printed.splitlines()[-1]

    report = json.loads((out / "metrics.json").read_text())
    # Two of the ten classes (20%) are kept out of training for the open-set step.
    unseen = np.isin(y, openset.unseen_classes(y, seed=3))
    assert len(np.unique(y[unseen])) == 2
    held_out = datasets.holdout_split(np.unique(y, return_inverse=True)[1], 0.3, seed=3) & ~unseen
    assert held_out.sum() == 8 * 7  # round(0.3 * 24) of every trained class
    want = ref.retrieval_metrics(x[held_out], y[held_out], distance_name="cosine")
    assert report["raw"] == pytest.approx(want, abs=1e-6)
    assert len(report["history"]["val_map@r"]) == 2 and report["history"]["valid_anchors"] == [
        1.0,
        1.0,
    ]
    assert set(report["trained"]) == set(want)

    from matplotlib.image import imread

    for name, shape in (("embedding_map.png", (520, 1100)), ("training_curves.png", (360, 1200))):
        assert imread(out / name).shape[:2] == shape
    assert imread(out / "open_set.png").shape[:2] == (400, 700)
    open_set = report["open_set"]
    assert "open set: classes" in printed and "refused as unknown" in printed
    assert open_set["unseen_queries"] == 2 * 12 and open_set["gallery"] == 8 * 4
    for share in ("known_right", "known_refused", "unseen_refused"):
        assert 0 <= open_set[share] <= 1


@pytest.mark.slow
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
    status, printed, err = run_cli(
        capsys,
        "demo",
        "--data",
        str(tmp_path / "animals.csv"),
        "--epochs",
        "1",
        "--loss",
        "priming",
        "--distance",
        "l2",
        "--map",
        "pca",
        "--batch-size",
        "12",
        "--out",
        str(tmp_path / "out"),
        "--memory",
        str(memory),
    )
    assert status == 0, err
    assert "60 samples, 3 features, 3 classes; 18 held out" in printed
    assert "open set" not in printed  # fewer than 6 classes: none kept out of training
    assert "batches: 3 classes x 4 samples" in printed
    assert f"cross-batch memory: {memory or 'none'}" in printed
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["memory"] == memory
    assert (tmp_path / "out" / "embedding_map.png").exists()


def test_holdout_split_takes_30_percent_of_every_class():
    labels = np.repeat([0, 1, 2], [10, 5, 2])
    held_out = datasets.holdout_split(labels, 0.3, seed=0)
    assert [int(held_out[labels == c].sum()) for c in range(3)] == [3, 2, 1]  # round(3, 1.5, 0.6)


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with U+FEFF; the first header name is still 'label'."""
    path = tmp_path / "excel.csv"
    path.write_bytes("label,f1,f2\ncat,1,2\ndog,3,4\ncat,5,6\n".encode("utf-8-sig"))
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    data = datasets.load_file(path)
    assert data.class_names == ("cat", "dog") and data.y.tolist() == [0, 1, 0]
    assert data.x.tolist() == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize("name", ["overflow_csv", "overflow"])
def test_float32_overflow_is_one_error_without_numpy_warnings(files, name):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (overflow in cast) would raise
        with pytest.raises(datasets.DataError, match="overflow float32"):
            datasets.load_file(files[name])


def _unwritable_folder(tmp_path):
    """A folder nobody here may create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "out"
    try:
        os.makedirs("/sys/triplet-tools-probe")
    except OSError:
        return "/sys/triplet-tools-probe"
    os.rmdir("/sys/triplet-tools-probe")
    pytest.skip("no unwritable folder found for root")


@pytest.mark.parametrize("case", ["existing file", "under a file", "unwritable"])
def test_bad_out_fails_in_one_line_before_training(capsys, tmp_path, case):
    digits_subset(tmp_path / "digits.npz")
    (tmp_path / "taken").write_text("not a folder")
    out, expected = {
        "existing file": (tmp_path / "taken", "taken: an existing file, not a folder"),
        "under a file": (
            tmp_path / "taken" / "out",
            "taken is a file, so no folder can be made under it",
        ),
        "unwritable": (_unwritable_folder(tmp_path), "cannot create the folder or write in it ("),
    }[case]
    status, printed, err = run_cli(
        capsys, "demo", "--data", str(tmp_path / "digits.npz"), "--epochs", "1", "--out", str(out)
    )
    assert_one_line_error(status, err, f"error: --out {out}")
    assert expected in err
    assert printed == ""  # nothing trained, not even the model announced


def test_missing_demo_extra_fails_before_training(capsys, tmp_path, monkeypatch):
    """matplotlib absent (None in sys.modules: find_spec and import both fail)."""
    digits_subset(tmp_path / "digits.npz")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, printed, err = run_cli(
        capsys,
        "demo",
        "--data",
        str(tmp_path / "digits.npz"),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    assert_one_line_error(status, err, 'missing: matplotlib): pip install "triplet-tools[demo]"')
    assert printed == "" and not (tmp_path / "out").exists()


# --- the Keras backend, settled before Keras is imported (fresh processes) --------------

# The hidden packages are "not installed": finding or importing them raises
# ModuleNotFoundError, as when pip never installed them.
HIDE = """import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
"""
CONSOLE_SCRIPT = (
    HIDE
    + """from triplet_tools.demo.cli import main  # what the installed script runs
sys.exit(main({argv!r}))
"""
)
DASH_M = (
    HIDE
    + """import runpy
sys.argv = ["triplet_tools", *{argv!r}]
runpy.run_module("triplet_tools", run_name="__main__", alter_sys=True)  # python -m
"""
)


def run_child(tmp_path, argv, backend, hidden=(), template=CONSOLE_SCRIPT):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path / "keras-home")  # no keras.json choice of the user's
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    code = template.format(hidden=tuple(hidden), argv=list(argv))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("template", [CONSOLE_SCRIPT, DASH_M], ids=["script", "dash-m"])
@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["demo", "--epochs", "1"]])
def test_unknown_backend_is_one_line_naming_those_that_work(tmp_path, template, argv):
    done = run_child(tmp_path, argv, "nonexistent", template=template)
    assert_one_line_error(
        done.returncode,
        done.stderr,
        "Keras backend 'nonexistent' (from KERAS_BACKEND) does not exist; the "
        "backends that work are tensorflow, jax, torch (installed: "
        "tensorflow, jax, torch)",
        backend_noise=True,
    )
    assert done.stdout == ""


@pytest.mark.slow
def test_numpy_backend_cannot_train_one_line(tmp_path):
    done = run_child(tmp_path, ["demo", "--epochs", "1"], "numpy")
    assert_one_line_error(
        done.returncode,
        done.stderr,
        "Keras backend 'numpy' (from KERAS_BACKEND) cannot train (no model.fit); "
        "the backends that work are tensorflow, jax, torch",
        backend_noise=True,
    )


@pytest.mark.slow
def test_backend_named_but_not_installed(tmp_path):
    done = run_child(tmp_path, ["demo", "--help"], "torch", hidden=["torch"])
    assert_one_line_error(
        done.returncode,
        done.stderr,
        "Keras backend 'torch' (from KERAS_BACKEND) is not installed; installed: "
        "tensorflow, jax: set KERAS_BACKEND to one of them, or pip install "
        '"triplet-tools[torch]"',
        backend_noise=True,
    )


@pytest.mark.slow
def test_without_keras_backend_and_tensorflow_the_one_installed_backend_is_used(tmp_path):
    """pip install "triplet-tools[jax]" only: Keras would default to the missing TensorFlow."""
    done = run_child(tmp_path, ["demo", "--help"], None, hidden=["tensorflow", "torch"])
    assert done.returncode == 0, done.stderr
    assert "usage: triplet-tools demo" in done.stdout
    notes = [line for line in done.stderr.splitlines() if not BACKEND_IMPORT_LOG.match(line)]
    assert notes == [
        (
            "triplet-tools: KERAS_BACKEND is not set and TensorFlow (Keras' default) "
            "is not installed: using jax, the one installed backend"
        )
    ], done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "hidden,expected",
    [
        (["tensorflow"], "choose one of the installed backends: KERAS_BACKEND=jax or torch"),
        (
            ["tensorflow", "jax", "torch"],
            'no Keras backend is installed: pip install "triplet-tools[jax]"',
        ),
    ],
)
def test_without_keras_backend_and_tensorflow_say_how_to_choose(tmp_path, hidden, expected):
    done = run_child(tmp_path, ["demo", "--help"], None, hidden=hidden)
    assert_one_line_error(done.returncode, done.stderr, expected, backend_noise=True)


@pytest.mark.slow
def test_library_import_with_a_working_backend_is_unchanged(tmp_path):
    """import triplet_tools imports Keras and defines every public name, as before."""
    code = (
        "import sys, triplet_tools\n"
        "assert 'keras' in sys.modules\n"
        "print(sorted(n for n in triplet_tools.__all__ if hasattr(triplet_tools, n)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import triplet_tools

    assert done.stdout.strip() == str(sorted(triplet_tools.__all__))


@pytest.mark.slow
def test_library_import_with_an_unknown_backend_names_the_problem_on_use(tmp_path):
    code = (
        "import sys, triplet_tools\n"
        "assert 'keras' not in sys.modules\n"
        "from triplet_tools import TripletLoss\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "nonexistent"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: cannot use triplet_tools.TripletLoss: Keras backend 'nonexistent' (from "
        "KERAS_BACKEND) does not exist; the backends that work are tensorflow, jax, torch "
        "(installed: tensorflow, jax, torch): set KERAS_BACKEND to one of them"
    )
