"""Tests of ``tools/bench_synthetic_methods.py`` (training-free methods on a synthetic datalist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_tool


def test_methods_fit_on_training_normals_and_report_evaluate_metrics(synthetic_dataset, capsys):
    tool = load_tool("bench_synthetic_methods")
    datalist = Path(synthetic_dataset)  # the fixture returns the datalist's path
    res = tool.evaluate_method(datalist, "descriptor_knn")
    data = json.loads(datalist.read_text())
    assert res["num_cases"] == len(data["test"])
    m = res["metrics"]
    for key in ("voxel_auroc", "aupro", "sample_auroc"):
        assert m[key] is None or 0.0 <= m[key] <= 1.0
    assert m["voxel_auroc"] is not None  # the datalist has lesion cases
    assert tool.main(["--datalist", str(datalist), "--methods", "intensity_rule"]) == 0
    out = capsys.readouterr().out
    assert "| intensity_rule |" in out and json.loads(out.splitlines()[0])["method"] == "intensity_rule"
    assert tool.main(["--datalist", str(datalist), "--methods", "no_such_method"]) == 2
    bad = datalist.parent / "bad.json"
    bad.write_text(json.dumps({"training": [], "test": []}))
    with pytest.raises(ValueError, match="bad.json"):
        tool.evaluate_method(bad, "intensity_rule")
