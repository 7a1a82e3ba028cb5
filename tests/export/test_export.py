from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import oblique_affine, simple_ct  # noqa: E402

from monai_simsid.export import (  # noqa: E402
    ScoresTable,
    append_scores_csv,
    build_report,
    read_slicer_segmentation,
    save_nifti,
    save_overview_png,
    save_slicer_segmentation,
    write_report,
)
from monai_simsid.utils.errors import InputError  # noqa: E402

SHAPE = (12, 10, 8)


def _sheared_affine():
    aff = oblique_affine()
    aff[0, 2] += 0.4  # a shear the qform cannot represent
    return aff


@pytest.mark.parametrize("affine_fn", [oblique_affine, _sheared_affine])
def test_nifti_round_trip(tmp_path, affine_fn):
    aff = affine_fn()
    arr = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    p = save_nifti(arr, aff, tmp_path / "case_anomaly_map.nii.gz", dtype=np.float32)
    img = nib.load(str(p))
    assert img.shape == SHAPE
    assert np.allclose(img.affine, aff, atol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert np.array_equal(np.asarray(img.dataobj), arr)
    labels = (arr > 0.5).astype(np.uint8)
    p2 = save_nifti(labels[None], aff, tmp_path / "labels.nii.gz", dtype=np.uint8)
    back = nib.load(str(p2))
    assert back.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(back.dataobj), labels)
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []
    with pytest.raises(ValueError):
        save_nifti(arr, aff[:3], tmp_path / "bad.nii.gz")
    with pytest.raises(InputError):
        save_nifti(arr, aff, tmp_path / "missing" / "x.nii.gz")


def test_slicer_segmentation_geometry_pynrrd_and_sitk(tmp_path):
    aff = oblique_affine(spacing=(0.7, 1.2, 2.5))
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:6, 2:4, 1:7] = 1
    mask[8, 8, 2] = 3  # any label > 0 joins the one segment
    p = save_slicer_segmentation(mask, aff, tmp_path / "case.seg.nrrd")

    back, aff_back = read_slicer_segmentation(p)
    assert back.shape == SHAPE and np.array_equal(back, (mask > 0).astype(np.uint8))
    assert np.allclose(aff_back, aff, atol=1e-6)

    _, hdr = nrrd.read(str(p))
    assert hdr["space"] == "left-posterior-superior"
    assert hdr["encoding"] == "gzip" and list(hdr["kinds"]) == ["domain"] * 3
    assert hdr["Segment0_Name"] == "Anomaly" and hdr["Segment0_LabelValue"] == "1"
    assert hdr["Segment0_Extent"] == "3 8 2 8 1 6"
    assert [float(c) for c in hdr["Segment0_Color"].split()] == [1.0, 0.3, 0.1]
    tags = hdr["Segment0_Tags"]
    assert tags.startswith("TerminologyEntry:") and tags.endswith("|")
    assert len(tags[len("TerminologyEntry:"):-1].split("~")) == 7
    assert hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert hdr["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"

    # ITK reads the same geometry, in LPS: origin/spacing/direction == the RAS affine with x, y negated
    img = sitk.ReadImage(str(p))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    assert np.allclose(img.GetSpacing(), spacing, atol=1e-6)
    assert np.allclose(img.GetOrigin(), lps[:3, 3], atol=1e-6)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    assert np.allclose(direction @ np.diag(spacing), lps[:3, :3], atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), back)


def test_report_json(tmp_path):
    findings = [{"id": 1, "centroid_ras_mm": np.array([1.0, 2.0, 3.0]), "peak_score": np.float32(0.9)}]
    rep = build_report(
        "case1", np.float64(0.73), "anomalous", 0.5, "validation normals, 95th percentile", findings,
        "simsid3d_ct", "0.1.0", {"spacing": (1.5, 1.5, 1.5), "window": [-1000, 500]}, extra={"files": {"x": Path("a")}},
    )
    p = write_report(rep, tmp_path / "case1_report.json")
    data = json.loads(p.read_text())
    for key in ("coordinate_system", "score", "label", "threshold", "threshold_source", "findings", "bundle",
                "preprocessing", "created"):
        assert key in data
    assert data["coordinate_system"] == "RAS and LPS, scanner millimetres"
    assert data["label"] == "anomalous" and data["score"] == pytest.approx(0.73)
    assert data["bundle"] == {"name": "simsid3d_ct", "version": "0.1.0"}
    assert data["findings"][0]["centroid_ras_mm"] == [1.0, 2.0, 3.0]
    assert data["preprocessing"]["spacing"] == [1.5, 1.5, 1.5] and data["files"] == {"x": "a"}
    with pytest.raises(ValueError):
        build_report("c", 0.1, "maybe", 0.5, "x", [], "b", "1", {})
    with pytest.raises(ValueError):
        build_report("c", float("nan"), "normal", 0.5, "x", [], "b", "1", {})
    with pytest.raises(ValueError):
        build_report("c", 0.1, "normal", 0.5, "x", [], "b", "1", {}, extra={"score": 1})


def test_scores_table_round_trip(tmp_path):
    path = tmp_path / "scores.csv"
    append_scores_csv(path, "a", 0.25, "normal", 0)
    append_scores_csv(path, "b,with comma", 0.8125, "anomalous", 3)
    append_scores_csv(path, "a", 0.3, "normal", 1)  # re-run replaces the row
    lines = path.read_text().splitlines()
    assert lines[0] == "case,score,label,findings" and len(lines) == 3
    table = ScoresTable.read(path)
    assert table.rows["a"] == {"case": "a", "score": 0.3, "label": "normal", "findings": 1}
    assert table.rows["b,with comma"]["score"] == 0.8125 and table.rows["b,with comma"]["findings"] == 3
    with pytest.raises(ValueError):
        table.add("c", 0.1, "normal", -1)


def test_overview_png(tmp_path):
    shape = (40, 44, 16)
    img = simple_ct(shape)
    smap = np.zeros(shape, np.float32)
    smap[5:10, 30:36, 10:13] = 0.9
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    p = save_overview_png(img, smap, aff, tmp_path / "case_overview.png", case="c", score=0.9, label="anomalous", dpi=40)
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []
    with pytest.raises(ValueError):
        save_overview_png(img, smap[:5], aff, tmp_path / "x.png")


def test_slicer_segmentation_binarises_float_masks_like_nan_to_num(tmp_path):
    from monai_simsid.export.slicer import save_slicer_segmentation

    m = np.array([np.nan, -np.inf, np.inf, -1.0, 0.0, 1e-9, 0.5, 2.0] * 3, dtype=np.float32).reshape(2, 3, 4)
    path = save_slicer_segmentation(m, np.eye(4), tmp_path / "m.seg.nrrd")
    data, _ = nrrd.read(str(path), index_order="F")
    np.testing.assert_array_equal(data, (np.nan_to_num(m.astype(np.float64)) > 0).astype(np.uint8))
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3
    data, _ = nrrd.read(str(save_slicer_segmentation(labels, np.eye(4), tmp_path / "l.seg.nrrd")), index_order="F")
    np.testing.assert_array_equal(data, (labels > 0).astype(np.uint8))
