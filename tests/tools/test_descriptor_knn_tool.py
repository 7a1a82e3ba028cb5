"""Tests of ``tools/descriptor_knn.py``, the command-line shortcut to the descriptor_knn_ct bundle's library."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from conftest import load_tool
from monai_simsid.apps.descriptor_workflow import load_descriptor_memory
from monai_simsid.data.datalist import load_datalist


def test_fit_then_predict_write_the_bundle_outputs(chest_datalist, tmp_path, capsys):
    tool = load_tool("descriptor_knn", "descriptor_knn_tool")
    memory = tmp_path / "memory.npz"
    assert tool.main(["fit", "--datalist", str(chest_datalist), "--out", str(memory), "--k", "5", "--bank-size", "2000"]) == 0
    printed = json.loads(capsys.readouterr().out)
    knn, extra = load_descriptor_memory(memory, "descriptor_knn_ct")
    assert knn.k == 5 and knn.bank.shape[0] == 2000 and extra == printed and extra["calibrated_on"] == "validation"

    scans = [e["image"] for e in load_datalist(chest_datalist, "test")]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    missing = tmp_path / "missing.nii.gz"
    assert tool.main(["predict", "--memory", str(memory), "--output_dir", str(out), *scans, str(bad), str(missing)]) == 1
    err = capsys.readouterr().err
    assert "broken.nii.gz: cannot be read" in err and "missing.nii.gz: file does not exist" in err
    rows = (out / "scores.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["case", "normal_4", "nodule_5"]
    amap = nib.load(out / "nodule_5" / "nodule_5_anomaly_map.nii.gz")
    src = nib.load(scans[1])
    assert amap.shape == src.shape and np.array_equal(amap.affine, src.affine)
    assert (out / "errors.csv").read_text().count("\n") == 3  # header + the two bad inputs


def test_one_bad_input_or_memory_is_one_line_and_status_2(tmp_path, capsys):
    tool = load_tool("descriptor_knn", "descriptor_knn_tool")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    assert tool.main(["predict", "--memory", str(junk), "--output_dir", str(tmp_path / "o"), "scan.nii.gz"]) == 2
    err = capsys.readouterr().err
    assert "junk.npz" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tool.main(["fit", "--datalist", str(tmp_path / "absent.json"), "--out", str(tmp_path / "m.npz")]) == 2
    assert "absent.json: datalist file does not exist" in capsys.readouterr().err
