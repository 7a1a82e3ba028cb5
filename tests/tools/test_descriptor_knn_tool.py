"""Tests of ``tools/descriptor_knn.py``: fit on a datalist's normals, calibrated maps in the scan's own geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import load_tool
from monai_simsid.apps.descriptor_knn import DescriptorKNN
from monai_simsid.data.datalist import load_datalist
from monai_simsid.utils.errors import InputError


@pytest.fixture(scope="module")
def fitted(synthetic_dataset, tmp_path_factory):
    tool = load_tool("descriptor_knn", "descriptor_knn_tool")
    memory = tmp_path_factory.mktemp("dknn") / "memory.npz"
    info = tool.fit(synthetic_dataset, memory, k=5, bank_size=5000)
    return tool, memory, info


def test_fit_writes_a_memory_calibrated_on_validation_normals(fitted, synthetic_dataset):
    tool, memory, info = fitted
    knn, extra = DescriptorKNN.load(memory)
    assert knn.k == 5 and knn.bank.shape[0] <= 5000 and extra["unit"] == pytest.approx(info["unit"]) and info["unit"] > 0
    assert extra["calibrated_on"] == "validation normals"
    assert extra["n_calibration"] == len([e for e in load_datalist(synthetic_dataset, "validation") if not e.get("label")])
    assert not list(memory.parent.glob(".*tmp*"))  # the atomic write left no temporary file


def test_predict_keeps_geometry_and_scores_lesion_cases(fitted, synthetic_dataset, tmp_path):
    tool, memory, _ = fitted
    case = next(e for e in load_datalist(synthetic_dataset, "test") if e.get("label"))
    src = nib.load(case["image"])
    # the same scan stored with its first axis flipped and the first two axes swapped: a different voxel order
    arr = np.asarray(src.dataobj, dtype=np.float32)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = arr.shape[0] - 1
    swap = np.eye(4)[[1, 0, 2, 3]]
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.swapaxes(arr[::-1], 0, 1).copy(), src.affine @ flip @ swap), other)
    recs = tool.predict(memory, [case["image"], other], tmp_path / "out")
    m1 = nib.load(tmp_path / "out" / f"{recs[0]['case']}_descriptor_knn.nii.gz")
    m2 = nib.load(tmp_path / "out" / "other_descriptor_knn.nii.gz")
    assert m1.shape == src.shape and np.allclose(m1.affine, src.affine)
    assert m2.shape == (arr.shape[1], arr.shape[0], arr.shape[2]) and np.allclose(m2.affine, src.affine @ flip @ swap)
    a, b = np.asarray(m1.dataobj), np.asarray(m2.dataobj)
    np.testing.assert_allclose(np.swapaxes(b, 0, 1)[::-1], a, rtol=1e-5, atol=1e-6)  # same values at the same place
    lesion = np.asarray(nib.load(case["label"]).dataobj) > 0.5
    assert a[lesion].max() > 0 and recs[0]["score"] == pytest.approx(recs[1]["score"], rel=1e-5)
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [c["case"] for c in scores["cases"]] == [r["case"] for r in recs] and scores["unit"] > 0


def test_bad_inputs_give_one_message_naming_the_file(fitted, tmp_path, capsys):
    tool, memory, _ = fitted
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert tool.main(["predict", "--memory", str(memory), "--output_dir", str(tmp_path / "o"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "broken_descriptor_knn.nii.gz").exists()
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.npz"):
        DescriptorKNN.load(junk)
    with pytest.raises(InputError, match="missing.npz"):
        DescriptorKNN.load(tmp_path / "missing.npz")
