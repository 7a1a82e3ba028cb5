from __future__ import annotations

import pytest
import torch

from monai_simsid.apps.calibration import calibrate_map, calibrate_score, compute_calibration
from monai_simsid.inferers.scoring import scan_score, topk_mean


def test_topk_mean_inside_mask():
    v = torch.arange(100.0).reshape(1, 10, 10)
    mask = torch.zeros_like(v)
    mask[0, :5] = 1  # values 0..49
    assert topk_mean(v, mask, fraction=0.1, min_k=1) == pytest.approx((49 + 48 + 47 + 46 + 45) / 5)
    with pytest.raises(ValueError):
        topk_mean(v, fraction=0)


def test_scan_score_methods():
    amap = torch.zeros(1, 4, 4, 4)
    amap[0, 0, 0, 0] = 8.0
    smap = torch.full((1, 4, 4, 4), 2.0)
    assert scan_score(amap, smap, method="topk", topk_fraction=1 / 64) == pytest.approx(8.0 / 10)  # min_k = 10 voxels
    assert scan_score(amap, smap, method="discriminator") == pytest.approx(2.0)
    norm = {"topk_mean": 0.3, "topk_std": 0.5, "disc_mean": 1.0, "disc_std": 2.0}
    assert scan_score(amap, smap, method="combined", topk_fraction=1 / 64, norm=norm) == pytest.approx(1.0 + 0.5)
    with pytest.raises(ValueError):
        scan_score(amap, None, method="discriminator")
    with pytest.raises(ValueError):
        scan_score(amap, smap, method="nope")


def test_calibration_puts_the_normal_thresholds_at_one_half():
    scores = [1.0, 1.2, 0.9, 1.1, 1.05]
    voxels = torch.linspace(0, 1, 10001).numpy()
    cal = compute_calibration(scores, voxels, fpr=0.05, voxel_fpr=0.001)
    assert calibrate_score(cal["scan_threshold"], cal) == pytest.approx(0.5)
    assert cal["scan_threshold"] >= max(scores) - 1e-9 or cal["scan_threshold"] >= 1.0
    m = calibrate_map(torch.tensor([cal["voxel_threshold"], 0.0, 1.0]), cal)
    assert m[0] == pytest.approx(0.5) and m[1] < 0.5 < m[2]
    with pytest.raises(ValueError):
        compute_calibration([], voxels)
