"""The benchmark harness: limits, skipping, the report, and one tiny end-to-end run.

Nothing here asserts a speed; the end-to-end run measures ours and the floor at B=64 on the
backend of this test leg, without peers, and checks the files and their fields.
"""

import json
import math
import sys

import keras
import pytest

import bench_worker
import benchmark

BACKEND = keras.backend.backend()


def test_time_limit_kills_and_reports_timeout():
    run = benchmark.run_limited(
        [sys.executable, "-c", "import time; time.sleep(30)"], time_limit_s=0.3
    )
    assert run["killed"] == "timeout"
    assert run["wall_s"] < 10


def test_memory_limit_kills_and_reports_oom():
    # 600 MiB written for real, then a pause so the watchdog sees it.
    grow = "import time; block = b'x' * (600 * 2**20); time.sleep(30)"
    run = benchmark.run_limited([sys.executable, "-c", grow], memory_limit_mb=200, poll_s=0.02)
    assert run["killed"] == "oom"
    assert run["observed_peak_mb"] > 200


def test_a_finishing_process_is_not_killed():
    run = benchmark.run_limited([sys.executable, "-c", "print('done')"], time_limit_s=60)
    assert run["killed"] is None
    assert run["returncode"] == 0
    assert run["stdout"].strip() == "done"


def test_sizes_after_a_failure_are_skipped_and_reported():
    cases = [benchmark.floor_case("jax"), benchmark.our_case("semi-hard", "torch")]
    outcome = {("floor/jax", 1024): "timeout"}

    def fake_measure(case, batch):
        return {"case": case.name, "batch": batch, "status": outcome.get((case.name, batch), "ok")}

    records = benchmark.run_cases(cases, [4096, 256, 1024], fake_measure, log=None)
    statuses = [(r["case"], r["batch"], r["status"]) for r in records]
    assert statuses == [
        ("floor/jax", 256, "ok"),
        ("floor/jax", 1024, "timeout"),
        ("floor/jax", 4096, "skipped"),
        ("ours-semi-hard/torch", 256, "ok"),
        ("ours-semi-hard/torch", 1024, "ok"),
        ("ours-semi-hard/torch", 4096, "ok"),
    ]
    assert records[2]["detail"] == "timeout at B=1024"


def test_a_missing_peer_environment_is_reported(tmp_path):
    (case,) = benchmark.PEERS["triplet-tools-0.2.3"]
    record = benchmark.measure_case(case, 256, {"python": sys.executable, "peers_dir": tmp_path})
    assert record["status"] == "missing"
    assert benchmark.describe(record) == "not installed"


def test_select_cases_adds_the_floor_of_every_backend_used():
    names = [c.name for c in benchmark.select_cases(["jax"], ["batch-hard"], list(benchmark.PEERS))]
    assert names[:4] == ["ours-batch-hard/jax", "floor/tensorflow", "floor/jax", "floor/torch"]
    assert "triplet-tools-0.2.3" in names and "pml-triplet-margin-semihard" in names


def _record(case, batch, median_s, rss_mb=1000.0):
    return {"case": case, "batch": batch, "status": "ok", "median_s": median_s,
            "first_call_s": 2.0, "peak_rss_mb": rss_mb}


def test_markdown_report_has_times_memory_ratios_and_failures():
    cases = [
        benchmark.our_case("semi-hard", "tensorflow"),
        benchmark.floor_case("tensorflow"),
        benchmark.PEERS["triplet-tools-0.2.3"][0],
    ]
    records = [
        _record("ours-semi-hard/tensorflow", 256, 0.004),
        _record("ours-semi-hard/tensorflow", 1024, 0.03),
        _record("floor/tensorflow", 256, 0.001),
        _record("floor/tensorflow", 1024, 0.01),
        _record("triplet-tools-0.2.3", 256, 0.008),
        {"case": "triplet-tools-0.2.3", "batch": 1024, "status": "oom", "peak_rss_mb": 16500.0,
         "detail": "killed at RSS > 16 GB"},
        {"case": "floor/tensorflow", "batch": 4096, "status": "oom", "peak_rss_mb": 900.0,
         "detail": "Graph execution error:\n\nOOM when allocating\n [[node]]" + "x" * 400},
    ]
    meta = {**benchmark.machine_info(), "load_end": 0.5,
            "versions": {"this environment": {"keras": "3"}},
            "settings": {"dim": 128, "per_class": 8, "seed": 0, "repeats": 5,
                         "time_limit": 300.0, "cubic_time_limit": 60.0, "memory_limit_gb": 16.0}}
    report = benchmark.markdown_report(cases, records, [256, 1024], meta)
    ours_row = next(line for line in report.splitlines() if line.startswith("| triplet-tools TripletLoss"))
    # ours / floor = 4 and 3; ours / 0.2.3 = 0.5 at 256, none at 1024 (0.2.3 ran out of memory).
    assert ours_row.rstrip(" |").split(" | ")[1:] == ["0.004 s · 1.05 GB", "4× · 0.5×", "0.03 s · 1.05 GB", "3× · —"]
    peer_row = next(line for line in report.splitlines() if line.startswith("| triplet-tools 0.2.3"))
    assert "OOM (peak 17.30 GB)" in peer_row
    assert "killed at RSS > 16 GB" in report
    # A framework's multi-line error stays one list item, cut short.
    error_item = next(line for line in report.splitlines() if "B=4096: oom" in line)
    assert "Graph execution error: OOM when allocating [[node]]" in error_item
    assert len(error_item) < 400 and error_item.endswith("…")
    assert "this environment: keras 3" in report


def test_cli_bench_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["-h"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--sizes", "--backends", "--no-peers", "--peers-dir", "--out", "--time-limit"):
        assert option in help_text


def test_cli_rejects_bad_sizes(capsys):
    assert benchmark.main(["--sizes", "64,x"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("make bench: error:") and "'64,x'" in error
    assert len(error.splitlines()) == 1


def test_end_to_end_tiny_run_writes_table_json_and_plot(tmp_path, capsys):
    code = benchmark.main([
        "--sizes", "64", "--backends", BACKEND, "--losses", "semi-hard", "--no-peers",
        "--repeats", "2", "--out", str(tmp_path), "--time-limit", "240",
    ])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    by_case = {r["case"]: r for r in results["results"]}
    assert set(by_case) == {f"ours-semi-hard/{BACKEND}", f"floor/{BACKEND}"}
    for record in by_case.values():
        assert record["status"] == "ok", record
        assert record["batch"] == 64
        assert 0 < record["min_s"] <= record["median_s"] <= max(record["times_s"])
        times = record["times_s"]
        # --repeats 2, then more calls only while they add up to less than MIN_TIMED_S.
        assert 2 <= len(times) <= bench_worker.MAX_CALLS
        assert len(times) == 2 or sum(times[:-1]) < bench_worker.MIN_TIMED_S
        assert 10 < record["setup_rss_mb"] <= record["peak_rss_mb"]
    ours = by_case[f"ours-semi-hard/{BACKEND}"]
    assert math.isfinite(ours["loss"]) and ours["loss"] > 0  # random unit vectors, margin 0.2
    assert ours["grad_finite"] is True
    assert ours["versions"]["triplet-tools"] != "0.2.3"
    assert results["meta"]["settings"]["sizes"] == [64]
    table = (tmp_path / "results.md").read_text()
    assert "| library · backend | B=64 | ×floor · ×0.2.3 |" in table
    assert "Limits per measurement: 240 s" in table and "{" not in table
    assert f"triplet-tools TripletLoss semi-hard · {benchmark.BACKEND_LABELS[BACKEND]}" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
