"""The quality protocol's harness: it skips without its data or its peer, and pairs seeds.

No training here (the protocol takes minutes per run and its data lives only in ../shared).
"""

import quality_omniglot


def test_skips_cleanly_without_the_data(tmp_path, capsys):
    assert quality_omniglot.main(["--data", str(tmp_path / "missing")]) == 0
    assert "skipped, no Omniglot data" in capsys.readouterr().out


def test_skips_cleanly_without_the_peer(tmp_path, capsys):
    (tmp_path / "images_background.npz").write_bytes(b"")
    code = quality_omniglot.main(["--data", str(tmp_path), "--peer", str(tmp_path / "none")])
    assert code == 0
    assert "skipped, no triplet-tools 0.2.3" in capsys.readouterr().out


def test_paired_differences_use_only_seeds_both_losses_ran():
    runs = [
        {"loss": "hard", "seed": 0, "map@r": 0.30},
        {"loss": "hard-0.2.3", "seed": 0, "map@r": 0.35},
        {"loss": "hard", "seed": 1, "map@r": 0.40},
        {"loss": "hard-0.2.3", "seed": 1, "map@r": 0.38},
        {"loss": "hard", "seed": 2, "map@r": 0.50},
    ]
    entry = quality_omniglot.summarize(runs, (("hard", "hard-0.2.3"),))["hard - hard-0.2.3"]
    assert entry["seeds"] == 2
    assert entry["below"] == 1
    assert abs(entry["mean"] - (-0.05 + 0.02) / 2) < 1e-12
    assert abs(entry["min"] + 0.05) < 1e-12 and abs(entry["max"] - 0.02) < 1e-12
