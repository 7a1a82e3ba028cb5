"""Normative per-position calibration of the anomaly map (fitted on normal maps only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_simsid.apps.normative import NormativeMap, position_cells
from monai_simsid.handlers.calibration import CalibrationHandler, collect_normal_statistics
from monai_simsid.inferers.anomaly import AnomalyInferer
from monai_simsid.networks.nets.simsid import SimSIDOutput

S = (24, 24, 24)


def _body() -> torch.Tensor:
    body = torch.zeros(S, dtype=torch.bool)
    body[2:22, 4:20, 0:24] = True
    return body


def test_position_cells_follow_the_body_box():
    cells = position_cells(_body(), (2, 2, 3))
    assert cells.shape == S and cells.dtype == torch.long
    assert int(cells.min()) == 0 and int(cells.max()) == 11
    # box x 2..22 split in two at 12; y 4..20 split at 12; z 0..24 split in three at 8 and 16
    assert int(cells[2, 4, 0]) == 0 and int(cells[11, 11, 7]) == 0
    assert int(cells[12, 4, 0]) == 6 and int(cells[2, 12, 0]) == 3 and int(cells[2, 4, 8]) == 1 and int(cells[2, 4, 23]) == 2
    assert int(cells[0, 0, 0]) == 0 and int(cells[23, 23, 23]) == 11  # outside the box: the nearest cell
    with pytest.raises(ValueError):
        position_cells(_body(), (2, 2))
    with pytest.raises(ValueError):
        position_cells(_body(), (2, 0, 2))


def _normal_map(rng: np.random.Generator) -> torch.Tensor:
    """Noise plus a slab that is bright in every normal map (a 'rib' at a fixed body position)."""
    m = torch.as_tensor(rng.normal(1.0, 0.1, S), dtype=torch.float32)
    m[2:6] += 2.0
    return m


def test_structures_bright_in_every_normal_score_low_and_new_ones_high():
    rng = np.random.default_rng(0)
    body = _body()
    grid = (6, 1, 1)
    cells = position_cells(body, grid)
    maps = [_normal_map(rng) for _ in range(3)]
    values = torch.cat([m[body] for m in maps])
    norm = NormativeMap.fit(values, torch.cat([cells[body]] * 3), grid, min_voxels=50)
    test = _normal_map(rng)
    test[14:17, 10:13, 10:13] += 2.0  # a new bright blob, as bright as the always-bright slab
    z = norm(test, body)
    assert z.shape == S
    slab, blob = z[3:5, 6:18, 2:22].median(), z[15, 11, 11]
    assert float(blob) > 8.0  # the new blob stands out
    assert abs(float(slab)) < 3.0  # the slab every normal has does not
    raw_rank = (test[body] >= test[15, 11, 11]).float().mean()
    z_rank = (z[body] >= z[15, 11, 11]).float().mean()
    assert z_rank < raw_rank  # fewer normal-looking voxels outrank the blob after normalisation
    # with global statistics only (no body frame), the map is a monotone transform of the raw map
    g = norm(test)
    assert torch.equal(torch.argsort(g.flatten()), torch.argsort(test.flatten()))


def test_fields_are_smooth_and_roundtrip_through_a_dict():
    rng = np.random.default_rng(1)
    grid = (3, 3, 3)
    norm = NormativeMap(grid, rng.uniform(0, 1, 27), rng.uniform(0.5, 1, 27), 0.5, 0.7)
    med, scale = norm.fields(_body())
    assert med.shape == S and scale.shape == S and bool((scale > 0).all())
    # trilinear: neighbouring voxels differ by at most a fraction of the largest cell-to-cell step
    step = float(np.abs(np.diff(norm.median.reshape(grid), axis=0)).max())
    assert float((med[1:] - med[:-1]).abs().max()) < 0.5 * step
    again = NormativeMap.from_dict(norm.to_dict())
    m = torch.rand(S)
    assert torch.allclose(again(m, _body()), norm(m, _body()))
    with pytest.raises(ValueError):
        NormativeMap(grid, np.zeros(26), np.ones(27), 0.0, 1.0)
    with pytest.raises(ValueError):
        NormativeMap(grid, np.zeros(27), np.zeros(27), 0.0, 1.0)
    with pytest.raises(ValueError):
        NormativeMap.fit(np.zeros(5), np.zeros(4), grid)


class _IntensityModel(torch.nn.Module):
    """A stand-in model whose map is the input intensity (so the normal maps are known)."""

    def forward(self, x, region=None):
        return SimSIDOutput(x, x[:, :1].clone(), x.flatten(1).mean(1))


def _item(seed: int, bright: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    img = 0.2 + 0.05 * torch.rand(1, *S, generator=g)
    img[:, 2:6] += 0.5  # bright at the same position in every scan
    if bright:
        img[:, 12:16, 10:14, 10:14] += 5.0
    body = _body()[None].float()
    return {"image": img, "body": body}


def test_calibration_handler_fits_the_normative_map_on_its_normals_only(tmp_path):
    net, inferer = _IntensityModel(), AnomalyInferer((16, 16, 16), sw_batch_size=2, overlap=0.25)
    normals = [_item(0), _item(1)]
    kw = dict(output_path=tmp_path / "model.pt", bundle_name="b", bundle_version="0", model_config={}, source="normals")
    cal = CalibrationHandler(net, inferer, normals, normative_grid=(4, 2, 2), **kw)()
    stats = NormativeMap.from_dict(cal["normative"])
    # the same statistics, computed by hand from the normal maps
    *_, values, cells = collect_normal_statistics(net, inferer, normals, cell_grid=(4, 2, 2))
    ref = NormativeMap.fit(values, cells, (4, 2, 2))
    np.testing.assert_allclose(stats.median, ref.median, rtol=1e-6)
    np.testing.assert_allclose(stats.scale, ref.scale, rtol=1e-6)
    # thresholds are those of the normalised normal maps
    _, _, z = collect_normal_statistics(net, inferer, normals, normative=ref)
    assert cal["voxel_threshold"] == pytest.approx(float(np.quantile(z, 1 - cal["voxel_fpr"])), rel=1e-6)
    # a calibration set that contains the bright scan gives different statistics (the fit does read its items)
    cal3 = CalibrationHandler(net, inferer, normals + [_item(2, bright=True)], normative_grid=(4, 2, 2), **kw)()
    assert cal3["normative"] != cal["normative"]
    assert "normative" not in CalibrationHandler(net, inferer, normals, **kw)()
    assert "normative" not in CalibrationHandler(net, inferer, normals, normative_grid=[], **kw)()
    with pytest.raises(ValueError):
        CalibrationHandler(net, inferer, normals, normative_grid=(0, 2, 2), **kw)


# ------------------------------------------------------------------------------------------- lung-depth statistics
WINDOWS = [[-1000, -400], [-160, 240], [-1000, 500]]


def test_depth_bins_cover_the_clip_range_in_1mm_steps():
    from monai_simsid.apps.normative import depth_bins

    d = np.array([-40.0, -10.0, -9.6, 0.0, 0.4, 15.2, 30.0, 80.0])
    assert depth_bins(d).tolist() == [0, 0, 0, 10, 10, 25, 40, 40]


def _windowed_phantom(seed: int, radius_mm: float):
    from conftest import chest_with_nodule
    from monai.data import MetaTensor

    from monai_simsid.transforms import HUWindows
    from monai_simsid.transforms.body.array import compute_body_mask

    hu, nodule, affine, centre = chest_with_nodule(seed, radius_mm=radius_mm)
    image = HUWindows(WINDOWS)(MetaTensor(torch.as_tensor(hu)[None], affine=torch.as_tensor(affine)))
    body = torch.as_tensor(compute_body_mask(hu, (3.0, 3.0, 3.0)))[None].float()  # lungs included
    return {"image": image, "body": body}, hu, nodule, affine, centre


def test_lung_depth_from_windows_reads_hu_back_from_the_widest_window():
    from monai_simsid.apps.descriptor_knn import lung_envelope_depth
    from monai_simsid.apps.normative import affine_spacing, lung_depth_from_windows

    item, hu, _, affine, _ = _windowed_phantom(0, 0.0)
    spacing = affine_spacing(affine)
    assert spacing == pytest.approx((3.0, 3.0, 3.0))
    depth = lung_depth_from_windows(item["image"], WINDOWS, spacing, step=1)
    ref = lung_envelope_depth(np.clip(hu, -1000, 500), spacing).reshape(hu.shape)
    assert depth.shape == hu.shape and np.allclose(depth, ref, atol=1e-3)
    # the default computes it on every second voxel: close to the exact depth (which is clipped to -10..30 mm)
    coarse = lung_depth_from_windows(item["image"], WINDOWS, spacing)
    assert coarse.shape == hu.shape and float(np.abs(coarse - ref).mean()) < 2.5  # under half a 6 mm coarse voxel
    with pytest.raises(ValueError, match="step"):
        lung_depth_from_windows(item["image"], WINDOWS, spacing, step=0)
    assert depth.max() > 5.0 and depth.min() < -5.0  # the phantom has lungs: inside and outside the envelope
    with pytest.raises(ValueError, match="HU windows"):
        lung_depth_from_windows(item["image"][:2], WINDOWS, spacing)


def test_lung_depth_statistics_lower_the_pleural_rim_and_keep_a_nodule_high(tmp_path):
    from monai_simsid.apps.normative import LungDepthNormativeMap, lung_depth_from_windows, normative_from_dict

    net, inferer = _IntensityModel(), AnomalyInferer((16, 16, 16), sw_batch_size=2, overlap=0.25)
    normals = [_windowed_phantom(s, 0.0)[0] for s in range(3)]
    kw = dict(output_path=tmp_path / "model.pt", bundle_name="b", bundle_version="0", model_config={}, source="normals")
    cal = CalibrationHandler(net, inferer, normals, normative_depth_windows=WINDOWS, **kw)()
    stored = normative_from_dict(cal["normative"])
    assert isinstance(stored, LungDepthNormativeMap) and cal["normative"]["kind"] == "lung_depth"
    # the handler's statistics are those of the normal maps at the normals' own depths
    depths = [lung_depth_from_windows(i["image"], WINDOWS, (3.0, 3.0, 3.0)) for i in normals]
    *_, values, voxel_depths = collect_normal_statistics(net, inferer, normals, depths=depths)
    np.testing.assert_allclose(stored.median, LungDepthNormativeMap.fit(values, voxel_depths).median, rtol=1e-6)
    # these phantoms are small (12 cm, 3 mm voxels): a 1 mm depth bin holds tens of voxels, so fit with fewer
    norm = LungDepthNormativeMap.fit(values, voxel_depths, min_voxels=20)
    item, hu, nodule, affine, centre = _windowed_phantom(5, 6.0)
    depth = lung_depth_from_windows(item["image"], WINDOWS, (3.0, 3.0, 3.0))
    raw = item["image"][0].as_tensor()  # the stand-in model's map: the lung window
    z = norm(raw, depth)
    # raw: the dense nodule ties with the chest wall just outside the lungs (both saturate the lung window)
    rim = (depth < 0) & (depth >= -6) & (hu > -100)
    assert rim.sum() > 50 and float(raw[torch.as_tensor(nodule)].min()) == float(raw[torch.as_tensor(rim)].max()) == 1.0
    # calibrated by depth: the rim every normal has scores low, the nodule inside the envelope high
    assert float(z[centre]) > float(torch.quantile(z[torch.as_tensor(rim)], 0.99))
    assert float(z[centre]) > 1.5  # well above what normals show at its depth
    # without a depth (a crop), the global statistics: a monotone transform of the raw map
    assert torch.allclose(norm(raw), (raw - norm.global_median) / norm.global_scale)
    with pytest.raises(ValueError, match="differ in shape"):
        norm(raw, depth[:-1])
    plain = [{"image": i["image"].as_tensor(), "body": i["body"]} for i in normals]  # no affine: no voxel size
    with pytest.raises(ValueError, match="affine"):
        CalibrationHandler(net, inferer, plain, normative_depth_windows=WINDOWS, **kw)()
    with pytest.raises(ValueError, match="one normative map"):
        CalibrationHandler(net, inferer, normals, normative_grid=(2, 2, 2), normative_depth_windows=WINDOWS, **kw)
    with pytest.raises(ValueError, match="kind"):
        normative_from_dict({"kind": "unknown"})
