"""Audit of the normal scans (:mod:`monai_simsid.apps.audit`): the scan with a compact outlier region comes first."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from monai_simsid.apps.audit import audit_normal_terms


def _terms(seed: int = 0):
    rng = np.random.default_rng(seed)
    terms = [rng.uniform(0.0, 1.0, (20, 20, 20)).astype(np.float32) for _ in range(3)]
    regions = [np.ones((20, 20, 20), dtype=bool) for _ in range(3)]
    return terms, regions


def test_a_compact_region_ranks_its_scan_first_and_is_located_in_world_coordinates():
    terms, regions = _terms()
    terms[1][11:14, 4:7, 8:11] = 3.0  # a 3-voxel (6 mm) region of a 2 mm grid (averaged over 3 voxels)
    terms[2][2, 2, 2] = 12.0  # one noisy voxel: higher, but not compact
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 100.0)
    audit = audit_normal_terms(terms, regions, [affine] * 3, ["a", "b", "c"], [True, True, False])
    assert [e["source"] for e in audit][0] == "b"
    top = audit[0]
    assert top["model_voxel"] == [12, 5, 9]
    assert top["peak_ras_mm"] == [-10.0 + 24.0, 5.0 + 10.0, 100.0 + 18.0]
    assert top["peak_lps_mm"] == [-top["peak_ras_mm"][0], -top["peak_ras_mm"][1], top["peak_ras_mm"][2]]
    assert top["peak"] > 2.0 and top["leave_out"] is True
    assert {e["source"]: e["leave_out"] for e in audit}["c"] is False
    assert all(audit[i]["peak"] >= audit[i + 1]["peak"] for i in range(len(audit) - 1))
    # the averaging width counts: one voxel wide, the noisy voxel wins
    narrow = audit_normal_terms(terms, regions, [affine] * 3, ["a", "b", "c"], [True] * 3, smooth_mm=1.0)
    assert narrow[0]["source"] == "c"


def test_only_the_region_counts_and_empty_regions_are_skipped():
    terms, regions = _terms(1)
    terms[0][:5] = 50.0  # outside its region
    regions[0][:8] = False
    regions[2][:] = False
    audit = audit_normal_terms(terms, regions, [np.eye(4)] * 3, ["a", "b", "c"], [True] * 3)
    assert [e["source"] for e in audit] != [] and "c" not in [e["source"] for e in audit]
    assert max(e["peak"] for e in audit) < 1.0


@pytest.mark.parametrize(
    "change",
    [{"sources": ["a"]}, {"smooth_mm": 0.0}, {"affines": [np.eye(3)] * 3}, {"regions": [np.ones((2, 2, 2), bool)] * 3}],
)
def test_bad_arguments(change):
    terms, regions = _terms()
    args = {"terms": terms, "regions": regions, "affines": [np.eye(4)] * 3, "sources": list("abc"), "leave_out": [True] * 3}
    with pytest.raises(ValueError):
        audit_normal_terms(**{**args, **change})


def test_calibration_audits_the_normal_scans_and_finds_a_nodule_in_one(tmp_path):
    from test_fusion import WINDOWS, _item, _LungWindowModel

    from monai_simsid.handlers.calibration import CalibrationHandler
    from monai_simsid.inferers.anomaly import AnomalyInferer

    net, inferer = _LungWindowModel(), AnomalyInferer((16, 16, 16), sw_batch_size=2, overlap=0.25)
    with_nodule, _, nodule, centre = _item(2, radius_mm=7.0)
    normals = [_item(0)[0], _item(1)[0], with_nodule]
    cal = CalibrationHandler(
        net, inferer, normals, output_path=tmp_path / "model.pt", bundle_name="b", bundle_version="0", model_config={},
        source="normals", normative_depth_windows=WINDOWS, descriptor_fusion=True,
    )()
    audit = cal["normal_audit"]
    assert len(audit) == 3 and all(e["leave_out"] for e in audit)
    assert audit[0]["source"] == str(id(with_nodule))  # (no file name in these items: the item's id)
    assert audit[0]["peak"] > 1.5 * audit[1]["peak"]
    assert np.linalg.norm(np.subtract(audit[0]["model_voxel"], centre)) * 3.0 <= 7.0  # inside the 7 mm nodule
    written = json.loads((tmp_path / "normal_audit.json").read_text())
    assert written["scans"] == json.loads(json.dumps(audit)) and written["smooth_mm"] == 5.0
    assert not list(tmp_path.glob(".*tmp*"))


def test_an_excluded_region_is_left_out_of_the_calibration_and_the_audit(tmp_path):
    """The same three normals, the nodule's region excluded in its scan (datalist ``exclude``): the audit no longer
    finds it, the voxel threshold drops, and the memory's bank holds no row from it."""
    from test_fusion import WINDOWS, _item, _LungWindowModel

    from monai_simsid.apps.fusion import DescriptorFusion
    from monai_simsid.data.exclusion import EXCLUDE_MARGIN_MM
    from monai_simsid.handlers.calibration import CalibrationHandler
    from monai_simsid.inferers.anomaly import AnomalyInferer

    net, inferer = _LungWindowModel(), AnomalyInferer((16, 16, 16), sw_batch_size=2, overlap=0.25)
    with_nodule, hu, nodule, centre = _item(2, radius_mm=7.0)
    runs, scans = {}, {}
    for excluded in (False, True):
        scan = scans[excluded] = dict(with_nodule, exclude=torch.as_tensor(nodule)[None].float()) if excluded else with_nodule
        runs[excluded] = CalibrationHandler(
            net, inferer, [_item(0)[0], _item(1)[0], scan], output_path=tmp_path / str(excluded) / "model.pt",
            bundle_name="b", bundle_version="0", model_config={}, source="normals", normative_depth_windows=WINDOWS,
            descriptor_fusion=True,
        )()
    before = {e["source"]: e for e in runs[False]["normal_audit"]}[str(id(with_nodule))]
    after = {e["source"]: e for e in runs[True]["normal_audit"]}[str(id(scans[True]))]
    assert after["peak"] < 0.6 * before["peak"]
    # the new peak lies beyond the grown exclusion (the nodule's 7 mm radius plus the margin), 3 mm voxels
    assert np.linalg.norm(np.subtract(after["model_voxel"], centre)) * 3.0 > 7.0 + EXCLUDE_MARGIN_MM - 3.0
    # the sampled normal voxels leave the grown region out
    from monai_simsid.data.exclusion import item_exclusion
    from monai_simsid.handlers.calibration import collect_normal_statistics

    stats = {e: collect_normal_statistics(net, inferer, [scans[e]]) for e in (False, True)}
    body = np.asarray(with_nodule["body"][0]) > 0.5
    gone = item_exclusion(scans[True])
    assert stats[False][2].size == body.sum() and stats[True][2].size == (body & ~gone).sum() < body.sum()
    banks = [len(DescriptorFusion.from_dict(runs[e]["fusion"]).knn.bank) for e in (False, True)]
    assert 0 < banks[1] < banks[0]
