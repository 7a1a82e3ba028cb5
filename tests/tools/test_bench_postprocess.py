"""tools/bench_postprocess.py: the replaced formulations give the same results as the current ones."""

from __future__ import annotations

import json

from conftest import load_tool


def test_small_scan_same_results(capsys):
    assert load_tool("bench_postprocess").main(["--shape", "60x52x40", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resample"]["max_abs_diff"] < 1e-5
    assert out["components"]["n"] >= 1 and out["components"]["max_abs_diff"] == 0.0
    # timings are reported, not judged (a fast machine may round a small one to zero)
    for t in (out["postprocess_total_s"], out["read_s"], out["resample"]["now_s"], out["components"]["now_s"]):
        assert isinstance(t, float) and t >= 0
