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
    case = benchmark.PEERS["triplet-tools-0.2.3"][0]
    record = benchmark.measure_case(case, 256, {"python": sys.executable, "peers_dir": tmp_path})
    assert record["status"] == "missing"
    assert benchmark.describe(record) == "not installed"


def test_select_cases_adds_the_floor_of_every_backend():
    names = [c.name for c in benchmark.select_cases(["jax"], ["batch-hard"], list(benchmark.PEERS))]
    assert names[:4] == ["ours-batch-hard/jax", "floor/tensorflow", "floor/jax", "floor/torch"]
    assert "triplet-tools-0.2.3" in names and "pml-triplet-margin-semihard" in names


def _record(case, batch, median_s, rss_mb=1000.0):
    return {
        "case": case,
        "batch": batch,
        "status": "ok",
        "median_s": median_s,
        "first_call_s": 2.0,
        "peak_rss_mb": rss_mb,
    }


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
        # JAX's floor is the machine's at 1024 only: each B divides by the fastest floor.
        {**_record("floor/jax", 256, 0.002), "notes": {"rows_per_block": 256}},
        {**_record("floor/jax", 1024, 0.005), "notes": {"rows_per_block": 512}},
        _record("triplet-tools-0.2.3", 256, 0.008),
        {
            "case": "triplet-tools-0.2.3",
            "batch": 1024,
            "status": "oom",
            "peak_rss_mb": 16500.0,
            "detail": "killed at RSS > 16 GB",
        },
        {
            "case": "floor/tensorflow",
            "batch": 4096,
            "status": "oom",
            "peak_rss_mb": 900.0,
            "detail": "Graph execution error:\n\nOOM when allocating\n [[node]]" + "x" * 400,
        },
    ]
    meta = {
        **benchmark.machine_info(),
        "load_end": 0.5,
        "versions": {"this environment": {"keras": "3"}},
        "settings": {
            "dim": 128,
            "per_class": 8,
            "seed": 0,
            "repeats": 5,
            "time_limit": 300.0,
            "cubic_time_limit": 60.0,
            "memory_limit_gb": 16.0,
        },
    }
    report = benchmark.markdown_report(cases, records, [256, 1024], meta)
    ours_row = next(
        line for line in report.splitlines() if line.startswith("| triplet-tools TripletLoss")
    )
    # ours / floor = 4 (TF's) and 6 (JAX's); ours / 0.2.3 = 0.5 at 256, none at 1024 (0.2.3
    # ran out of memory).
    assert ours_row.rstrip(" |").split(" | ")[1:] == [
        "0.004 s · 1.05 GB",
        "4× · 0.5×",
        "0.03 s · 1.05 GB",
        "6× · —",
    ]
    floor_row = next(line for line in report.splitlines() if "floor: one blocked" in line)
    assert floor_row.rstrip(" |").split(" | ")[2::2] == ["1× · 0.12×", "2× · —"]
    assert "Anchors per block of the floors (the fastest tried): B=256 jax: 256; " in report
    peer_row = next(
        line for line in report.splitlines() if line.startswith("| triplet-tools 0.2.3")
    )
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
    code = benchmark.main(
        [
            "--sizes",
            "64",
            "--backends",
            BACKEND,
            "--losses",
            "semi-hard",
            "--no-peers",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
            "--time-limit",
            "240",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    by_case = {r["case"]: r for r in results["results"]}
    floors = {f"floor/{backend}" for backend in benchmark.BACKENDS}
    assert set(by_case) == {f"ours-semi-hard/{BACKEND}"} | floors
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
    # B=64 is below every block size tried: the floor is one block of all 64 anchors.
    assert {by_case[name]["notes"]["rows_per_block"] for name in floors} == {64}
    assert results["meta"]["settings"]["sizes"] == [64]
    table = (tmp_path / "results.md").read_text()
    assert "| library · backend | B=64 | ×floor · ×0.2.3 |" in table
    assert "Limits per measurement: 240 s" in table and "{" not in table
    assert f"triplet-tools TripletLoss semi-hard · {benchmark.BACKEND_LABELS[BACKEND]}" in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the rows of "Every pair, every triplet, and the pair-based losses" ---------------------

NEW_LOSSES = ("batch-all", "tfa-semihard", "multi-similarity", "circle", "soft-nn", "lifted")


def test_losses_option_knows_every_loss_and_unique_prefixes():
    parse = benchmark.build_parser().parse_args
    assert parse([]).losses == list(benchmark.LOSSES)
    assert set(NEW_LOSSES) <= set(benchmark.LOSSES)
    chosen = parse(["--losses", "batch-all,tfa,multi,circle,soft,lifted"]).losses
    assert chosen == list(NEW_LOSSES)


def test_losses_option_rejects_an_ambiguous_prefix_in_one_line(capsys):
    assert benchmark.main(["--losses", "batch"]) == 2  # batch-hard or batch-all
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "'batch' is not one of" in error and "batch-all" in error


def test_every_case_has_a_worker_and_every_peer_a_pin_file():
    cases = benchmark.select_cases()
    assert {c.worker_case for c in cases} <= set(bench_worker.CASES)
    peers_dir = benchmark.Path(benchmark.__file__).parent / "peers"
    pinned = {p.stem for p in peers_dir.glob("*.txt")} - {"constraints"}
    assert pinned == set(benchmark.PEERS)
    assert {loss for c in cases for loss in c.losses} <= set(benchmark.LOSSES)


def test_every_peer_environment_is_held_to_the_local_torch():
    # Any other torch requirement would download a multi-GB CUDA build.
    peers_dir = benchmark.Path(benchmark.__file__).parent / "peers"
    for name in benchmark.PEERS:
        own = peers_dir / f"{name}.constraints"
        constraints = (own if own.exists() else peers_dir / "constraints.txt").read_text()
        assert "torch==2.13.0" in constraints.split(), name


def test_new_losses_run_on_every_mode_with_their_peers():
    cases = benchmark.select_cases(benchmark.MODES, ["batch-all"], list(benchmark.PEERS))
    names = [c.name for c in cases]
    assert names[:6] == [f"ours-batch-all/{mode}" for mode in benchmark.MODES]
    assert [c.worker_case for c in cases[:6]] == [
        "ours-batch-all",
        "ours-batch-all-graph",
        "ours-batch-all-fit",
        "ours-batch-all",
        "ours-batch-all",
        "ours-batch-all-compiled",
    ]
    assert "st-batch-all" in names and "pml-all-triplets" in names
    # Neither the per-anchor peers nor the other new losses' peers run.
    assert not {"triplet-tools-0.2.3", "pml-batch-hard"} & set(names)
    assert not {"tfa-semihard", "tfa-lifted", "tfsim-circle", "pml-circle"} & set(names)
    assert not any(name.startswith("keras-circle/") for name in names)


def test_each_new_loss_selects_its_counterparts():
    expected = {
        "tfa-semihard": {"tfa-semihard", "st-batch-semihard"},
        "multi-similarity": {"tfsim-multi-similarity", "pml-multi-similarity"},
        "circle": {
            "tfsim-circle",
            "pml-circle",
            "keras-circle/tensorflow",
            "keras-circle/jax",
            "keras-circle/torch",
        },
        "soft-nn": {"tfsim-soft-nn"},
        "lifted": {"tfa-lifted"},
    }
    every = set().union(*expected.values())
    for loss, counterparts in expected.items():
        names = {c.name for c in benchmark.select_cases(benchmark.MODES, [loss])}
        assert names & every == counterparts, loss
        assert {f"ours-{loss}/{mode}" for mode in benchmark.MODES} <= names


def test_keras_circle_runs_on_keras_backends_only_and_not_without_peers():
    names = [c.name for c in benchmark.select_cases(["torch-compile", "jax"], ["circle"], [])]
    assert names == [
        "ours-circle/torch-compile",
        "ours-circle/jax",
        "floor/tensorflow",
        "floor/jax",
        "floor/torch",
    ]
    names = [
        c.name
        for c in benchmark.select_cases(
            ["torch-compile", "jax"], ["circle"], ["pytorch-metric-learning-2.9.0"]
        )
    ]
    assert "keras-circle/jax" in names and "keras-circle/torch" not in names
    (circle,) = [
        c for c in benchmark.select_cases(["jax"], ["circle"]) if c.worker_case == "keras-circle"
    ]
    assert circle.peer is None and dict(circle.env) == {"KERAS_BACKEND": "jax"}


def test_a_loss_this_checkout_lacks_is_one_missing_line(monkeypatch, capsys):
    missing = bench_worker.keras_loss(lambda: bench_worker._ours("triplet_tools", "no_such")())
    monkeypatch.setitem(bench_worker.CASES, "ours-no-such", missing)
    assert bench_worker.main(["--case", "ours-no-such", "--batch", "8"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line[len(bench_worker.RESULT_PREFIX) :])
    assert result["status"] == "missing"
    assert result["detail"].startswith("triplet_tools.no_such is not in this triplet-tools")
    record = {"case": "ours-batch-all/jax", "batch": 64, **result}
    assert benchmark.describe(record) == "not available"


def test_a_missing_loss_skips_its_larger_sizes_and_is_no_error():
    def fake(case, batch):
        if case.name.startswith("ours-lifted"):
            return {
                "case": case.name,
                "batch": batch,
                "status": "missing",
                "detail": "triplet_tools.tfa.LiftedStructLoss is not in this triplet-tools",
            }
        return {"case": case.name, "batch": batch, "status": "ok"}

    cases = [benchmark.our_case("lifted", "jax"), benchmark.floor_case("jax")]
    records = benchmark.run_cases(cases, [64, 256], fake, log=None)
    assert [r["status"] for r in records] == ["missing", "skipped", "ok", "ok"]
    assert records[1]["detail"] == "missing at B=64"


def _meta():
    return {
        **benchmark.machine_info(),
        "load_end": 0.5,
        "versions": {"this environment": {"keras": "3"}},
        "settings": {
            "dim": 128,
            "per_class": 8,
            "seed": 0,
            "repeats": 5,
            "time_limit": 300.0,
            "cubic_time_limit": 60.0,
            "memory_limit_gb": 16.0,
        },
    }


def test_report_of_the_new_rows_states_settings_and_failures():
    cases = benchmark.select_cases(
        ["jax"],
        ["batch-all", "lifted"],
        ["sentence-transformers-6.3.0", "tensorflow-addons-0.23.0"],
    )
    records = [
        {
            "case": "ours-batch-all/jax",
            "batch": 256,
            "status": "missing",
            "detail": "triplet_tools.triplet_batch_all_loss is not in this triplet-tools (1.0.0)",
        },
        _record("ours-lifted/jax", 256, 0.002),
        _record("floor/jax", 256, 0.001),
        _record("st-batch-all", 256, 0.05),
        {
            "case": "st-batch-all",
            "batch": 1024,
            "status": "oom",
            "peak_rss_mb": 4000.0,
            "detail": "killed at RSS > 4 GB",
        },
        {
            "case": "tfa-lifted",
            "batch": 256,
            "status": "timeout",
            "peak_rss_mb": 2000.0,
            "detail": "killed after 60 s",
        },
    ]
    report = benchmark.markdown_report(cases, records, [256, 1024], _meta())
    table = report.split("First call")[0]  # the main table, not the first calls'
    rows = {
        line.split(" | ")[0][2:]: line
        for line in table.splitlines()
        if line.startswith("| ") and " · " in line.split(" | ")[0]
    }
    assert "not available" in rows["triplet-tools triplet_batch_all_loss · JAX (jit)"]
    lifted = rows["triplet-tools tfa.LiftedStructLoss · JAX (jit)"]
    assert "0.002 s · 1.05 GB | 2× · —" in lifted
    assert "OOM (peak 4.19 GB)" in rows["sentence-transformers 6.3.0 BatchAllTripletLoss · torch"]
    assert (
        "timeout (peak 2.10 GB)" in rows["tensorflow-addons 0.23 LiftedStructLoss · TF 2.15 graph"]
    )
    for loss in ("batch-all", "lifted"):
        assert f"{loss}: {bench_worker.SETTINGS[loss]}" in report
    assert "multi-similarity:" not in report  # only the settings of the losses in the table
    not_measured = report.split("Not measured:")[1].strip().splitlines()
    assert len(not_measured) == 3
    assert not_measured[0].startswith(
        "- triplet-tools triplet_batch_all_loss · JAX (jit), B=256:"
        " missing — triplet_tools.triplet_batch_all_loss is not"
    )


def test_end_to_end_a_new_loss_runs_or_reads_not_available(tmp_path):
    code = benchmark.main(
        [
            "--sizes",
            "32",
            "--backends",
            BACKEND,
            "--losses",
            "batch-all,lifted",
            "--no-peers",
            "--repeats",
            "2",
            "--out",
            str(tmp_path),
            "--time-limit",
            "240",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    by_case = {r["case"]: r for r in results["results"]}
    assert set(by_case) == {
        f"ours-batch-all/{BACKEND}",
        f"ours-lifted/{BACKEND}",
        *(f"floor/{backend}" for backend in benchmark.BACKENDS),
    }
    for name in (f"ours-batch-all/{BACKEND}", f"ours-lifted/{BACKEND}"):
        record = by_case[name]
        assert record["status"] in ("ok", "missing"), record
        if record["status"] == "ok":
            assert math.isfinite(record["loss"]) and record["grad_finite"] is True
        else:
            assert "is not in this triplet-tools" in record["detail"]
    table = (tmp_path / "results.md").read_text()
    assert f"triplet-tools triplet_batch_all_loss · {benchmark.BACKEND_LABELS[BACKEND]}" in table


def test_tf_keras_fit_rows_run_with_their_mode_and_divide_by_the_0_2_3_fit_step():
    fit_peers = {benchmark.BASELINE_FIT, "tfsim-triplet/fit"}
    cases = benchmark.select_cases(["tf-keras-fit"], ["semi-hard"])
    by_name = {c.name: c for c in cases}
    assert fit_peers <= set(by_name)
    ours = by_name["ours-semi-hard/tf-keras-fit"]
    assert ours.worker_case == "ours-semi-hard-fit" and ours.baseline == benchmark.BASELINE_FIT
    for case in (ours, *(by_name[name] for name in fit_peers)):
        assert dict(case.env)["TF_USE_LEGACY_KERAS"] == "1"
    # Without the mode (or without the loss) the model.fit peers stay out.
    assert not fit_peers & {c.name for c in benchmark.select_cases(["jax"], ["semi-hard"])}
    assert not fit_peers & {c.name for c in benchmark.select_cases(["tf-keras-fit"], ["circle"])}

    records = [
        _record("ours-semi-hard/tf-keras-fit", 256, 0.02),
        _record(benchmark.BASELINE_FIT, 256, 0.08),
        _record(benchmark.BASELINE, 256, 0.01),
        _record("floor/jax", 256, 0.01),
    ]
    report = benchmark.markdown_report(cases, records, [256], _meta())
    rows = {line.split(" | ")[0][2:]: line for line in report.split("First call")[0].splitlines()}
    # ÷ the floor (0.01 s) and ÷ 0.2.3's own model.fit step (0.08 s), not its bare loss.
    assert "| 2× · 0.25× |" in rows["triplet-tools TripletLoss semi-hard · tf_keras model.fit step"]
    assert "| 8× · 1× |" in rows["triplet-tools 0.2.3 semi-hard · tf_keras model.fit step"]


@pytest.mark.slow
def test_end_to_end_a_tf_keras_fit_step_trains_with_our_loss():
    settings = {
        "python": sys.executable,
        "peers_dir": ".bench",
        "dim": 16,
        "per_class": 4,
        "seed": 0,
        "repeats": 2,
        "time_limit": 240.0,
        "cubic_time_limit": 60.0,
        "memory_limit_gb": 8.0,
    }
    case = benchmark.our_case("semi-hard", "tf-keras-fit")
    record = benchmark.measure_case(case, 32, settings)
    assert record["status"] == "ok", record
    assert math.isfinite(record["loss"]) and record["loss"] > 0
    assert record["notes"] == {"step": "tf_keras train_function", "jit_compile": False}
    assert "tf-keras" in record["versions"]


def test_per_anchor_peers_stay_out_of_a_pair_loss_run():
    """Asking for the pair losses runs their peers, not the per-anchor ones."""
    names = {c.name for c in benchmark.select_cases(["jax"], list(NEW_LOSSES))}
    assert not {"tfsim-pn", "tfsim-triplet", "pml-batch-hard", benchmark.BASELINE} & names
    assert {"tfsim-multi-similarity", "pml-all-triplets", "tfa-semihard"} <= names
    per_anchor = {c.name for c in benchmark.select_cases(["jax"], ["batch-hard-l2n"])}
    assert {"tfsim-pn", "pml-batch-hard", benchmark.BASELINE} <= per_anchor
