"""tools/make_exclusion_mask.py: a sphere mask in the scan's own grid at an audit's peak, and a datalist naming it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import load_tool, oblique_affine, simple_ct
from monai_simsid.data.datalist import load_datalist
from monai_simsid.transforms.io import LoadCTd


def test_from_an_audit_the_mask_lies_on_the_peak_and_loads_with_its_scan(tmp_path):
    tool = load_tool("make_exclusion_mask")
    affine = oblique_affine(spacing=(1.5, 1.2, 2.5))
    scans = []
    for name in ("n0", "n1"):
        scans.append(tmp_path / f"{name}_ct.nii.gz")
        nib.save(nib.Nifti1Image(simple_ct(shape=(36, 40, 22)), affine), str(scans[-1]))
    peak = (affine @ np.array([18.0, 20.0, 11.0, 1.0]))[:3]
    audit = tmp_path / "normal_audit.json"
    audit.write_text(json.dumps({"scans": [{"source": str(scans[1]), "peak": 3.0, "peak_ras_mm": peak.tolist()},
                                           {"source": str(scans[0]), "peak": 1.0, "peak_ras_mm": [0, 0, 0]}]}))
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": [{"image": "n0_ct.nii.gz"}, {"image": "n1_ct.nii.gz"}]}))
    out_dl = tmp_path / "out" / "dl_excluded.json"
    assert tool.main(["--audit", str(audit), "--radius-mm", "6", "--datalist", str(datalist), "--out-datalist", str(out_dl)]) == 0
    entries = load_datalist(out_dl)
    assert "exclude" not in entries[0] and entries[1]["exclude"] == str(tmp_path / "out" / "n1_ct_exclude.nii.gz")
    loaded = LoadCTd(["image", "exclude"])(entries[1])  # same grid as its scan (shape and affine checked)
    mask = np.asarray(loaded["exclude"][0])
    idx = np.argwhere(mask > 0)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    assert mask[18, 20, 11] == 1 and np.linalg.norm(world - peak, axis=1).max() <= 6.0
    assert len(idx) == pytest.approx(4 / 3 * np.pi * 6**3 / abs(np.linalg.det(affine[:3, :3])), rel=0.25)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dl_excluded.json", "n1_ct_exclude.nii.gz"]


def test_from_a_point_and_clear_errors(tmp_path, capsys):
    tool = load_tool("make_exclusion_mask")
    scan = tmp_path / "s_ct.nii.gz"
    nib.save(nib.Nifti1Image(simple_ct(shape=(20, 20, 20)), np.diag([2.0, 2.0, 2.0, 1.0])), str(scan))
    out = tmp_path / "m.nii.gz"
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": str(scan)}], "test": [{"image": str(scan)}]}))
    new_dl = tmp_path / "new" / "dl.json"  # a folder that does not exist yet
    assert tool.main(["--image", str(scan), "--ras", "20", "20", "20", "--radius-mm", "4", "--out", str(out),
                      "--datalist", str(dl), "--out-datalist", str(new_dl)]) == 0
    assert all(e["exclude"] == str(out) for e in json.loads(new_dl.read_text())["training"] + json.loads(new_dl.read_text())["test"])
    assert np.asarray(nib.load(str(out)).dataobj).sum() == 33  # the voxel centres within 2 voxels of (10, 10, 10)
    assert tool.main(["--image", str(scan), "--ras", "500", "0", "0", "--radius-mm", "4", "--out", str(out)]) == 2
    assert "holds no voxel" in capsys.readouterr().err
    dl.write_text(json.dumps({"training": [{"image": str(out)}]}))
    assert tool.main(["--image", str(scan), "--ras", "20", "20", "20", "--radius-mm", "4", "--out", str(out),
                      "--datalist", str(dl), "--out-datalist", str(tmp_path / "x.json")]) == 2
    assert "no entry has the image" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
