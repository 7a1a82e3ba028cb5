"""tools/show_audit.py: one PNG per audited scan, centred on the audited world position; missing scans are named."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import load_tool


def _audit(tmp_path, sources):
    scans = [{"source": str(s), "leave_out": True, "peak": 3.0 - i, "p99_9": 1.0, "model_voxel": [0, 0, 0],
              "peak_ras_mm": [10.0, -4.0, 30.0], "peak_lps_mm": [-10.0, 4.0, 30.0]} for i, s in enumerate(sources)]
    path = tmp_path / "normal_audit.json"
    path.write_text(json.dumps({"smooth_mm": 5.0, "scans": scans}))
    return path


def test_one_png_per_scan_in_audit_order(tmp_path):
    tool = load_tool("show_audit")
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = []
    for name in ("b_scan", "a_scan"):
        img = np.full((20, 16, 18), -800.0, dtype=np.float32)
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(img, affine), str(paths[-1]))
    written = tool.show(_audit(tmp_path, paths), tmp_path / "png")
    assert [p.name for p in written] == ["audit_1_b_scan.png", "audit_2_a_scan.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert [p.name for p in tool.show(_audit(tmp_path, paths), tmp_path / "png1", top=1)] == ["audit_1_b_scan.png"]


def test_a_missing_scan_is_named(tmp_path, capsys):
    tool = load_tool("show_audit")
    audit = _audit(tmp_path, [tmp_path / "gone.nii.gz"])
    with pytest.raises(FileNotFoundError, match="gone.nii.gz"):
        tool.show(audit, tmp_path / "png")
    assert tool.main([str(audit), "--out", str(tmp_path / "png")]) == 2
    assert "gone.nii.gz" in capsys.readouterr().err
