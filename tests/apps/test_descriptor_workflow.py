"""Tests of the descriptor memory as a bundle model: fit + calibration on a datalist, the memory file, the predictor.

:mod:`monai_simsid.apps.descriptor_workflow` and :mod:`monai_simsid.apps.descriptor_inference` on the small synthetic
chests of the ``chest_datalist`` fixture (3 training normals, 1 validation normal, a test normal and a test scan
with a 5 mm dense nodule).
"""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import chest_with_nodule, oblique_affine
from monai_simsid.apps.calibration import calibrate_map
from monai_simsid.apps.descriptor_inference import DescriptorCasePreparer, DescriptorPredictor
from monai_simsid.apps.descriptor_knn import DescriptorKNN
from monai_simsid.apps.descriptor_workflow import (
    fit_descriptor_memory,
    from_canonical,
    load_descriptor_memory,
    resolve_context,
    to_canonical,
)
from monai_simsid.data.datalist import load_datalist
from monai_simsid.utils.errors import InputError

BUNDLE = "descriptor_knn_ct"


def _fit(datalist, path, **kw):
    return fit_descriptor_memory(datalist, path, BUNDLE, "0.1.0", **{"k": 5, "bank_size": 3000, **kw})


@pytest.fixture(scope="module")
def memory(chest_datalist, tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "models" / "memory.npz"
    _fit(chest_datalist, path)
    return path


@pytest.fixture(scope="module")
def predictor(memory):
    knn, extra = load_descriptor_memory(memory, BUNDLE)
    return DescriptorPredictor(knn, extra["calibration"], BUNDLE, "0.1.0", memory_info=extra, write_png=False)


@pytest.mark.parametrize("affine", [np.diag([-1.0, 1.0, 1.0, 1.0]), np.eye(4)[[1, 2, 0, 3]], oblique_affine(angle=2.0)])
def test_canonical_order_is_turned_back_exactly(affine):
    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    ornt = nib.orientations.io_orientation(affine)
    canonical = to_canonical(arr, ornt)
    assert nib.orientations.aff2axcodes(affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)) == ("R", "A", "S")
    np.testing.assert_array_equal(from_canonical(canonical, ornt), arr)


def test_fit_writes_one_calibrated_file_and_records_its_normals(memory, chest_datalist):
    knn, extra = load_descriptor_memory(memory, BUNDLE)
    assert knn.k == 5 and knn.bank.shape[0] == 3000 and extra["bundle"] == BUNDLE and extra["region"] == "scan"
    assert knn.context == "lung_depth"  # "auto" for whole scans: the lung-envelope depth is part of the descriptor
    assert extra["calibrated_on"] == "validation" and extra["n_training"] == 3 and extra["n_calibration"] == 1
    cal = extra["calibration"]
    assert cal["source"] == "1 validation normal scan(s)" and cal["score_method"] == "topk"
    assert cal["voxel_scale"] > 0 and cal["scan_std"] > 0 and cal["voxel_threshold"] > cal["voxel_median"]
    assert cal["normal_slice_mm"] == [pytest.approx(3.0)]  # the largest voxel size of the calibration normal
    # written atomically: no temporary left; the normal-set audit of the training scans beside the memory
    assert sorted(p.name for p in memory.parent.iterdir()) == ["memory.npz", "normal_audit.json"]
    assert len(extra["normal_audit"]) == 3 and all(e["leave_out"] for e in extra["normal_audit"])
    assert extra["search_mm"] == 3.0  # whole scans: a ~3 mm search grid (every voxel of these 3 mm scans)


def test_the_search_grid_is_stored_and_used_at_inference(memory, chest_datalist, tmp_path):
    """A coarser search grid (every second voxel of these 3 mm scans) is stored and used by the predictor; a crop
    memory always searches every voxel."""
    extra = _fit(chest_datalist, tmp_path / "coarse.npz", search_mm=6.0)
    assert extra["search_mm"] == 6.0
    knn, extra = load_descriptor_memory(tmp_path / "coarse.npz", BUNDLE)
    coarse = DescriptorPredictor(knn, extra["calibration"], BUNDLE, "0", memory_info=extra, write_png=False)
    full = DescriptorPredictor(knn, extra["calibration"], BUNDLE, "0", memory_info={**extra, "search_mm": None},
                               write_png=False)  # fmt: skip
    assert coarse.search_mm == 6.0 and full.search_mm is None and coarse.report_extra()["descriptor_memory"]["search_mm"] == 6.0
    lesion = load_datalist(chest_datalist, "test")[1]
    prepared = coarse.prepare(lesion)
    region, ornt = prepared["region"], prepared["ornt"]
    a, b = coarse.raw_map(dict(prepared)), full.raw_map(dict(prepared))
    nodes = np.zeros(to_canonical(region, ornt).shape, bool)
    nodes[::2, ::2, ::2] = True  # the search grid, in closest-RAS order
    on_grid = from_canonical(nodes, ornt) & region
    assert not np.allclose(a, b) and not a[~region].any()
    np.testing.assert_allclose(a[on_grid], b[on_grid], rtol=1e-5)  # searched there, interpolated elsewhere
    assert _fit(chest_datalist, tmp_path / "crop.npz", region="crop", search_mm=6.0)["search_mm"] is None
    assert _fit(chest_datalist, tmp_path / "all.npz", search_mm="none")["search_mm"] is None  # as a command line gives it


def test_without_validation_normals_it_calibrates_on_the_training_ones(chest_datalist, tmp_path, caplog):
    data = json.loads(chest_datalist.read_text())
    root = chest_datalist.parent
    entries = [{"image": str(root / e["image"])} for e in data["training"][:2]]
    datalist = tmp_path / "datalist.json"
    lesion = {"image": str(root / "nodule_5.nii.gz"), "label": str(root / "nodule_5_label.nii.gz")}
    datalist.write_text(json.dumps({"training": entries, "validation": [lesion]}))  # no normal validation scan
    with caplog.at_level(logging.WARNING):
        extra = _fit(datalist, tmp_path / "m.npz")
    assert extra["calibrated_on"] == "training" and extra["n_calibration"] == 2
    assert extra["calibration"]["source"].startswith("2 training normal scan(s)") and "optimistic" in caplog.text


def test_normal_scans_stay_mostly_below_the_threshold(predictor, chest_datalist):
    val = load_datalist(chest_datalist, "validation")[0]
    test_normal = load_datalist(chest_datalist, "test")[0]
    for item, limit in ((val, 0.002), (test_normal, 0.02)):  # the calibration scan itself: ~voxel_fpr = 0.001
        prepared = predictor.prepare(item)
        region = prepared["region"]
        pred = predictor.predict_prepared(prepared)
        assert (pred.anomaly_map[region] >= 0.5).mean() <= limit
        assert pred.label == "normal" and pred.score < 0.5
    # 0.5 is exactly the raw voxel threshold of the normals
    raw = torch.tensor([predictor.calibration["voxel_threshold"]])
    assert float(calibrate_map(raw, predictor.calibration)[0]) == pytest.approx(0.5)


def test_a_dense_nodule_scores_above_the_rest_of_the_lung(predictor, chest_datalist):
    normal, lesion = load_datalist(chest_datalist, "test")
    _, nodule, affine, centre = chest_with_nodule(5)
    prepared = predictor.prepare(lesion)
    region = prepared["region"]
    pred = predictor.predict_prepared(prepared)
    amap = pred.anomaly_map
    grid = np.meshgrid(*[(np.arange(n) - c) * 3.0 for n, c in zip(amap.shape, centre)], indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grid))
    rest = region & (dist > 15.0)
    assert amap[nodule].mean() > 0.5 and amap[nodule].mean() > np.percentile(amap[rest], 99)
    assert np.all(amap[~region] == 0) and region[nodule].all()
    top = np.asarray(pred.findings[0]["centroid_voxel"], dtype=float)
    assert np.linalg.norm((top - np.asarray(centre)) * 3.0) < 10.0  # the first finding is the nodule
    assert pred.score > predictor.predict(normal).score


def test_context_follows_the_region():
    assert resolve_context("scan") == "lung_depth" and resolve_context("crop") is None
    assert resolve_context("scan", None) is None and resolve_context("scan", "lung_depth") == "lung_depth"
    assert resolve_context("scan", "none") is None and resolve_context("crop", "none") is None


def test_bad_memory_files_are_input_errors_naming_them(memory, tmp_path):
    with pytest.raises(InputError, match="missing.npz"):
        load_descriptor_memory(tmp_path / "missing.npz", BUNDLE)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.npz"):
        load_descriptor_memory(tmp_path / "junk.npz", BUNDLE)
    knn, extra = DescriptorKNN.load(memory)
    knn.save(tmp_path / "other.npz", **{**extra, "bundle": "simsid_ct"})
    with pytest.raises(InputError, match=r"other.npz: .*bundle 'simsid_ct', not 'descriptor_knn_ct'"):
        load_descriptor_memory(tmp_path / "other.npz", BUNDLE)
    knn.save(tmp_path / "bare.npz", bundle=BUNDLE)
    with pytest.raises(InputError, match=r"bare.npz: .*no calibration"):
        load_descriptor_memory(tmp_path / "bare.npz", BUNDLE)


def test_bad_settings_fail_early_and_bad_scans_name_the_file(memory, chest_datalist, ct_file, tmp_path):
    knn, extra = load_descriptor_memory(memory)
    cal = extra["calibration"]
    with pytest.raises(ValueError, match="fitted"):
        DescriptorPredictor(DescriptorKNN(), cal, BUNDLE, "0")
    with pytest.raises(ValueError, match="region"):
        DescriptorPredictor(knn, cal, BUNDLE, "0", region="lobe")
    with pytest.raises(ValueError, match="score_method"):
        DescriptorPredictor(knn, cal, BUNDLE, "0", score_method="discriminator")
    with pytest.raises(ValueError, match="no calibration"):
        DescriptorPredictor(knn, None, BUNDLE, "0")
    with pytest.raises(ValueError, match="whole chest scans"):  # a crop has no lung envelope
        DescriptorPredictor(knn, cal, BUNDLE, "0", region="crop")
    bad_settings = (
        ({"region": "lobe"}, "region"), ({"fpr": 0.0}, "fpr"), ({"k": 0}, "k must"),
        ({"context": "depth"}, "context must"), ({"region": "crop", "context": "lung_depth"}, "whole chest scans"),
        ({"search_mm": 0.0}, "search_mm"), ({"search_mm": "fast"}, "search_mm"),
    )
    for kw, msg in bad_settings:
        with pytest.raises(ValueError, match=msg):  # before the datalist is read
            _fit(tmp_path / "absent.json", tmp_path / "m.npz", **kw)
    labelled = tmp_path / "labelled.json"
    root = chest_datalist.parent
    lesion = {"image": str(root / "nodule_5.nii.gz"), "label": str(root / "nodule_5_label.nii.gz")}
    labelled.write_text(json.dumps({"training": [lesion]}))
    with pytest.raises(InputError, match="labelled.json: .*no normal scan"):
        fit_descriptor_memory(labelled, tmp_path / "m.npz", BUNDLE, "0")
    # a CT without any lung (soft tissue everywhere): no lung region for a scan, the whole VOI as a crop
    solid = str(ct_file(np.full((20, 20, 20), 40.0, np.float32), name="solid.nii.gz"))
    with pytest.raises(InputError, match="solid.nii.gz: no lung region"):
        DescriptorCasePreparer("scan", check_ct=False)({"image": solid})
    assert DescriptorCasePreparer("crop", check_ct=False)({"image": solid})["region"].all()


def test_a_lung_voi_without_bone_passes_the_crop_check_only(ct_file):
    """A nodule VOI inside the lung holds no value above 100 HU: whole-scan CT check fails, the crop check passes;
    an image that is not in HU fails both, naming the file."""
    rng = np.random.default_rng(0)
    voi = rng.normal(-850.0, 20.0, (24, 24, 24)).astype(np.float32)
    voi[9:15, 9:15, 9:15] = 30.0
    path = str(ct_file(voi, name="voi.nii.gz"))
    with pytest.raises(InputError, match="voi.nii.gz: intensities"):
        DescriptorCasePreparer("scan")({"image": path})
    assert DescriptorCasePreparer("crop")({"image": path})["region"].all()
    scaled = str(ct_file((voi + 1000.0) / 1400.0, name="scaled.nii.gz"))  # normalised to about [0, 1]
    with pytest.raises(InputError, match="scaled.nii.gz: .*lung VOI"):
        DescriptorCasePreparer("crop")({"image": scaled})


def test_a_bad_training_scan_names_the_file_and_leaves_the_old_memory(memory, chest_datalist, tmp_path):
    target = tmp_path / "memory.npz"
    shutil.copy(memory, target)
    before = target.read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    data = json.loads(chest_datalist.read_text())
    good = {"image": str(chest_datalist.parent / data["training"][0]["image"])}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [good, {"image": str(tmp_path / "broken.nii.gz")}]}))
    with pytest.raises(InputError, match="broken.nii.gz: cannot be read"):
        _fit(datalist, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz", "datalist.json", "memory.npz"]


def test_the_audit_ranks_a_training_scan_with_a_nodule_first(chest_datalist, tmp_path):
    """A 'normal' training scan that holds a nodule: the memory of the other scans finds it, where it is."""
    root = chest_datalist.parent
    names = ["normal_0", "normal_1", "nodule_5"]
    training = [{"image": str(root / f"{n}.nii.gz")} for n in names]
    datalist = tmp_path / "with_nodule.json"
    datalist.write_text(json.dumps({"training": training}))
    extra = _fit(datalist, tmp_path / "m" / "memory.npz")
    audit = extra["normal_audit"]
    assert [e["source"] for e in audit][0] == training[2]["image"]
    written = json.loads((tmp_path / "m" / "normal_audit.json").read_text())
    assert written["scans"] == audit
    label = nib.load(str(root / "nodule_5_label.nii.gz"))
    centre = label.affine @ np.r_[np.argwhere(np.asarray(label.dataobj) > 0).mean(axis=0), 1.0]
    assert np.linalg.norm(np.asarray(audit[0]["peak_ras_mm"]) - centre[:3]) <= 6.0  # on the 5 mm nodule
    assert _fit(datalist, tmp_path / "c" / "memory.npz", region="crop")["normal_audit"] is None


def test_an_excluded_region_of_a_training_scan_is_left_out(chest_datalist, tmp_path):
    """The scan with the nodule, its region excluded (``exclude`` in the datalist): the audit looks elsewhere in it.
    A mask that does not match its scan is one clear error naming the mask."""
    root = chest_datalist.parent
    names = ["normal_0", "normal_1", "nodule_5"]
    training = [{"image": str(root / f"{n}.nii.gz")} for n in names]
    training[2]["exclude"] = str(root / "nodule_5_label.nii.gz")
    datalist = tmp_path / "excluded.json"
    datalist.write_text(json.dumps({"training": training}))
    audit = {e["source"]: e for e in _fit(datalist, tmp_path / "m" / "memory.npz")["normal_audit"]}
    label = nib.load(str(root / "nodule_5_label.nii.gz"))
    centre = label.affine @ np.r_[np.argwhere(np.asarray(label.dataobj) > 0).mean(axis=0), 1.0]
    assert np.linalg.norm(np.asarray(audit[training[2]["image"]]["peak_ras_mm"]) - centre[:3]) > 10.0
    small = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), label.affine), str(small))
    training[2]["exclude"] = str(small)
    datalist.write_text(json.dumps({"training": training}))
    with pytest.raises(InputError, match="small_mask.nii.gz: exclude mask shape"):
        _fit(datalist, tmp_path / "bad" / "memory.npz")
