"""Fusion of the model map with the descriptor memory (:mod:`monai_simsid.apps.fusion`), fitted on normals only."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from monai_simsid.apps.descriptor_knn import DescriptorKNN, lung_envelope_depth, search_step
from monai_simsid.apps.fusion import DescriptorFusion, NoLungRegionError
from monai_simsid.apps.normative import lung_depth_from_windows, normative_from_dict
from monai_simsid.apps.rules import lung_region_mask
from monai_simsid.handlers.calibration import CalibrationHandler, collect_normal_statistics
from monai_simsid.inferers.anomaly import AnomalyInferer
from monai_simsid.networks.nets.simsid import SimSIDOutput

WINDOWS = [[-1000, -400], [-160, 240], [-1000, 500]]
SPACING = (3.0, 3.0, 3.0)


class _LungWindowModel(torch.nn.Module):
    """Stand-in model whose map is its lung-window channel: bright on everything dense, as a weak model's is."""

    def forward(self, x, region=None):
        return SimSIDOutput(x, x[:, :1] + 1.0, x.flatten(1).mean(1))


def _item(seed: int, radius_mm: float = 0.0):
    from conftest import chest_with_nodule
    from monai.data import MetaTensor

    from monai_simsid.transforms import HUWindows
    from monai_simsid.transforms.body.array import compute_body_mask

    hu, nodule, affine, centre = chest_with_nodule(seed, radius_mm=radius_mm)
    image = HUWindows(WINDOWS)(MetaTensor(torch.as_tensor(hu)[None], affine=torch.as_tensor(affine)))
    body = torch.as_tensor(compute_body_mask(hu, SPACING))[None].float()
    return {"image": image, "body": body}, hu, nodule, centre


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    net, inferer = _LungWindowModel(), AnomalyInferer((16, 16, 16), sw_batch_size=2, overlap=0.25)
    normals = [_item(s)[0] for s in range(3)]
    kw = dict(
        output_path=tmp_path_factory.mktemp("fusion") / "model.pt", bundle_name="b", bundle_version="0",
        model_config={}, source="normals", normative_depth_windows=WINDOWS,
    )
    return net, inferer, normals, kw, CalibrationHandler(net, inferer, normals, descriptor_fusion=True, **kw)()


def test_descriptor_memory_takes_a_precomputed_depth_and_drops_it():
    _, hu, _, _ = _item(0)
    region = lung_region_mask(hu, SPACING)
    depth = lung_envelope_depth(hu, SPACING).reshape(hu.shape)
    knn = DescriptorKNN(context="lung_depth", k=3, bank_size=500).fit([hu], [region], [SPACING])
    np.testing.assert_allclose(knn(hu, region, SPACING, depth=depth), knn(hu, region, SPACING), rtol=1e-6)
    assert not np.allclose(knn(hu, region, SPACING, depth=depth + 5.0), knn(hu, region, SPACING))  # it is used
    with pytest.raises(ValueError, match="differ in shape"):
        knn(hu, region, SPACING, depth=depth[:-1])
    # leave one scan out: the bank without that scan's rows, same scale
    hu1 = _item(1)[1]
    two = DescriptorKNN(context="lung_depth", k=3, bank_size=800).fit(
        [hu, hu1], [region, lung_region_mask(hu1, SPACING)], [SPACING] * 2
    )
    assert set(np.unique(two.bank_sources)) == {0, 1}
    rest = two.leave_out(0)
    assert len(rest.bank) == int((two.bank_sources == 1).sum()) and np.array_equal(rest.scale, two.scale)
    # a scan's distances to a bank holding its own voxels are smaller than to the bank of the other scan
    assert two(hu, region, SPACING)[region].mean() < rest(hu, region, SPACING)[region].mean()
    with pytest.raises(RuntimeError, match="fit"):
        DescriptorKNN.from_dict(two.state_dict()).leave_out(0)  # a stored memory does not know its rows' scans
    with pytest.raises(ValueError, match="bank rows"):
        DescriptorKNN(context="lung_depth", k=3, bank_size=800).fit([hu], [region], [SPACING]).leave_out(0)
    # searching every second voxel: exact on the nodes of the coarse grid, interpolated in between, 0 outside the mask
    full, coarse = knn(hu, region, SPACING, depth=depth), knn(hu, region, SPACING, depth=depth, step=2)
    nodes = np.zeros(hu.shape, bool)
    nodes[::2, ::2, ::2] = True
    np.testing.assert_allclose(coarse[region & nodes], full[region & nodes], rtol=1e-5)
    assert not coarse[~region].any()
    # halfway between two nodes along the first axis: the mean of the two nodes' distances
    mid = np.zeros(hu.shape, bool)
    mid[1:-1:2, ::2, ::2] = region[:-2:2, ::2, ::2] & region[2::2, ::2, ::2]
    mid &= region
    assert mid.sum() > 50
    x, y, z = np.nonzero(mid)
    np.testing.assert_allclose(coarse[mid], 0.5 * (full[x - 1, y, z] + full[x + 1, y, z]), rtol=1e-5)
    one = np.zeros(hu.shape, bool)
    one[tuple(c - c % 2 + 1 for c in np.argwhere(region)[0])] = True  # a single voxel off the nodes
    assert knn(hu, one, SPACING, depth=depth, step=2)[one] > 0
    odd = knn(hu[:-1, 1:, :-3], region[:-1, 1:, :-3], SPACING, depth=depth[:-1, 1:, :-3], step=3)  # any shape, step
    assert odd.shape == hu[:-1, 1:, :-3].shape and odd[region[:-1, 1:, :-3]].min() > 0
    with pytest.raises(ValueError, match="step"):
        knn(hu, region, SPACING, step=0)
    aniso = knn(hu, region, SPACING, depth=depth, step=(1, 2, 1))  # one step per axis
    np.testing.assert_allclose(aniso[region & nodes], full[region & nodes], rtol=1e-5)
    assert search_step((1.5, 1.5, 1.5), 3.0) == (2, 2, 2) and search_step((0.7, 0.7, 5.0), 3.0) == (4, 4, 1)
    assert search_step((3.0, 3.0, 3.0), 3.0) == (1, 1, 1) == search_step((0.5,) * 3, None)
    plain = knn.without_context()
    assert plain.context is None and plain.num_features == knn.num_features - 1
    np.testing.assert_array_equal(plain.bank, knn.bank[:, :-1])  # the same normal voxels, without their depth
    with pytest.raises(RuntimeError, match="not fitted"):
        DescriptorKNN().without_context()


def test_fusion_is_fitted_on_the_normals_and_stored_with_the_calibration(calibrated):
    net, inferer, normals, kw, cal = calibrated
    fusion = DescriptorFusion.from_dict(cal["fusion"])
    assert cal["fusion"]["kind"] == "descriptor_mean" and fusion.knn.context == "lung_depth"
    # the descriptor unit is the 99.9th percentile of the normal distances over the normals' lung regions, each normal
    # scored against the bank of the other normals (its own voxels would make the units optimistic)
    depths = [lung_depth_from_windows(i["image"], WINDOWS, SPACING) for i in normals]
    hus = [np.clip(_item(s)[1], -1000, 500) for s in range(3)]
    # the lung region is read off the depth: the envelope grown by 5 mm, as lung_region_mask grows it
    assert fusion.region == "depth" and fusion.search_mm == 3.0  # on this 3 mm grid: every voxel
    regions = [d >= -5.0 for d in depths]
    envelope = [lung_region_mask(h, SPACING) for h in hus]
    for n, e in zip(normals, envelope):  # the same region with the depth on every voxel
        np.testing.assert_array_equal(lung_depth_from_windows(n["image"], WINDOWS, SPACING, step=1) >= -5.0, e)
    assert all((r & e).sum() > 0.7 * max(r.sum(), e.sum()) for r, e in zip(regions, envelope))  # sub-sampled depth
    refit = DescriptorKNN(context="lung_depth").fit_scans(zip(hus, regions, [SPACING] * 3, depths))
    # the stored bank: the normals' lung voxels (to float32 noise in the HU read back from the windows, which the
    # Hessian shape features amplify)
    np.testing.assert_allclose(refit.bank, fusion.knn.bank, atol=1e-4)
    dist = np.concatenate(
        [refit.leave_out(n)(h, r, SPACING, depth=d)[r] for n, (h, r, d) in enumerate(zip(hus, regions, depths))]
    )
    assert fusion.unit == pytest.approx(float(np.percentile(dist, 99.9)), rel=1e-5)
    # the crop unit: the bank without the depth, searched on every voxel (these small regions are sampled whole)
    crop = np.concatenate(
        [refit.leave_out(n).without_context()(h, r, SPACING)[r] for n, (h, r) in enumerate(zip(hus, regions))]
    )
    assert fusion.unit_crop == pytest.approx(float(np.percentile(crop, 99.9)), rel=1e-5)
    assert fusion.outside == pytest.approx(float(np.median(dist)) / fusion.unit, rel=1e-5) and 0 < fusion.outside < 1
    in_sample = np.concatenate([fusion.knn(h, r, SPACING, depth=d)[r] for h, r, d in zip(hus, regions, depths)])
    assert fusion.unit > float(np.percentile(in_sample, 99.9))
    # the model term's unit is the threshold of the (depth-normalised) normal maps before fusion
    normative = normative_from_dict(cal["normative"])
    values = collect_normal_statistics(net, inferer, normals, depths=depths, normative=normative)[2]
    assert fusion.model_threshold == pytest.approx(float(np.quantile(values, 1 - cal["voxel_fpr"])), rel=1e-5)
    # the final thresholds are those of the fused normal maps: about 1 (both terms' units) at the voxel quantile
    assert 0.5 < cal["voxel_threshold"] < 2.0
    # a calibration set with another normal scan gives another bank (the fit reads its items)
    other = CalibrationHandler(net, inferer, normals[:2] + [_item(4)[0]], descriptor_fusion=True, **kw)()
    assert not np.array_equal(DescriptorFusion.from_dict(other["fusion"]).knn.bank, fusion.knn.bank)
    # the bank from other normals (e.g. the training scans), the units from the calibration normals
    bank = [_item(s)[0] for s in (4, 5)]
    split = CalibrationHandler(net, inferer, normals, descriptor_fusion=True, bank_items=bank, **kw)()
    split_fusion = DescriptorFusion.from_dict(split["fusion"])
    hu4, hu5 = (np.clip(_item(s)[1], -1000, 500) for s in (4, 5))
    bank_depths = [lung_depth_from_windows(b["image"], WINDOWS, SPACING) for b in bank]
    ref = DescriptorKNN(context="lung_depth").fit_scans(
        (h, d >= -5.0, SPACING, d) for h, d in zip((hu4, hu5), bank_depths)
    )
    np.testing.assert_allclose(split_fusion.knn.bank, ref.bank, atol=1e-4)
    full = np.concatenate([ref(h, r, SPACING, depth=d)[r] for h, r, d in zip(hus, regions, depths)])
    assert split_fusion.unit == pytest.approx(float(np.percentile(full, 99.9)), rel=1e-5)  # nothing left out
    assert "fusion" not in CalibrationHandler(net, inferer, normals, **kw)()
    with pytest.raises(ValueError, match="normative_depth_windows"):
        CalibrationHandler(net, inferer, normals, descriptor_fusion=True, **{**kw, "normative_depth_windows": None})
    # the memory's settings come from descriptor_args (the bundle's config key of that name)
    assert fusion.knn.shape_scales_mm == (1.5, 3.0, 5.0) and fusion.knn.num_features == 5 + 6 + 1  # the defaults
    hu_only = CalibrationHandler(
        net, inferer, normals, descriptor_fusion=True, descriptor_args={"shape_scales_mm": [], "k": 3, "hu_max": 130},
        **kw,
    )()
    hu_fusion = DescriptorFusion.from_dict(hu_only["fusion"])
    hu_knn = hu_fusion.knn
    assert hu_knn.shape_scales_mm == () and hu_knn.k == 3 and hu_knn.bank.shape[1] == 5 + 1
    assert hu_knn.hu_max == hu_fusion.crop_knn.hu_max == 130.0 and fusion.knn.hu_max == 400.0
    with pytest.raises(ValueError, match="descriptor_args"):
        CalibrationHandler(net, inferer, normals, descriptor_fusion=True, descriptor_args={"scale": 1}, **kw)


def test_fused_map_is_the_weighted_mean_of_both_terms_with_the_normal_median_outside_the_lungs(calibrated):
    fusion = DescriptorFusion.from_dict(calibrated[-1]["fusion"])
    model_map = torch.linspace(-3, 3, 8 * 8 * 8).reshape(8, 8, 8)
    term = np.full((8, 8, 8), 3.0, np.float32)
    region = np.zeros((8, 8, 8), bool)
    region[:4] = True
    fused = fusion(model_map, term, region)
    m = 2.0 * torch.sigmoid((model_map - fusion.model_threshold) / fusion.model_scale)
    # inside the region the weighted mean of both terms (a quarter the model's); outside it the descriptor term is its
    # normal median
    assert fusion.model_weight == 0.25
    assert torch.allclose(fused[:4], 0.25 * m[:4] + 0.75 * 3.0)
    assert torch.allclose(fused[4:], 0.25 * m[4:] + 0.75 * fusion.outside)
    assert float(fusion.model_term(torch.tensor(fusion.model_threshold))) == pytest.approx(1.0)  # 1 at its threshold
    with pytest.raises(ValueError, match="differ in shape"):
        fusion(model_map, term[:-1], region[:-1])


def test_model_weight_sets_the_share_of_the_model_term_and_is_stored(calibrated):
    net, inferer, normals, kw, cal = calibrated
    state = cal["fusion"]
    assert state["model_weight"] == 0.25  # the default: the model term a quarter, the descriptor term three quarters
    # a fusion stored before the weight existed keeps the plain mean its thresholds were set with
    assert DescriptorFusion.from_dict({k: v for k, v in state.items() if k != "model_weight"}).model_weight == 0.5
    model_map = torch.linspace(-3, 3, 4 * 4 * 4).reshape(4, 4, 4)
    term, region = np.full((4, 4, 4), 3.0, np.float32), np.ones((4, 4, 4), bool)
    region[0] = False
    m = DescriptorFusion.from_dict(state).model_term(model_map)
    for w in (0.0, 0.5, 1.0):
        fusion = DescriptorFusion.from_dict({**state, "model_weight": w})
        assert DescriptorFusion.from_dict(fusion.to_dict()).model_weight == w
        d = torch.where(torch.from_numpy(region), torch.tensor(3.0), torch.tensor(fusion.outside))
        assert torch.allclose(fusion(model_map, term, region), w * m + (1 - w) * d)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="model_weight"):
            DescriptorFusion.from_dict({**state, "model_weight": bad})
    # calibration takes it from descriptor_args and sets its thresholds on the maps fused with it
    out = CalibrationHandler(net, inferer, normals, descriptor_fusion=True, descriptor_args={"model_weight": 0.5},
                             **dict(kw, output_path=kw["output_path"].parent / "w.pt"))()
    assert out["fusion"]["model_weight"] == 0.5 and out["voxel_threshold"] != cal["voxel_threshold"]


def test_fusion_puts_a_nodule_above_the_dense_rim_that_every_normal_has(calibrated):
    net, inferer, _, _, cal = calibrated
    fusion = DescriptorFusion.from_dict(cal["fusion"])
    item, hu, nodule, centre = _item(7, radius_mm=6.0)
    depth = lung_depth_from_windows(item["image"], WINDOWS, SPACING)
    term, region = fusion.descriptor_term(item["image"], SPACING, depth)
    assert region[centre] and term[centre] > 1.0  # the nodule is beyond the normal descriptors' 99.9th percentile
    rim = region & (depth < 0) & (hu > -100)  # dense tissue just outside the envelope: normal in every chest
    assert rim.sum() > 20 and term[centre] > np.quantile(term[rim], 0.95)
    # a crop (no lung envelope): the bank without the depth, over the whole input
    crop_term, crop_region = fusion.descriptor_term(item["image"], SPACING)
    assert crop_region.all() and crop_term[centre] > 1.0


def test_fusion_round_trips_and_rejects_bad_state(calibrated, tmp_path):
    state = calibrated[-1]["fusion"]
    # the checkpoint stays readable with weights_only=True (MONAI's ckpt_export loads it that way)
    torch.save({"calibration": {"fusion": state}}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["calibration"]["fusion"]
    assert DescriptorFusion.from_dict(loaded).unit == state["unit"]
    again = DescriptorFusion.from_dict(state)
    assert again.to_dict()["unit"] == state["unit"] and np.array_equal(again.knn.bank, state["knn"]["bank"].numpy())
    with pytest.raises(ValueError, match="kind"):
        DescriptorFusion.from_dict({**state, "kind": "other"})
    with pytest.raises(ValueError, match="missing"):
        DescriptorFusion.from_dict({k: v for k, v in state.items() if k != "unit"})
    with pytest.raises(ValueError, match="lung_depth"):
        DescriptorFusion(again.crop_knn, 1.0, 1.0, 0.0, 1.0, WINDOWS)
    with pytest.raises(ValueError, match="positive"):
        DescriptorFusion(again.knn, 0.0, 1.0, 0.0, 1.0, WINDOWS)
    with pytest.raises(ValueError, match="outside"):
        DescriptorFusion(again.knn, 1.0, 1.0, 0.0, 1.0, WINDOWS, outside=-1.0)
    with pytest.raises(ValueError, match="search_mm"):
        DescriptorFusion(again.knn, 1.0, 1.0, 0.0, 1.0, WINDOWS, search_mm=0.0)
    with pytest.raises(ValueError, match="region"):
        DescriptorFusion(again.knn, 1.0, 1.0, 0.0, 1.0, WINDOWS, region="body")
    # a fusion stored by simsid_ct 0.7.0 (no search_mm, no region) keeps the full-resolution search and region its units
    # were measured with
    old = DescriptorFusion.from_dict({k: v for k, v in state.items() if k not in ("search_mm", "region")})
    assert (old.search_mm, old.region) == (None, "mask") and (again.search_mm, again.region) == (3.0, "depth")
    item, hu, _, _ = _item(7, radius_mm=6.0)
    depth = lung_depth_from_windows(item["image"], WINDOWS, SPACING)
    term, region = old.descriptor_term(item["image"], SPACING, depth)
    np.testing.assert_array_equal(region, lung_region_mask(np.clip(hu, -1000, 500), SPACING))
    np.testing.assert_allclose(term, old.knn(np.clip(hu, -1000, 500), region, SPACING, depth=depth) / old.unit, rtol=1e-4)


def test_crop_memory_keeps_only_the_crop_shape_widths(calibrated):
    """Whole scans get every shape width; inputs without a lung envelope (crops) only ``crop_shape_scales_mm``, and
    their unit is measured with that memory."""
    net, inferer, normals, kw, _ = calibrated
    args = {"shape_scales_mm": [1.5, 3.0, 6.0], "crop_shape_scales_mm": [1.5, 3.0]}
    cal = CalibrationHandler(net, inferer, normals, descriptor_fusion=True, descriptor_args=args, **kw)()
    fusion = DescriptorFusion.from_dict(cal["fusion"])
    assert fusion.knn.shape_scales_mm == (1.5, 3.0, 6.0) and fusion.knn.num_features == 5 + 6 + 1
    assert fusion.crop_knn.shape_scales_mm == (1.5, 3.0) and fusion.crop_knn.context is None
    np.testing.assert_array_equal(fusion.crop_knn.bank, fusion.knn.bank[:, : 5 + 4])  # the same voxels, 6 mm dropped
    depths = [lung_depth_from_windows(i["image"], WINDOWS, SPACING) for i in normals]
    hus = [np.clip(_item(s)[1], -1000, 500) for s in range(3)]
    refit = DescriptorKNN(context="lung_depth", shape_scales_mm=(1.5, 3.0, 6.0)).fit_scans(
        zip(hus, [d >= -5.0 for d in depths], [SPACING] * 3, depths)
    )
    crop = np.concatenate([
        refit.leave_out(n).without_context().with_shape_scales((1.5, 3.0))(h, d >= -5.0, SPACING)[d >= -5.0]
        for n, (h, d) in enumerate(zip(hus, depths))
    ])  # fmt: skip
    assert fusion.unit_crop == pytest.approx(float(np.percentile(crop, 99.9)), rel=1e-4)
    # a crop is described with the crop widths only
    hu = np.clip(_item(7, radius_mm=6.0)[1], -1000, 500)[8:24, 8:24, 8:24]
    term, region = fusion.crop_term(hu, SPACING)
    np.testing.assert_allclose(term, fusion.crop_knn(hu, region, SPACING) / fusion.unit_crop, rtol=1e-6)
    # stored and read back; a fusion stored before the setting (None) scores crops with every width, as it was measured
    assert DescriptorFusion.from_dict(fusion.to_dict()).crop_knn.shape_scales_mm == (1.5, 3.0)
    old = DescriptorFusion.from_dict({k: v for k, v in cal["fusion"].items() if k != "crop_shape_scales_mm"})
    assert old.crop_shape_scales_mm is None and old.crop_knn.shape_scales_mm == (1.5, 3.0, 6.0)
    # a crop width the memory does not have: refused when the handler is built (before any training), and by the class
    with pytest.raises(ValueError, match="crop_shape_scales_mm"):
        CalibrationHandler(net, inferer, normals, descriptor_fusion=True, descriptor_args={"crop_shape_scales_mm": [8]}, **kw)
    with pytest.raises(ValueError, match="not among"):
        DescriptorFusion(fusion.knn, 1.0, 1.0, 0.0, 1.0, WINDOWS, crop_shape_scales_mm=(5.0,))


def test_normals_without_lungs_skip_the_fusion_with_a_warning(calibrated, caplog):
    from monai.data import MetaTensor

    from monai_simsid.transforms import HUWindows

    net, inferer, _, kw, _ = calibrated
    rng = np.random.default_rng(0)
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    items = []
    for _ in range(2):  # soft tissue only: no air inside the body
        hu = rng.normal(40.0, 10.0, (24, 24, 24)).astype(np.float32)
        image = HUWindows(WINDOWS)(MetaTensor(torch.as_tensor(hu)[None], affine=affine))
        items.append({"image": image, "body": torch.ones((1, 24, 24, 24))})
    depths = [lung_depth_from_windows(i["image"], WINDOWS, SPACING) for i in items]
    with pytest.raises(NoLungRegionError):
        DescriptorFusion.fit([i["image"] for i in items], WINDOWS, [SPACING] * 2, depths, 0.0, 1.0)
    with caplog.at_level(logging.WARNING):
        cal = CalibrationHandler(net, inferer, items, descriptor_fusion=True, **kw)()
    assert "fusion" not in cal and "descriptor fusion skipped" in caplog.text


def test_crop_unit_sample_is_a_subset_of_the_region():
    from monai_simsid.apps.fusion import _sample

    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 3:9, 1:5] = True
    few = _sample(mask, 50, np.random.default_rng(0))
    assert few.sum() == 50 and not (few & ~mask).any()
    assert np.array_equal(_sample(mask, 10_000, np.random.default_rng(0)), mask)  # fewer voxels than asked: all
    assert not np.array_equal(few, _sample(mask, 50, np.random.default_rng(1)))  # seeded
