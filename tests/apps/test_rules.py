"""Tests of the training-free reference rules, the benchmark lung region and the real-data benchmark (lung2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import load_tool
from monai_simsid.apps.rules import (
    LocalZScoreRule,
    crop_lung_region_mask,
    intensity_rule_map,
    lung_region_mask,
    lung_window_constant_map,
)
from monai_simsid.data.synthetic import generate_chest_ct, insert_lesions

REPO = Path(__file__).resolve().parents[2]
SHARED_CT = REPO.parent / "shared" / "data" / "ct"


@pytest.fixture(scope="module")
def phantom():
    case = generate_chest_ct(size=48, spacing=3.0, seed=0)
    image, lesion = insert_lesions(case, seed=1, kinds=["solid_nodule"])
    lung = lung_region_mask(image, case.spacing)
    return case, image, lesion.astype(bool), lung


def _juxtapleural(case, radius_mm: float = 9.0):
    """The phantom with a soft-tissue ball centred on the lung surface (touching the chest wall)."""
    lungs, body, sp = case.lungs.astype(bool), case.body.astype(bool), np.asarray(case.spacing)
    shell = lungs & ~ndimage.binary_erosion(lungs)
    wall = body & ~lungs
    near_wall = shell & (ndimage.distance_transform_edt(~wall, sampling=sp) <= 3.0)
    # the most lateral shell voxel at mid-height: the costal pleura
    zmid = int(np.round(np.nonzero(lungs)[2].mean()))
    cand = np.argwhere(near_wall[:, :, zmid])
    x, y = cand[np.argmin(cand[:, 0])]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in lungs.shape], indexing="ij"), -1) * sp
    ball = np.linalg.norm(grid - np.array([x, y, zmid]) * sp, axis=-1) <= radius_mm
    image = case.image.copy()
    image[ball & body] = 40.0
    return image, ball & lungs  # the part of the tumour that replaces lung, against the chest wall


def test_lung_region_contains_lungs_and_excludes_outside(phantom):
    case, image, lesion, lung = phantom
    lungs = case.lungs.astype(bool)
    assert lung.dtype == bool and lung.shape == image.shape
    assert (lung & lungs).sum() / lungs.sum() > 0.98
    assert lung[lesion].mean() > 0.95  # the inserted nodule is inside
    outside_air = ~case.body.astype(bool) & (image < -900)
    assert outside_air.any() and not (lung & outside_air).any()


def test_lung_region_contains_juxtapleural_lesion(phantom):
    case = phantom[0]
    image, ball = _juxtapleural(case)
    lung = lung_region_mask(image, case.spacing)
    assert ball.sum() > 20
    assert lung[ball].mean() > 0.95


def test_lung_region_bad_args(phantom):
    case, image = phantom[0], phantom[1]
    with pytest.raises(ValueError):
        lung_region_mask(image[..., 0], case.spacing)
    with pytest.raises(ValueError):
        lung_region_mask(image, (3.0, -1.0, 3.0))
    with pytest.raises(ValueError):
        lung_region_mask(image, case.spacing, closing_mm=-1)
    with pytest.raises(ValueError):
        lung_region_mask(image, case.spacing, body=np.ones((2, 2, 2), bool))


def test_crop_lung_region_mask():
    crop = np.full((20, 20, 6), -850.0, np.float32)
    crop[8:12, 8:12, 2:4] = 30.0
    assert crop_lung_region_mask(crop, (0.7, 0.7, 1.25)).all()
    assert crop_lung_region_mask(np.zeros((5, 5, 3)), (1, 1, 1)).all()  # no air: the whole crop


def test_intensity_rule(phantom):
    case, image, lesion, lung = phantom
    score = intensity_rule_map(image, lung, case.spacing)
    assert score.dtype == np.float32 and score.shape == image.shape
    assert np.all(score[~lung] == 0) and score.min() >= 0 and score.max() <= 1
    core = ndimage.binary_erosion(lesion) if ndimage.binary_erosion(lesion).any() else lesion
    parenchyma = case.lungs.astype(bool) & (image < -700) & ~ndimage.binary_dilation(lesion, iterations=2)
    assert score[core].mean() > 0.7 > 0.2 > score[parenchyma].mean()
    with pytest.raises(ValueError):
        intensity_rule_map(image, lung, case.spacing, sigma_mm=-1)
    with pytest.raises(ValueError):
        intensity_rule_map(image, lung[:-1], case.spacing)


def test_local_zscore_rule(phantom):
    case = phantom[0]
    image, lesion = insert_lesions(case, seed=2, kinds=["mass"])
    lesion = lesion.astype(bool)
    lung = lung_region_mask(image, case.spacing)
    normals = [generate_chest_ct(size=48, spacing=3.0, seed=s) for s in (1, 2)]
    masks = [n.lungs for n in normals]  # statistics of the lungs proper: a sharp reference for the unit test
    rule = LocalZScoreRule().fit([n.image for n in normals], masks, [n.spacing for n in normals], window_mm=5.0)
    assert rule.is_fitted and rule.sigma > 0
    z = rule(image, lung, case.spacing)
    assert z.dtype == np.float32 and np.all(z[~lung] == 0)
    parenchyma = case.lungs.astype(bool) & (image < -700) & ~ndimage.binary_dilation(lesion, iterations=2)
    core = ndimage.binary_erosion(lesion) & lung  # a mass wider than the closing may reach out of the region
    assert core.sum() > 10
    assert z[core].mean() > z[parenchyma].mean() + 1.0

    state = json.loads(json.dumps(rule.state_dict()))
    again = LocalZScoreRule.from_dict(state)
    assert again.state_dict() == rule.state_dict()
    np.testing.assert_array_equal(again(image, lung, case.spacing), z)

    with pytest.raises(RuntimeError):
        LocalZScoreRule()(image, lung, case.spacing)
    with pytest.raises(ValueError):
        LocalZScoreRule.from_dict({"mu": 0.0})
    with pytest.raises(ValueError):
        LocalZScoreRule(window_mm=0)
    with pytest.raises(ValueError):
        LocalZScoreRule().fit([], [], [])


def _benchmark_module():
    return load_tool("benchmark", "simsid_benchmark")


def test_benchmark_helpers_and_model_method():
    bench = _benchmark_module()
    score = np.zeros((4, 4, 4), np.float32)
    lesion = np.zeros_like(score, dtype=bool)
    lesion[1, 1, 1] = True
    score[1, 1, 1] = score[2, 2, 2] = 1.0  # two tied top voxels, one on the lesion
    assert bench.top_voxel_hit(score, lesion) == pytest.approx(0.5)
    assert bench.scan_score(score, np.ones_like(lesion)) == pytest.approx(1.0)
    assert set(bench.METHODS) >= {"intensity_rule", "local_zscore", "descriptor_knn", "descriptor_knn_depth"}
    # a missing checkpoint is a clear error when the method is resolved, before any method has run
    with pytest.raises(ValueError, match="no_such_ckpt.pt: checkpoint file not found"):
        bench.resolve_method("model:simsid_ct:/tmp/no_such_ckpt.pt")
    with pytest.raises(ValueError, match="no_such_ckpt.pt"):
        bench.run_benchmark(REPO, ["intensity_rule", "model:simsid_ct:/tmp/no_such_ckpt.pt"], parts=["lung2"])
    with pytest.raises(ValueError, match="model:<bundle_name>:<ckpt_path>"):
        bench.resolve_method("model:simsid_ct")
    with pytest.raises(ValueError):
        bench.resolve_method("nope")
    assert bench.main(["--data-dir", str(REPO / "no_such_folder")]) == 0  # absent data: skipped


def test_benchmark_reads_a_models_report_in_canonical_order(tmp_path, monkeypatch):
    """A model method hands back its report: labels and peaks reoriented like the map, so the report's first finding
    is judged on the same voxels as the map (an x-flipped input makes a wrong reorientation miss)."""
    import monai_simsid.apps.inference as inference

    bench = _benchmark_module()
    shape = (6, 5, 4)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])  # x runs right to left: the canonical order flips it
    affine[:3, 3] = [5.0, -2.0, 3.0]
    amap = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    amap[1, 2, 3], amap[1, 1, 3] = 0.9, 0.7
    mask[1, 1:3, 3] = 1
    amap[4, 0, 0] = 0.6
    mask[4, 0, 0] = 2
    findings = [
        {"id": 1, "peak_ras_mm": (affine @ [1, 2, 3, 1])[:3].tolist()},
        {"id": 2, "peak_ras_mm": (affine @ [4, 0, 0, 1])[:3].tolist()},
    ]
    pred = inference.CasePrediction("c", amap, mask, affine, 0.9, 1.0, "anomalous", findings, {}, mask > 0)
    monkeypatch.setattr(inference, "predict_map", lambda *a, **k: pred)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    fn = bench.resolve_method(f"model:simsid_ct:{ckpt}")(bench.BenchmarkContext(tmp_path, []))
    res, _ = bench._run_map(fn, tmp_path / "c.nii.gz", np.zeros(shape, np.float32), np.eye(4), (1.0, 1.0, 2.0))
    assert isinstance(res, bench.MapOutput)
    assert res.finding_ids == (1, 2) and res.finding_peaks[0] == (4, 2, 3)  # x index 1 -> 6 - 1 - 1
    assert res.scan_score == 1.0 and res.scan_label == "anomalous"  # the bundle's raw scan score and verdict
    assert res.map[4, 2, 3] == pytest.approx(0.9) and res.labels[4, 2, 3] == 1 and res.labels[1, 0, 0] == 2
    on = np.zeros(shape, bool)
    on[4, 2, 3] = True
    assert bench.report_figures(res, on) == {"n_findings": 2, "first_finding_on_lesion": True, "lesion_finding_rank": 1}
    second = np.zeros(shape, bool)
    second[1, 0, 0] = True  # the second finding's voxel
    assert bench.report_figures(res, second) == {"n_findings": 2, "first_finding_on_lesion": False, "lesion_finding_rank": 2}
    rim = np.zeros(shape, bool)
    rim[4, 1, 3] = True  # inside the first finding, not its peak
    assert bench.report_figures(res, rim)["lesion_finding_rank"] == 1
    assert not bench.report_figures(res, rim)["first_finding_on_lesion"]
    assert bench.report_figures(res, np.zeros(shape, bool))["lesion_finding_rank"] is None
    lung2_row = {"n_findings": 2, "first_finding_on_lesion": False, "lesion_finding_rank": None}
    assert bench._report_cell(lung2_row) == "no (tumour not among 2 findings)"
    assert bench._report_cell({}) == "-"
    # a method without a report: its map is wrapped, and it has no report figures
    plain, _ = bench._run_map(lambda *a: np.ones(shape), tmp_path / "c.nii.gz", np.zeros(shape), np.eye(4), (1, 1, 1))
    assert plain.labels is None and plain.map.dtype == np.float32 and bench.report_figures(plain, on) == {}
    with pytest.raises(ValueError, match="labels of shape"):
        bench._run_map(lambda *a: bench.MapOutput(np.ones(shape), np.ones((2, 2, 2))), tmp_path, np.zeros(shape), np.eye(4), (1, 1, 1))
    with pytest.raises(ValueError, match="scan score"):
        bench._run_map(lambda *a: bench.MapOutput(np.ones(shape), scan_score=float("nan")), tmp_path, np.zeros(shape), np.eye(4), (1, 1, 1))


def test_benchmark_normal_fitted_methods_share_a_scale(phantom):
    """A normal-fitted method's map is divided by the 99.9th percentile of its map over its own training normals."""
    bench = _benchmark_module()
    img, sp = phantom[1], tuple(phantom[0].spacing)
    fits = []

    def fit(images, lungs, spacings):
        factor = 3.0 * len(images)  # a scale that depends on the fit, as a kNN distance does on its bank
        fits.append(len(images))
        return lambda image, lung, spacing: np.where(lung, factor * (image + 1000.0) / 1000.0, 0.0).astype(np.float32)

    ctx = bench.BenchmarkContext(Path("."), [Path("a.nii.gz"), Path("b.nii.gz")])
    lung = bench.lung_region_mask(img, sp)
    for p in ctx.training_paths:
        ctx.cache[("normal", str(p))] = (img, lung, sp, np.eye(4))
    fn = bench._fitted_on_normals("toy", fit)(ctx)
    out = fn(Path("x.nii.gz"), img, np.eye(4), sp)
    raw = (6.0 * (img + 1000.0) / 1000.0).astype(np.float32)  # the two training scans are this one
    unit = np.percentile(np.concatenate([raw[lung], raw[lung]]), 99.9)
    np.testing.assert_allclose(out[lung], raw[lung] / unit, rtol=1e-5)
    assert np.percentile(out[lung], 99.9) == pytest.approx(1.0, rel=1e-2) and np.all(out[~lung] == 0)
    bench._fitted_on_normals("toy", fit)(ctx)
    assert fits == [2]  # fitted once per set of training scans (cached in the context)


def test_benchmark_fused_controls_are_the_mean_of_the_rule_term_and_the_descriptor(phantom):
    """``intensity_rule+descriptor_knn_depth``: 2 * sigmoid of the rule in units of its normal threshold, averaged with
    the descriptor map; both statistics come from the training normals only."""
    bench = _benchmark_module()
    case, img, lesion, lung = phantom
    sp = tuple(case.spacing)
    normal = case.image.astype(np.float32)  # the phantom before its lesion was inserted
    ctx = bench.BenchmarkContext(Path("."), [Path("a.nii.gz"), Path("b.nii.gz")])
    for p in ctx.training_paths:
        ctx.cache[("normal", str(p))] = (normal, bench.lung_region_mask(normal, sp), sp, np.eye(4))
    fused = bench.resolve_method("intensity_rule+descriptor_knn_depth")(ctx)(Path("x.nii.gz"), img, np.eye(4), sp)
    rule = bench.resolve_method("intensity_rule")(ctx)(Path("x.nii.gz"), img, np.eye(4), sp).astype(np.float64)
    desc = bench.resolve_method("descriptor_knn_depth")(ctx)(Path("x.nii.gz"), img, np.eye(4), sp)
    rule_fn = bench.resolve_method("intensity_rule")(ctx)
    normal_rule = np.concatenate([rule_fn(None, n, None, s)[m] for n, m, s in ctx.training_data()])
    t = float(np.quantile(normal_rule, 0.999))
    scale = max((t - float(np.median(normal_rule))) / 4.0, 1e-6)
    term = 2.0 / (1.0 + np.exp(-np.clip((rule - t) / scale, -50, 50)))
    np.testing.assert_allclose(fused, 0.5 * (term + desc), rtol=1e-5, atol=1e-6)
    assert fused[lesion].mean() > fused[lung & ~lesion].mean()  # the inserted nodule stands out
    assert "lung_window_constant+descriptor_knn_depth" in bench.METHODS


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_CT.is_dir(), reason=f"real CT data not found at {SHARED_CT}")
def test_benchmark_lung2_intensity_rule():
    bench = _benchmark_module()
    res = bench.evaluate_lung2(SHARED_CT, "intensity_rule")
    assert res["lung_auroc"] > 0.8
    assert 0.0 <= res["top_voxel_on_tumour"] <= 1.0 and res["seconds_per_scan"] > 0


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_CT.is_dir(), reason=f"real CT data not found at {SHARED_CT}")
def test_benchmark_transplant_part_puts_lidc_nodules_into_held_out_normals():
    bench = _benchmark_module()
    cache: dict = {}
    cases = bench.transplant_cases(SHARED_CT, cache, per_bin=1)
    assert len(cases) == len(bench.DIAMETER_BINS) and [c["name"] for c in bench.transplant_cases(SHARED_CT, cache, per_bin=1)] == [c["name"] for c in cases]
    normals = sorted((SHARED_CT / "normal").glob("chest_*.nii.gz"))
    assert {c["host"] for c in cases} <= set(normals) and len({c["host"] for c in cases}) > 1
    for c in cases:
        img, _, _ = bench.load_volume(c["image"])
        host, lung = cache[("normal", str(c["host"]))][:2]
        assert img.shape == host.shape == c["lesion"].shape and c["lesion"].any()
        assert (lung & c["lesion"]).sum() == c["lesion"].sum()  # deep in the host's lung region
        assert img[c["lesion"]].mean() > host[c["lesion"]].mean() + 100  # denser than the parenchyma it replaced
    # the same cases re-acquired with 5 mm slices: same nodules and sites, each image smeared along z only
    from monai_simsid.transforms import simulate_slice_thickness

    thick = bench.transplant_cases(SHARED_CT, cache, per_bin=1, thickness_mm=5.0)
    assert [c["name"] for c in thick] == [c["name"] for c in cases]
    for c, t in zip(cases, thick):
        np.testing.assert_array_equal(t["lesion"], c["lesion"])
        img, t_img = bench.load_volume(c["image"])[0], bench.load_volume(t["image"])[0]
        sp = bench.load_volume(c["image"])[2]
        np.testing.assert_allclose(t_img, simulate_slice_thickness(img, sp, 5.0, axis=2), atol=1e-3)
        assert not np.allclose(t_img, img)
    # against the pleura: the same nodules, each touching the border of the lung envelope, labelled where it changed
    from monai_simsid.apps.descriptor_knn import lung_envelope_depth

    pleural = bench.transplant_cases(SHARED_CT, cache, per_bin=1, site="pleural")
    assert [c["name"] for c in pleural] == [c["name"] for c in cases]
    for c in pleural:
        img = bench.load_volume(c["image"])[0]
        host = cache[("normal", str(c["host"]))][0]
        sp = cache[("normal", str(c["host"]))][2]
        assert c["lesion"].any() and np.all(img[c["lesion"]] > host[c["lesion"]] + 100)
        depth = lung_envelope_depth(host, sp).reshape(host.shape)[c["lesion"]]
        assert depth.min() < 4.0  # it reaches the envelope's border (deep cases lie >= 10 mm inside the region)
    with pytest.raises(ValueError, match="site"):
        bench.transplant_cases(SHARED_CT, cache, per_bin=1, site="lobe")
    # a method fitted on normals is fitted without the host: each host gets its own fit
    res = bench.evaluate_transplant(SHARED_CT, "intensity_rule", cache, per_bin=1)
    assert res["n_cases"] == len(cases) and 0.5 < res["mean_lung_auroc"] <= 1.0
    assert all(v["n"] == 1 for v in res["detection_by_diameter"].values())
    # the sample level: every host is scored once without its nodule, by the same fit as its cases
    sample = res["sample"]
    assert set(sample["hosts"]) == {c["host"] for c in res["per_case"]}
    hosts = sample["hosts"]
    assert sample["above_host_rate"] == np.mean([c["scan_score"] > hosts[c["host"]]["scan_score"] for c in res["per_case"]])
    assert "own_sample_auroc" not in sample  # the rule has no scan score of its own
    with pytest.raises(ValueError, match="held-out"):
        bench.resolve_method("model:simsid_ct:/tmp/x_{host}.pt")(bench.BenchmarkContext(SHARED_CT, normals))


def test_lung_window_constant_map_is_the_error_of_a_constant_reconstruction():
    img = np.full((6, 5, 4), -850.0, dtype=np.float32)
    img[0] = -1000.0  # air: 0.5 below -850 on the [-1, 1] lung-window scale
    img[1] = 40.0  # soft tissue: saturates at the top of the window, 1.5 above -850
    img[2] = -700.0
    lung = np.ones(img.shape, dtype=bool)
    lung[..., 0] = False
    out = lung_window_constant_map(img, lung)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.all(out[..., 0] == 0)  # outside the lung region
    np.testing.assert_allclose(out[0, :, 1:], 0.5, atol=1e-6)
    np.testing.assert_allclose(out[1, :, 1:], 1.5, atol=1e-6)
    np.testing.assert_allclose(out[2, :, 1:], 0.5, atol=1e-6)
    np.testing.assert_allclose(out[3:, :, 1:], 0.0, atol=1e-6)
    # another constant moves the zero
    np.testing.assert_allclose(lung_window_constant_map(img, lung, centre_hu=-700.0)[2, :, 1:], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="window"):
        lung_window_constant_map(img, lung, window=(-400.0, -1000.0))


def test_transplant_sample_level_pairs_each_case_with_its_host():
    bench = _benchmark_module()
    hosts = {"a": {"scan_score": 1.0, "own_scan_score": 0.2, "own_label": "normal"},
             "b": {"scan_score": 3.0, "own_scan_score": 0.9, "own_label": "anomalous"}}
    records = [
        {"host": "a", "diameter_mm": 5.0, "scan_score": 1.5, "own_scan_score": 0.1, "own_label": "normal"},
        {"host": "a", "diameter_mm": 12.0, "scan_score": 0.5, "own_scan_score": 0.95, "own_label": "anomalous"},
        {"host": "b", "diameter_mm": 25.0, "scan_score": 2.0, "own_scan_score": 1.0, "own_label": "anomalous"},
    ]
    out = bench.transplant_sample_level(records, hosts)
    # above the host it came from, not above the other host: 1.5 > 1 (a), 0.5 < 1 (a), 2 < 3 (b)
    assert out["above_host_rate"] == pytest.approx(1 / 3) and out["above_host_rate_10mm"] == 0.0
    # hosts 1, 3 against cases 1.5, 0.5, 2: host 1 is below two cases, host 3 below none: 2 of 6 pairs
    assert out["sample_auroc"] == pytest.approx(2 / 6)
    assert out["own_above_host_rate"] == pytest.approx(2 / 3) and out["own_above_host_rate_10mm"] == 1.0
    assert out["own_sample_auroc"] == pytest.approx(4 / 6)
    assert out["own_anomalous_rate"] == pytest.approx(2 / 3) and out["own_hosts_anomalous"] == 1
    assert out["own_anomalous_in_normal_hosts"] == [1, 2]  # host a is called normal: one of its two cases is not
    assert "| 1 of 2 |" in bench.format_markdown({"transplant": {"m": {
        "n_cases": 3, "mean_lung_auroc": 0.9, "mean_lung_ap": 0.1, "detection_rate": 0.0, "seconds_per_scan": 1.0,
        "detection_by_diameter": {b[0]: {"rate": None, "n": 0} for b in bench.DIAMETER_BINS}, "sample": out}}})
    # a method without its own score gets the benchmark's figures only
    plain = bench.transplant_sample_level([{k: r[k] for k in ("host", "diameter_mm", "scan_score")} for r in records],
                                          {h: {"scan_score": v["scan_score"]} for h, v in hosts.items()})
    assert "own_sample_auroc" not in plain and "own_anomalous_rate" not in plain and plain["sample_auroc"] == pytest.approx(2 / 6)
    assert bench.transplant_sample_level([], hosts) == {"hosts": hosts}


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_CT.is_dir(), reason=f"real CT data not found at {SHARED_CT}")
def test_benchmark_normals_part_pairs_lung2_with_each_folds_held_out_normal(tmp_path, monkeypatch):
    """A method with one checkpoint per held-out normal ('{host}') scores, in each fold, the held-out normal and lung2
    with that fold's checkpoint, and compares them there (stand-in predictions: a constant map per fold and scan)."""
    import nibabel as nib

    import monai_simsid.apps.inference as inference

    bench = _benchmark_module()
    normals = sorted((SHARED_CT / "normal").glob("chest_*.nii.gz"))
    hosts = [p.name.split(".")[0] for p in normals]
    for h in hosts:
        (tmp_path / f"F_{h}.pt").write_bytes(b"")
    lung2_value = {hosts[0]: 0.6, hosts[1]: 0.6, hosts[2]: 0.1}  # lung2 above its fold's normal (0.3) in two folds
    seen = []

    def fake_predict(bundle, ckpt, path, **kw):
        fold = Path(ckpt).stem[2:]
        seen.append((fold, Path(path).name))
        img = nib.load(str(path))
        v = lung2_value[fold] if "lung2" in Path(path).name else 0.3
        return inference.CasePrediction("c", np.full(img.shape, v, np.float32), np.zeros(img.shape, np.uint8), img.affine,
                                        v, v, "anomalous" if v > 0.5 else "normal", [], {}, np.ones(img.shape, bool))

    monkeypatch.setattr(inference, "predict_map", fake_predict)
    method = f"model:simsid_ct:{tmp_path}/F_{{host}}.pt"
    run = bench.run_benchmark(SHARED_CT, [method], parts=("lung2", "normals"))
    assert run["lung2"] == {}  # no checkpoint fitted on all the normals: the lung2 part skips the method
    res = run["normals"][method]
    # each fold scored its own held-out normal and lung2, nothing else
    assert sorted(seen) == sorted([(h, p.name) for h, p in zip(hosts, normals)] + [(h, "lung2_ct.nii.gz") for h in hosts])
    assert set(res["per_fold"]) == {p.name for p in normals}
    assert res["normal_scores"] == {p.name: pytest.approx(0.3) for p in normals}
    assert res["lung2_above_its_normal"] == pytest.approx(2 / 3) and res["own_lung2_above_its_normal"] == pytest.approx(2 / 3)
    assert res["sample_auroc"] == pytest.approx(6 / 9) and res["own_lung2_anomalous"] == 2 and res["own_normals_anomalous"] == 0
    assert "own_lung2_anomalous" in res and "2 of 3" in bench.format_markdown({"normals": {"m": res}})
