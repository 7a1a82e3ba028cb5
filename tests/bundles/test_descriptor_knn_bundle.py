"""The descriptor_knn_ct bundle through MONAI's ConfigWorkflow: train (fit + calibrate) -> inference -> evaluate.

Small settings (a bank of 3000 descriptors, k = 5) on the ``chest_datalist`` fixture's 40^3 synthetic chests. The
inputs of the inference run are stored in other voxel orders (flipped and permuted axes, an oblique affine) and
include bad files, which must land in ``errors.csv`` while the good cases are written.
"""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from conftest import SHARED_CT, bundle_config, oblique_affine
from monai_simsid.apps.descriptor_workflow import load_descriptor_memory
from monai_simsid.utils.errors import find_input_error

BUNDLE = "descriptor_knn_ct"
SMALL = {"k": 5, "bank_size": 3000}


def _run(config, **overrides):
    wf = ConfigWorkflow(config_file=config, workflow_type=None, **overrides)
    wf.initialize()
    result = wf.run()
    wf.finalize()
    return result


def _inference_configs(evaluate: bool = False):
    names = ["inference.json", "evaluate.json"] if evaluate else ["inference.json"]
    return [bundle_config(BUNDLE, n) for n in names]


@pytest.fixture(scope="module")
def memory(chest_datalist, tmp_path_factory):
    out = tmp_path_factory.mktemp("knn_train")
    _run(bundle_config(BUNDLE, "train.json"), datalist=str(chest_datalist), output_dir=str(out), **SMALL)
    return out / "models" / "memory.npz"


def _reoriented(src: nib.Nifti1Image, dst) -> np.ndarray:
    """Save ``src`` with the first axis flipped and the first two swapped (another voxel order); its affine."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = src.shape[0] - 1
    affine = src.affine @ flip @ np.eye(4)[[1, 0, 2, 3]]
    nib.save(nib.Nifti1Image(np.swapaxes(np.asarray(src.dataobj)[::-1], 0, 1).copy(), affine), dst)
    return affine


def test_train_writes_one_calibrated_memory_file(memory):
    knn, extra = load_descriptor_memory(memory, BUNDLE)
    assert extra["bundle"] == BUNDLE and extra["version"] == json.load(open(bundle_config(BUNDLE, "metadata.json")))["version"] and knn.k == 5 and knn.bank.shape[0] == 3000
    assert extra["calibrated_on"] == "validation" and extra["calibration"]["source"] == "1 validation normal scan(s)"
    assert sorted(p.name for p in memory.parent.iterdir()) == ["memory.npz", "normal_audit.json"]  # no temporary
    # the descriptor by default: HU at five widths and the lung-envelope depth (no shape features)
    assert knn.shape_scales_mm == () and knn.bank.shape[1] == 5 + 1


def test_shape_features_can_be_turned_on(chest_datalist, tmp_path):
    _run(bundle_config(BUNDLE, "train.json"), datalist=str(chest_datalist), output_dir=str(tmp_path),
         shape_scales_mm=[1.5, 3.0, 5.0], **SMALL)  # fmt: skip
    knn, _ = load_descriptor_memory(tmp_path / "models" / "memory.npz", BUNDLE)
    assert knn.shape_scales_mm == (1.5, 3.0, 5.0) and knn.bank.shape[1] == 5 + 6 + 1


def test_inference_keeps_each_scans_geometry_and_lists_bad_inputs(memory, chest_datalist, tmp_path):
    root = chest_datalist.parent
    scans = tmp_path / "in"
    scans.mkdir()
    shutil.copy(root / "nodule_5.nii.gz", scans / "nodule.nii.gz")
    src = nib.load(root / "nodule_5.nii.gz")
    flipped_affine = _reoriented(src, scans / "nodule_flipped.nii.gz")
    normal = nib.load(root / "normal_4.nii.gz")
    oblique = nib.Nifti1Image(np.asarray(normal.dataobj), oblique_affine(spacing=(3.0, 3.0, 3.0)))
    nib.save(oblique, scans / "oblique.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a nifti")
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), scans / "slice2d.nii.gz")
    mri = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32) * 50  # no air, no bone: not HU
    nib.save(nib.Nifti1Image(mri, np.eye(4)), scans / "mri.nii.gz")
    out = tmp_path / "out"

    result = _run(_inference_configs(), ckpt_path=str(memory), dataset_dir=str(scans), output_dir=str(out),
                  write_png=False)[0]

    assert sorted(result["done"]) == ["nodule", "nodule_flipped", "oblique"]
    with open(out / "errors.csv") as f:
        errors = {row["input"].rsplit("/", 1)[-1]: row["problem"] for row in csv.DictReader(f)}
    assert set(errors) == {"broken.nii.gz", "slice2d.nii.gz", "mri.nii.gz"}
    assert "2D" in errors["slice2d.nii.gz"] and "Hounsfield" in errors["mri.nii.gz"]
    maps = {}
    for case in ("nodule", "nodule_flipped", "oblique"):
        image = nib.load(scans / f"{case}.nii.gz")
        amap = nib.load(out / case / f"{case}_anomaly_map.nii.gz")
        assert amap.shape == image.shape and np.array_equal(amap.affine, image.affine), case
        maps[case] = np.asarray(amap.dataobj)
        assert 0.0 <= maps[case].min() and maps[case].max() <= 1.0
        report = json.loads((out / case / f"{case}_report.json").read_text())
        assert report["bundle"]["name"] == BUNDLE and report["threshold"] == 0.5 and report["score_method"] == "topk"
        assert report["descriptor_memory"]["calibrated_on"] == "validation"
    assert np.array_equal(flipped_affine, nib.load(scans / "nodule_flipped.nii.gz").affine)
    # the same scan in another voxel order gets the same map, value for value
    np.testing.assert_array_equal(np.swapaxes(maps["nodule_flipped"], 0, 1)[::-1], maps["nodule"])
    lung = maps["oblique"] > 0  # the calibrated map is > 0 throughout the lung region and 0 outside it
    assert (maps["oblique"][lung] >= 0.5).mean() < 0.02 and (maps["nodule"] >= 0.5).sum() > 0
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "case,score,label,findings" and len(rows) == 4
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert not leftovers  # every output was written atomically


def test_evaluate_writes_the_shared_metrics(memory, chest_datalist, tmp_path):
    out = tmp_path / "eval"
    result = _run(_inference_configs(evaluate=True), ckpt_path=str(memory), datalist=str(chest_datalist),
                  output_dir=str(out), write_png=False, num_workers=0)[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bundle"] == BUNDLE and metrics["num_cases"] == 2 == result["num_cases"]
    m = metrics["metrics"]
    assert m["sample_auroc"] == 1.0 and m["voxel_auroc"] > 0.9 and m["n_lesions"] == 1 and m["n_lesions_detected"] == 1
    assert [c["lesion_case"] for c in metrics["cases"]] == [False, True]
    assert (out / "nodule_5" / "nodule_5_anomaly_map.nii.gz").is_file()


def test_a_missing_or_invalid_memory_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    cases = ((tmp_path / "missing.npz", "does not exist"), (tmp_path / "junk.npz", "not a descriptor memory"))
    for path, problem in cases:
        wf = ConfigWorkflow(config_file=_inference_configs(), workflow_type=None, ckpt_path=str(path),
                            dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
        wf.initialize()
        with pytest.raises(Exception) as info:
            wf.run()
        err = find_input_error(info.value)
        assert err is not None and err.path == str(path) and problem in err.problem


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_CT.is_dir(), reason=f"real CT data not found at {SHARED_CT}")
def test_real_ct_lung2_is_anomalous_and_its_first_finding_is_the_tumour(tmp_path):
    """Fitted on the three normal chest scans of ../shared (default settings, no label read), the bundle calls lung2
    anomalous and its first finding lies on the tumour (docs/benchmarks.md measured 66% tumour voxels)."""
    normals = sorted(str(p) for p in (SHARED_CT / "normal").glob("chest_*.nii.gz"))
    assert len(normals) == 3
    datalist = tmp_path / "datalist.json"
    lung2 = str(SHARED_CT / "lesion" / "lung2_ct.nii.gz")
    datalist.write_text(json.dumps({"training": [{"image": p} for p in normals], "test": [{"image": lung2}]}))
    _run(bundle_config(BUNDLE, "train.json"), datalist=str(datalist), output_dir=str(tmp_path / "train"))
    out = tmp_path / "pred"
    _run(_inference_configs(), ckpt_path=str(tmp_path / "train" / "models" / "memory.npz"), datalist=str(datalist),
         output_dir=str(out), write_png=False, num_workers=0)  # fmt: skip
    report = json.loads((out / "lung2_ct" / "lung2_ct_report.json").read_text())
    assert report["label"] == "anomalous" and report["score"] > 0.5
    # lung2's 5 mm slices against normals of 2.5 mm at most: the report says so
    acquisition = report["acquisition"]
    assert acquisition["slice_mm"] == pytest.approx(5.0) and acquisition["normal_slice_mm"] == pytest.approx(2.5)
    assert "thicker" in acquisition["note"]
    tumour = np.asarray(nib.load(str(SHARED_CT / "lesion" / "lung2_lesion.nii.gz")).dataobj) > 0
    mask = np.asarray(nib.load(str(out / "lung2_ct" / "lung2_ct_anomaly_mask.nii.gz")).dataobj)
    first = report["findings"][0]
    assert tumour[tuple(first["peak_voxel"])]
    assert tumour[mask == first["id"]].mean() > 0.5
