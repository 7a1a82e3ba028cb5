"""tools/bench_train.py: windows per second through the bundle's own trainer."""

from __future__ import annotations

import json

import pytest

from conftest import load_tool


def test_summarise_counts_windows_over_the_timed_iterations():
    s = load_tool("bench_train").summarise([0.5, 1.5], [1.0, 3.0], 8)
    assert s["windows_per_s"] == 4.0  # 16 windows in 4 s
    assert s["step_windows_per_s"] == 8.0  # 16 windows in 2 s of steps
    assert s["s_per_iteration"] == 2.0 and s["timed_iterations"] == 2
    with pytest.raises(ValueError):
        load_tool("bench_train").summarise([1.0], [], 4)


def test_cpu_preset_trains_and_reports(capsys):
    rc = load_tool("bench_train").main(["--preset", "cpu", "--device", "cpu", "--iterations", "2", "--warmup", "1",
                                        "--size", "72", "--spacing", "2.0", "--num_scans", "2", "--num_samples", "1",
                                        "--num_workers", "1"])
    assert rc == 0
    text = capsys.readouterr().out  # the workflow's log lines come first
    out = json.loads(text[text.rindex("\n{\n") + 1:] if not text.startswith("{") else text)
    assert out["timed_iterations"] == 2 and out["windows_per_iteration"] == 1
    assert out["roi_size"] == [64, 64, 64] and out["num_workers"] == 1
    assert 0 < out["windows_per_s"] <= out["step_windows_per_s"]
    assert out["final_loss"] is not None and out["final_loss"] > 0
