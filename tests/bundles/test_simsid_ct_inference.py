"""Train simsid_ct briefly on synthetic data, then run inference.json / evaluate.json through ConfigWorkflow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import torch
import pytest
import SimpleITK as sitk
from monai.bundle import ConfigWorkflow

from conftest import bundle_config, load_tool, oblique_affine
from monai_simsid.apps.inference import input_body_mask
from monai_simsid.data.datalist import load_datalist
from monai_simsid.export import read_slicer_segmentation
from monai_simsid.utils.errors import find_input_error

#: the bundle's descriptor_args hu_max (the ceiling of the descriptor memory's HU clip)
HU_MAX_DEFAULT = 40.0
TRAIN = {"roi_size": [32, 32, 32], "num_samples": 4, "batch_size": 2, "progress": False, "max_epochs": 8, "val_interval": 100, "learning_rate": 2e-3}


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(synthetic_dataset), output_dir=str(out), **TRAIN)
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "models" / "model.pt"


def _infer(ckpt, out, config="inference.json", **kw):
    files = bundle_config("simsid_ct", "inference.json")
    if config != "inference.json":
        files = [files, bundle_config("simsid_ct", config)]
    wf = ConfigWorkflow(config_file=files, workflow_type="infer", ckpt_path=str(ckpt), output_dir=str(out), **kw)
    wf.initialize()
    result = wf.run()
    wf.finalize()
    return result


def test_inference_writes_the_contract_files_in_input_geometry(trained, synthetic_dataset, tmp_path):
    # an oblique, anisotropic copy of a lesion case checks that the map keeps the input header exactly
    case = load_datalist(synthetic_dataset, "test")
    lesion_case = next(c for c in case if c.get("label"))
    src = nib.load(lesion_case["image"])
    aff = oblique_affine(spacing=(2.5, 3.0, 3.5), angle=0.25)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), aff), str(tmp_path / "in" / "oblique.nii.gz"))
    out = tmp_path / "out"
    _infer(trained, out, dataset_dir=str(tmp_path / "in"))
    folder = out / "oblique"
    for suffix in ("_anomaly_map.nii.gz", "_anomaly_mask.nii.gz", "_anomaly.seg.nrrd", "_report.json", "_overview.png"):
        assert (folder / f"oblique{suffix}").is_file(), suffix
    amap = nib.load(str(folder / "oblique_anomaly_map.nii.gz"))
    assert amap.shape == src.shape
    np.testing.assert_allclose(amap.affine, aff, atol=1e-5)
    data = np.asarray(amap.dataobj)
    assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0
    body = input_body_mask(np.asarray(src.dataobj, dtype=np.float32), aff)
    assert data[~body].max() == 0.0 and body.mean() > 0.2  # 0 outside the body
    mask, seg_aff = read_slicer_segmentation(folder / "oblique_anomaly.seg.nrrd")
    assert mask.shape == src.shape
    np.testing.assert_allclose(seg_aff, aff, atol=1e-4)
    itk_img = sitk.ReadImage(str(folder / "oblique_anomaly.seg.nrrd"))
    np.testing.assert_allclose(itk_img.GetSpacing(), (2.5, 3.0, 3.5), atol=1e-4)
    report = json.loads((folder / "oblique_report.json").read_text())
    assert report["label"] in ("normal", "anomalous") and 0 <= report["score"] <= 1
    assert report["bundle"]["name"] == "simsid_ct"
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "case,score,label,findings" and rows[1].startswith("oblique,")


def test_evaluate_json_metrics_match_an_independent_computation(trained, synthetic_dataset, tmp_path):
    # A model trained for 8 tiny epochs is too weak for a quality bar: its lesion voxel AUROC moves between 0.44 and
    # 0.81 with the seed (for either decoder). Quality is measured by tools/benchmark.py and `make demo`; here the
    # metrics of evaluate.json must equal sklearn's on the predictor's own maps (lesion cases, body + lesion voxels).
    from sklearn.metrics import roc_auc_score

    from monai_simsid.apps.inference import load_predictor
    from monai_simsid.transforms.io import LoadCT

    result = _infer(trained, tmp_path, config="evaluate.json", datalist=str(synthetic_dataset), write_outputs=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    cases = load_datalist(synthetic_dataset, "test")
    assert result[0]["num_cases"] == len(cases)
    predictor = load_predictor("simsid_ct", trained, device="cpu")
    values, truth, scores, sample_truth = [], [], [], []
    for case in cases:
        pred = predictor.predict(case)
        lesion = LoadCT(is_label=True)(case["label"])[0].numpy() > 0.5 if case.get("label") else None
        scores.append(pred.score)
        sample_truth.append(int(lesion is not None and lesion.any()))
        if sample_truth[-1]:
            region = pred.body | lesion
            values.append(pred.anomaly_map[region])
            truth.append(lesion[region])
    assert sum(sample_truth) > 0
    assert metrics["voxel_auroc"] == pytest.approx(roc_auc_score(np.concatenate(truth), np.concatenate(values)), abs=1e-6)
    if 0 < sum(sample_truth) < len(cases):
        assert metrics["sample_auroc"] == pytest.approx(roc_auc_score(sample_truth, scores), abs=1e-6)
    assert float(np.std(np.concatenate(values))) > 0  # the map is not constant


def test_single_bad_input_fails_with_one_clear_error(trained, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(Exception) as info:
        _infer(trained, tmp_path / "out", dataset_dir=str(bad))
    err = find_input_error(info.value)
    assert err is not None and "broken.nii.gz" in str(err) and "cannot be read" in str(err)
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def test_cli_reports_a_missing_datalist_file_in_one_line(trained, tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"test": [{"image": "missing_scan.nii.gz"}]}))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle_config("simsid_ct", "inference.json"),
           "--ckpt_path", str(trained), "--datalist", str(dl), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "missing_scan.nii.gz" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in proc.stderr


def test_batch_skips_a_bad_case_and_lists_it(trained, synthetic_dataset, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = load_datalist(synthetic_dataset, "test")[0]["image"]
    shutil.copy(good, folder / "good.nii.gz")
    (folder / "empty.nii.gz").write_bytes(b"")
    result = _infer(trained, tmp_path / "out", dataset_dir=str(folder))
    assert result[0]["done"] == ["good"]
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "empty.nii.gz" in errors and "file is empty" in errors
    assert (tmp_path / "out" / "good" / "good_anomaly_map.nii.gz").is_file()
    assert not (tmp_path / "out" / "empty").exists()


def test_score_method_must_match_the_calibration(trained, synthetic_dataset, tmp_path):
    ckpt = torch.load(trained, weights_only=False)
    assert ckpt["calibration"]["score_method"] == "topk" and "score_norm" in ckpt["calibration"]
    with pytest.raises(Exception) as info:
        _infer(trained, tmp_path, datalist=str(synthetic_dataset), score_method="discriminator")
    assert "calibrated for score_method 'topk'" in str(info.value.__cause__ or info.value)


def test_calibrate_json_adds_normative_statistics_from_the_normals(trained, synthetic_dataset, tmp_path):
    from monai_simsid.apps.inference import load_predictor

    out = tmp_path / "cal"
    _infer(trained, out, config="calibrate.json", datalist=str(synthetic_dataset), normative_grid=[3, 3, 3],
           normative_depth=False)
    old = torch.load(str(trained), weights_only=False)
    new = torch.load(str(out / "model.pt"), weights_only=False)
    assert old["calibration"]["normative"]["kind"] == "lung_depth"  # training's default
    norm = new["calibration"]["normative"]
    assert norm["grid"] == [3, 3, 3] and len(norm["median"]) == 27 and min(norm["scale"]) > 0
    assert new["calibration"]["source"].endswith("validation normal scan(s)")  # the datalist's validation normals
    assert all(torch.equal(old["network"][k], v) for k, v in new["network"].items())  # the weights are untouched
    assert new["meta"]["recalibrated_from"] == str(trained) and new["meta"]["preprocessing"] == old["meta"]["preprocessing"]
    case = next(c for c in load_datalist(synthetic_dataset, "test") if c.get("label"))
    pred_old = load_predictor("simsid_ct", trained).predict(case)
    predictor = load_predictor("simsid_ct", out / "model.pt")
    assert predictor.normative is not None
    pred_new = predictor.predict(case)
    assert pred_new.anomaly_map.shape == pred_old.anomaly_map.shape and 0 <= pred_new.anomaly_map.min() <= pred_new.anomaly_map.max() <= 1
    assert not np.allclose(pred_new.anomaly_map, pred_old.anomaly_map)  # the normalisation is applied
    assert pred_new.raw_score != pred_old.raw_score


def test_calibrate_json_lung_depth_statistics(trained, synthetic_dataset, tmp_path):
    from monai_simsid.apps.inference import load_predictor
    from monai_simsid.apps.normative import LungDepthNormativeMap

    out = tmp_path / "cal"
    _infer(trained, out, config="calibrate.json", datalist=str(synthetic_dataset))  # the default: by depth
    _infer(trained, tmp_path / "plain", config="calibrate.json", datalist=str(synthetic_dataset), normative_depth=False,
           normative_grid=[])
    assert "normative" not in torch.load(str(tmp_path / "plain" / "model.pt"), weights_only=False)["calibration"]
    new = torch.load(str(out / "model.pt"), weights_only=False)
    norm = new["calibration"]["normative"]
    assert norm["kind"] == "lung_depth" and len(norm["median"]) == 41 and min(norm["scale"]) > 0
    # the synthetic chests have lungs: the bins inside the envelope hold their own statistics, not the global ones
    assert len({round(m, 6) for m in norm["median"]}) > 3
    case = next(c for c in load_datalist(synthetic_dataset, "test") if c.get("label"))
    predictor = load_predictor("simsid_ct", out / "model.pt")
    assert isinstance(predictor.normative, LungDepthNormativeMap)
    assert predictor.report_extra()["normative_map"]["kind"] == "lung_depth"
    pred = predictor.predict(case)
    pred_plain = load_predictor("simsid_ct", tmp_path / "plain" / "model.pt").predict(case)
    assert pred.anomaly_map.shape == pred_plain.anomaly_map.shape
    assert not np.allclose(pred.anomaly_map, pred_plain.anomaly_map)  # the normalisation is applied
    with pytest.raises(Exception) as info:  # a switch given as text is refused, not taken as on
        _infer(trained, tmp_path / "bad", config="calibrate.json", datalist=str(synthetic_dataset), normative_depth="false")
    assert "normative_depth" in str(info.value.__cause__ or info.value)



def test_calibrate_json_for_thick_slices_reslices_only_the_normals(trained, synthetic_dataset, tmp_path):
    from monai_simsid.apps.inference import load_predictor

    # the synthetic scans have 3 mm voxels: a normal reference for 9 mm slices
    _infer(trained, tmp_path / "thin", config="calibrate.json", datalist=str(synthetic_dataset))
    _infer(trained, tmp_path / "thick", config="calibrate.json", datalist=str(synthetic_dataset), calibration_thickness_mm=9)
    thin = torch.load(str(tmp_path / "thin" / "model.pt"), weights_only=False)
    thick = torch.load(str(tmp_path / "thick" / "model.pt"), weights_only=False)
    assert thick["calibration"]["source"] == thin["calibration"]["source"] + ", re-sliced to 9 mm slices"
    assert thick["calibration"]["slice_thickness_mm"] == 9 and thin["calibration"]["slice_thickness_mm"] is None
    assert thin["calibration"]["normal_slice_mm"] == thick["calibration"]["normal_slice_mm"] == pytest.approx([3.0] * len(thin["calibration"]["normal_slice_mm"]))
    assert thick["meta"]["preprocessing"] == thin["meta"]["preprocessing"]  # the scans under test are not re-sliced
    for key in ("scan_mean", "voxel_threshold"):  # the normal statistics are those of the re-sliced normals
        assert thick["calibration"][key] != pytest.approx(thin["calibration"][key], rel=1e-4)
    case = next(c for c in load_datalist(synthetic_dataset, "test") if c.get("label"))
    thin_p, thick_p = load_predictor("simsid_ct", tmp_path / "thin" / "model.pt"), load_predictor("simsid_ct", tmp_path / "thick" / "model.pt")
    a, b = thin_p.predict(case), thick_p.predict(case)
    assert a.anomaly_map.shape == b.anomaly_map.shape and a.score != b.score
    # each report says whether the scan's slices match the normal reference's: a 3 mm scan against normals re-sliced
    # to 9 mm does not
    reports = [json.loads(next(p.write(r, tmp_path / name).glob("*_report.json")).read_text())
               for p, r, name in ((thin_p, a, "out_thin"), (thick_p, b, "out_thick"))]
    assert reports[0]["acquisition"] == {"slice_mm": pytest.approx(3.0), "normal_slice_mm": pytest.approx(3.0), "note": None}
    assert reports[1]["acquisition"]["normal_slice_mm"] == 9 and "re-sliced to 9 mm" in reports[1]["acquisition"]["note"]


def test_bench_speed_times_a_trained_checkpoint_as_the_bundle_runs_it(trained, capsys):
    # tools/bench_speed.py with --ckpt must run inference.json's predictor (three HU windows, the fused calibration,
    # the checkpoint's overlap), not a bare one: a bare one failed on a three-window checkpoint
    rc = load_tool("bench_speed").main(["--shapes", "40x40x24", "--device", "cpu", "--ckpt", str(trained)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    meta = torch.load(str(trained), weights_only=False)["meta"]
    assert len(meta["preprocessing"]["hu_windows"]) == 3 and out["overlap"] == meta["sw_overlap"]
    row = out["shapes"]["40x40x24"]
    assert row["total_s"] > 0 and row["peak_rss_mib"] > 0


def test_the_window_margin_and_overlap_travel_with_the_checkpoint(trained, synthetic_dataset, tmp_path):
    from monai.bundle import ConfigParser

    from monai_simsid.apps.inference import load_predictor

    ckpt = torch.load(str(trained), weights_only=False)
    assert ckpt["meta"]["sw_margin"] == 0 and ckpt["meta"]["sw_overlap"] == 0.25  # the CPU preset: no margin
    inferer = load_predictor("simsid_ct", trained).inferer
    assert inferer.margin == (0, 0, 0) and inferer.overlap == 0.25
    # a checkpoint calibrated before these were stored keeps its maps (and thresholds): no margin, overlap 0.25
    old = dict(ckpt, meta={k: v for k, v in ckpt["meta"].items() if k not in ("sw_margin", "sw_overlap")})
    torch.save(old, str(tmp_path / "old.pt"))
    inferer = load_predictor("simsid_ct", tmp_path / "old.pt").inferer
    assert inferer.margin == (0, 0, 0) and inferer.overlap == 0.25
    # re-calibrating with others records them, and inference then uses them
    _infer(tmp_path / "old.pt", tmp_path / "m2", config="calibrate.json", datalist=str(synthetic_dataset), sw_margin=2, overlap=0.5)
    meta = torch.load(str(tmp_path / "m2" / "model.pt"), weights_only=False)["meta"]
    assert meta["sw_margin"] == 2 and meta["sw_overlap"] == 0.5
    inferer = load_predictor("simsid_ct", tmp_path / "m2" / "model.pt").inferer
    assert inferer.margin == (2, 2, 2) and inferer.overlap == 0.5
    # the GPU preset trains and calibrates with an eighth of its 96-voxel window as margin
    parser = ConfigParser()
    parser.read_config([bundle_config("simsid_ct", "train.json"), bundle_config("simsid_ct", "gpu.json")])
    assert parser.get_parsed_content("inferer#margin") == [r // 8 for r in parser.get_parsed_content("roi_size")]


def test_select_checkpoint_tool_scores_a_trained_checkpoint_on_injected_lesions(trained, synthetic_dataset, tmp_path, capsys):
    from conftest import load_tool

    out = tmp_path / "ranking.json"
    rc = load_tool("select_checkpoint").main(["--ckpts", f"{trained},{trained}", "--datalist", str(synthetic_dataset),
                                              "--seeds", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0 and json.loads(capsys.readouterr().out) == result
    val = [e["image"] for e in load_datalist(str(synthetic_dataset), "validation") if not e.get("label")]
    train = {e["image"] for e in load_datalist(str(synthetic_dataset), "training")}
    assert result["normals"] == val and val and train.isdisjoint(val)  # the validation normals, not the training scans
    first, second = result["ranking"]
    assert result["best"] == first["checkpoint"] == str(trained)
    assert first["num_lesion_cases"] == len(val) and all(0.0 <= first[k] <= 1.0 for k in ("voxel_ap", "voxel_auroc", "sample_auroc"))
    assert first == second  # the same network meets the same lesions


def test_descriptor_fusion_is_the_default_and_can_be_turned_off(trained, synthetic_dataset, tmp_path):
    from monai_simsid.apps.fusion import DescriptorFusion
    from monai_simsid.apps.inference import load_predictor

    old = torch.load(str(trained), weights_only=False)
    assert old["calibration"]["fusion"]["kind"] == "descriptor_mean"  # training's default (the synthetic chests have lungs)
    _infer(trained, tmp_path / "off", config="calibrate.json", datalist=str(synthetic_dataset), descriptor_fusion=False)
    off = torch.load(str(tmp_path / "off" / "model.pt"), weights_only=False)["calibration"]
    assert "fusion" not in off and off["normative"]["kind"] == "lung_depth"
    case = next(c for c in load_datalist(synthetic_dataset, "test") if c.get("label"))
    predictor = load_predictor("simsid_ct", trained)
    assert isinstance(predictor.fusion, DescriptorFusion)
    assert predictor.report_extra()["fusion"]["descriptor"] == "lung_depth"
    fused, plain = predictor.predict(case), load_predictor("simsid_ct", tmp_path / "off" / "model.pt").predict(case)
    assert fused.anomaly_map.shape == plain.anomaly_map.shape and 0 <= fused.anomaly_map.min() <= fused.anomaly_map.max() <= 1
    assert not np.allclose(fused.anomaly_map, plain.anomaly_map)  # the descriptor term is applied
    assert load_predictor("simsid_ct", tmp_path / "off" / "model.pt").report_extra()["fusion"] is None
    # a crop without a body frame uses the bank without the depth feature
    crop = load_predictor("simsid_ct", trained, preprocessing_overrides={"body_mode": "whole"})
    assert crop.report_extra()["fusion"]["descriptor"].startswith("plain")
    # the bundle's descriptor_args: whole scans are described at four shape widths, crops at the three finest
    assert predictor.fusion.knn.shape_scales_mm == (1.5, 3.0, 5.0, 8.0) and predictor.fusion.crop_knn.shape_scales_mm == (1.5, 3.0, 5.0)
    assert predictor.report_extra()["fusion"]["shape_scales_mm"] == [1.5, 3.0, 5.0, 8.0]
    assert predictor.fusion.knn.hu_max == predictor.report_extra()["fusion"]["hu_max"] == HU_MAX_DEFAULT
    # and the model term weighted a quarter in the fused map (simsid_ct 0.14.0), said in every report
    assert predictor.fusion.model_weight == predictor.report_extra()["fusion"]["model_weight"] == 0.25
    assert crop.report_extra()["fusion"]["shape_scales_mm"] == [1.5, 3.0, 5.0]
    assert crop.predict(case).anomaly_map.max() > 0
    # the stored fusion searches a 3 mm grid and reads the lung region off the depth; the timing tool reads it back
    assert (predictor.fusion.search_mm, predictor.fusion.region) == (3.0, "depth")
    assert predictor.report_extra()["fusion"]["search_mm"] == 3.0
    timing = load_tool("bench_fusion").time_checkpoint(str(trained), case["image"], repeats=1)
    assert (timing["search_mm"], timing["region"]) == (3.0, "depth") and timing["region_voxels"] > 0
    assert timing["predict_s"] > 0 and timing["descriptor_term_s"] > 0  # (their order is noise at one repeat)


def test_a_crop_is_fused_on_its_own_grid(trained, tmp_path):
    """A crop finer than the 1.5 mm model grid: its descriptor term is computed and fused on the crop's grid, so a
    nodule of a few millimetres keeps its contrast."""
    from monai_simsid.apps.inference import load_predictor

    rng = np.random.default_rng(0)
    shape, sp = (40, 40, 30), (0.6, 0.6, 0.8)
    hu = rng.normal(-850.0, 20.0, shape).astype(np.float32)  # lung parenchyma
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, sp)], indexing="ij"), -1)
    nodule = np.linalg.norm(grid - np.array([13.0, 11.0, 12.0]), axis=-1) <= 2.5
    hu[nodule] = 20.0
    path = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([*sp, 1.0])), str(path))
    crop = load_predictor("simsid_ct", trained, preprocessing_overrides={"body_mode": "whole"}, check_ct=False)
    assert crop.report_extra()["fusion"]["grid"] == "input"
    assert load_predictor("simsid_ct", trained).report_extra()["fusion"]["grid"] == "model"
    pred = crop.predict({"image": str(path)})
    assert pred.anomaly_map.shape == shape and nodule.ravel()[np.argmax(pred.anomaly_map)]
    # the map is the calibrated mean of the model term (resampled: between 0 and 2, smooth) and the crop's descriptor
    # term on the input grid, voxel for voxel: the map less that term leaves a model term in [0, 2]
    term, region = crop.fusion.crop_term(hu, sp)
    assert region.all() and term[nodule].min() > np.median(term)
    cal, p = crop.calibration, pred.anomaly_map.astype(np.float64)
    ok = (p > 1e-4) & (p < 1 - 1e-4)
    fused = cal["voxel_threshold"] + cal["voxel_scale"] * np.log(p[ok] / (1 - p[ok]))
    model = 2 * fused - term[ok]
    assert ok.mean() > 0.5 and model.min() > -0.01 and model.max() < 2.01
    # the same descriptor term taken on the model grid would not fit: its nodule is blurred
    coarse = torch.nn.functional.interpolate(torch.from_numpy(term)[None, None], scale_factor=0.4, mode="trilinear")
    blurred = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")[0, 0].numpy()
    assert (2 * fused - blurred[ok]).max() > 2.01 or (2 * fused - blurred[ok]).min() < -0.01
