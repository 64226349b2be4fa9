"""The index section of the benchmark (bench/index_bench.py) on tiny sizes, in this process."""

import argparse

import pytest

import index_bench


def tiny(**changes):
    options = {"queries": 20, "references": 300, "dim": 8, "calibration_queries": 500}
    return argparse.Namespace(**(options | changes))


def test_each_case_reports_its_figures():
    exact = index_bench.one("exact", tiny())
    assert exact["seconds"] > 0 and exact["extra_mb"] >= 0
    calibrate = index_bench.one("calibrate", tiny())
    assert 0 <= calibrate["threshold"] <= 1
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    assert index_bench.one("flat-ip", tiny())["seconds"] > 0
    assert index_bench.one("hnsw", tiny())["recall@10"] >= 0.9


def test_the_table_names_every_row_and_a_missing_peer():
    results = {
        "date": "today",
        "machine": "x86_64, 2 cores",
        "sizes": vars(tiny()),
        "exact": {"seconds": 3.0, "extra_mb": 200.0},
        "flat-ip": {"seconds": 2.0, "extra_mb": 100.0},
        "hnsw": {"recall@10": 0.97, "qps": 5000.0, "exact_qps": 500.0, "build_seconds": 9.0},
        "calibrate": {"seconds": 0.05, "extra_mb": 12.0, "threshold": 0.5},
        "tfsim": {1000: {"ours": {"seconds": 0.001, "extra_mb": 0.0}, "tfsim": {"error": "none"}}},
    }
    text = "\n".join(index_bench.table(results))
    assert "| 1.50x |" in text and "recall@10 0.970" in text and "10.0x" in text
    assert "TF Similarity: none" in text
