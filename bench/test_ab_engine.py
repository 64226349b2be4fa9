"""bench/ab_engine.py: round order, skipping, the table's ratios and flags, the autodiff
switch, and one tiny run of both sides from this checkout (nothing here asserts a speed)."""

import json
import sys
from pathlib import Path

import keras
import pytest

import ab_engine
import bench_worker

BACKEND = keras.backend.backend()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _fake(times, statuses=None):
    """measure(side, backend, loss, batch) reading the side's time of each call in turn."""
    calls = {"a": iter(times["a"]), "b": iter(times["b"])}
    statuses = statuses or {}

    def measure(side, backend, loss, batch):
        status = statuses.get((side, loss), "ok")
        if status != "ok":
            return {"status": status, "detail": f"{status} here"}
        took = next(calls[side])
        return {"status": "ok", "median_s": took, "min_s": took / 2, "peak_rss_mb": 1000.0}

    return measure


def test_rounds_alternate_which_side_goes_first():
    assert ab_engine.round_order(4, "alternate") == [("a", "b"), ("b", "a")] * 2
    shuffled = ab_engine.round_order(20, "random", seed=1)
    assert set(shuffled) == {("a", "b"), ("b", "a")}
    assert shuffled == ab_engine.round_order(20, "random", seed=1)


def test_old_and_new_alternate_within_each_cell_before_the_next_cell():
    cells = [("jax", "circle", 64), ("jax", "circle", 256)]
    measure = _fake({"a": [1.0] * 6, "b": [1.0] * 6})
    records = ab_engine.run_ab(cells, ab_engine.round_order(3, "alternate"), measure, None)
    assert [(r["batch"], r["round"], r["side"]) for r in records[:6]] == [
        (64, 0, "a"),
        (64, 0, "b"),
        (64, 1, "b"),
        (64, 1, "a"),
        (64, 2, "a"),
        (64, 2, "b"),
    ]
    assert {r["batch"] for r in records[6:]} == {256}


def test_ratio_is_the_median_of_the_rounds_ratios_and_a_slowdown_is_flagged():
    cells = [("jax", "circle", 64), ("torch", "soft-nn", 64)]
    # circle: new/old per round 1.2, 1.0, 1.1 -> 1.1 (flagged); soft-nn: 0.9, 1.04, 1.0.
    measure = _fake({"a": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "b": [1.2, 1.0, 1.1, 0.9, 1.04, 1.0]})
    records = ab_engine.run_ab(cells, ab_engine.round_order(3, "alternate"), measure, None)
    circle, soft_nn = (ab_engine.summarize(records, *cell) for cell in cells)
    assert circle["ratios"] == [1.2, 1.0, 1.1] and circle["ratio"] == pytest.approx(1.1)
    assert soft_nn["ratio"] == pytest.approx(1.0)
    assert circle["a_gb"] == pytest.approx(1000 * 2**20 / 1e9)
    table = ab_engine.ab_table([circle, soft_nn], ("old", "new"), 1.05).splitlines()
    assert table[0] == (
        "| cell | old s | new s | new/old | rounds | new/old min | old GB | new GB | flag |"
    )
    assert table[2].startswith(
        "| JAX (jit) · CircleLoss · B=64 | 1 | 1.1 | 1.100 | 1.20, 1.00, 1.10 | 1.100 |"
    )
    assert table[2].endswith("| **> 1.05** |")
    assert table[3].endswith("| 1.000 | 0.90, 1.04, 1.00 | 1.000 | 1.05 | 1.05 |  |")


def test_a_failed_side_is_not_rerun_and_a_missing_one_ends_the_cell():
    cells = [("jax", "circle", 64), ("jax", "lifted", 64)]
    measure = _fake({"a": [1.0] * 6, "b": [1.0] * 6}, {("b", "circle"): "timeout"})
    measure_missing = _fake({"a": [1.0] * 6, "b": []}, {("b", "lifted"): "missing"})

    def both(side, backend, loss, batch):
        return (measure if loss == "circle" else measure_missing)(side, backend, loss, batch)

    records = ab_engine.run_ab(cells, ab_engine.round_order(3, "alternate"), both, None)
    circle = [(r["side"], r["status"]) for r in records if r["loss"] == "circle"]
    assert circle == [("a", "ok"), ("b", "timeout"), ("b", "skipped"), ("a", "ok")] + [
        ("a", "ok"),
        ("b", "skipped"),
    ]
    lifted = [(r["side"], r["status"]) for r in records if r["loss"] == "lifted"]
    assert lifted == [("a", "ok"), ("b", "missing")]
    rows = ab_engine.ab_table(
        [ab_engine.summarize(records, *cell) for cell in cells], ("old", "new"), 1.05
    ).splitlines()
    assert rows[2].endswith("| 1 | timeout | — | — | — | 1.05 | — | **timeout** |")
    assert rows[3].endswith("| 1 | not available | — | — | — | 1.05 | — | not available |")


class _Switchable:
    def __init__(self, margin=1.0, closed_form=True):
        self.margin, self.closed_form = margin, closed_form


class _Attribute:
    closed_form = True

    def __init__(self, margin=1.0):
        self.margin = margin


class _Neither:
    def __init__(self, margin=1.0):
        self.margin = margin


def test_the_autodiff_switch_goes_to_the_constructor_or_the_attribute_or_is_not_available():
    name, value = ab_engine.AUTODIFF_SWITCH
    assert (name, value) == ("closed_form", False)  # PairLoss.closed_form
    assert ab_engine.autodiff_loss(_Switchable, {"margin": 0.5}).closed_form is False
    built = ab_engine.autodiff_loss(_Attribute, {"margin": 0.5})
    assert built.closed_form is False and built.margin == 0.5
    with pytest.raises(bench_worker.NotAvailable, match="_Neither has no autodiff switch"):
        ab_engine.autodiff_loss(_Neither, {"margin": 0.5})
    with pytest.raises(TypeError, match="unexpected"):  # a wrong argument is not swallowed
        ab_engine.autodiff_loss(_Switchable, {"margn": 0.5})


def test_every_loss_has_a_worker_case_and_an_autodiff_twin():
    for loss in ab_engine.LOSSES:
        assert ab_engine.worker_case(loss, False) in bench_worker.CASES
        assert callable(ab_engine._autodiff_case(loss))


def test_a_source_without_triplet_tools_is_a_one_line_usage_error(tmp_path, capsys):
    assert ab_engine.main(["--old", str(tmp_path), "--new", SRC]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench/ab_engine.py: error: argument --old") and "src folder" in error
    assert len(error.splitlines()) == 1


def test_a_worker_that_imports_another_checkout_is_an_error(tmp_path):
    settings = {
        "python": sys.executable,
        "dim": 8,
        "per_class": 4,
        "seed": 0,
        "repeats": 1,
        "time_limit": 240.0,
        "memory_limit_gb": 8.0,
    }
    # tmp_path holds no triplet_tools: the installed one is imported, and that is refused.
    side = {"src": str(tmp_path), "autodiff": False}
    record = ab_engine.measure_side(side, BACKEND, "circle", 16, settings)
    assert record["status"] == "error"
    assert record["detail"].startswith("imported ") and str(tmp_path) in record["detail"]


def test_end_to_end_both_sides_from_this_checkout(tmp_path, capsys):
    argv = ["--old", SRC, "--new", str(Path(SRC).parent), "--backends", BACKEND]
    argv += ["--losses", "circle", "--sizes", "32", "--rounds", "1", "--repeats", "2"]
    argv += ["--autodiff", "--autodiff-size", "32", "--out", str(tmp_path)]
    assert ab_engine.main(argv) == 0
    results = json.loads((tmp_path / "ab.json").read_text())
    records = results["ab"]["records"]
    assert [(r["side"], r["status"]) for r in records] == [("a", "ok"), ("b", "ok")]
    for record in records:
        assert record["source"] == str(Path(SRC) / "triplet_tools" / "__init__.py")
        assert record["value"] > 0 and record["grad_finite"] is True
        assert record["calls"] >= 2 and record["peak_rss_mb"] > 10
    (summary,) = results["ab"]["summaries"]
    assert summary["ratio"] == pytest.approx(records[1]["median_s"] / records[0]["median_s"], 1e-3)
    table = (tmp_path / "ab.md").read_text()
    assert f"| {ab_engine.cell_label(BACKEND, 'circle', 32)} |" in table
    # This checkout's losses have no autodiff switch yet, or have one: either is a row.
    autodiff = results["autodiff"]["records"]
    assert autodiff[0]["status"] == "ok" and autodiff[1]["status"] in ("ok", "missing")
    assert "closed/autodiff" in table or "autodiff/closed" in table


def test_memory_table_checks_the_bound_and_shows_no_peak_for_a_run_that_did_not_measure():
    cell = {"backend": "jax", "loss": "batch-all", "batch": 65536}
    gb = 1e9 / 2**20  # MiB in one GB
    records = [
        {**cell, "path": "closed form", "status": "ok", "median_s": 90.0, "peak_rss_mb": 2.5 * gb},
        {**cell, "path": "autodiff", "status": "ok", "median_s": 120.0, "peak_rss_mb": 3.5 * gb},
        {**cell, "path": "autodiff", "status": "missing", "detail": "no", "peak_rss_mb": 300.0},
        {**cell, "path": "autodiff", "status": "oom", "detail": "killed", "peak_rss_mb": 16 * gb},
    ]
    rows = ab_engine.memory_table(records, 3.0).splitlines()
    assert rows[0] == "| cell | path | peak GB | ≤ 3 GB | step s | status |"
    label = ab_engine.cell_label("jax", "batch-all", 65536)
    assert rows[2] == f"| {label} | closed form | 2.50 | yes | 90 | ok |"
    assert rows[3] == f"| {label} | autodiff | 3.50 | **NO** | 120 | ok |"
    assert rows[4] == f"| {label} | autodiff | — | — | — | missing: no |"
    assert rows[5] == f"| {label} | autodiff | 16.00 | **NO** | — | oom: killed |"
