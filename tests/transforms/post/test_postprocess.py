from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_simsid.transforms.post import (
    AnomalyPostprocess,
    AnomalyPostprocessd,
    extract_findings,
    postprocess_anomaly_map,
)


def _cube_map(shape=(24, 24, 24)):
    """Two hot cubes: a 2x2x2 one (score 0.95) and a 5x5x5 one (score 0.8)."""
    m = np.zeros(shape, np.float32)
    m[2:4, 2:4, 2:4] = 0.95
    m[12:17, 12:17, 12:17] = 0.8
    return m


@pytest.mark.parametrize(
    "spacing, expect_small_kept",
    [((1.0, 1.0, 1.0), False), ((4.0, 4.0, 4.0), True)],  # small cube: 8 mm3 vs 512 mm3
)
def test_min_volume_is_physical(spacing, expect_small_kept):
    labels, _ = postprocess_anomaly_map(_cube_map(), spacing, sigma_mm=0.0, min_volume_mm3=100.0)
    assert labels.dtype == np.uint8
    big = labels[14, 14, 14]
    assert big > 0  # 125 voxels >= 125 mm3 even at 1 mm
    assert (labels[2, 2, 2] > 0) == expect_small_kept
    if expect_small_kept:
        # ordered by peak score: the small 0.95 cube comes first
        assert labels[2, 2, 2] == 1 and big == 2
    else:
        assert labels.max() == 1 and big == 1


def test_smoothing_removes_isolated_voxel_and_body_mask():
    m = np.zeros((20, 20, 20), np.float32)
    m[5, 5, 5] = 1.0  # single hot voxel
    m[10:16, 10:16, 10:16] = 0.9
    labels, smoothed = postprocess_anomaly_map(m, (1.0, 1.0, 1.0), sigma_mm=1.0, min_volume_mm3=1.0)
    assert smoothed[5, 5, 5] < 0.5 and labels[5, 5, 5] == 0
    assert labels[13, 13, 13] == 1
    body = np.zeros_like(m, bool)
    body[:, :, :12] = True
    labels_b, _ = postprocess_anomaly_map(m, 1.0, sigma_mm=1.0, min_volume_mm3=1.0, body_mask=body)
    assert labels_b[13, 13, 13] == 0 and labels_b[13, 13, 11] == 1
    with pytest.raises(ValueError):
        postprocess_anomaly_map(m, (1.0, 1.0), sigma_mm=1.0)
    with pytest.raises(ValueError):
        postprocess_anomaly_map(m, 1.0, body_mask=body[:5])


def test_26_connectivity_joins_diagonal_voxels():
    m = np.zeros((6, 6, 6), np.float32)
    m[1, 1, 1] = m[2, 2, 2] = 0.9
    labels, _ = postprocess_anomaly_map(m, 1.0, sigma_mm=0.0, min_volume_mm3=2.0)
    assert labels[1, 1, 1] == labels[2, 2, 2] == 1
    labels6, _ = postprocess_anomaly_map(m, 1.0, sigma_mm=0.0, min_volume_mm3=2.0, connectivity=1)
    assert labels6.max() == 0


def test_findings_centroid_mm_match_hand_computation():
    aff = np.array([[0.0, 0.0, 2.0, -50.0], [-1.5, 0.0, 0.0, 30.0], [0.0, 3.0, 0.0, 10.0], [0, 0, 0, 1]])
    score = np.zeros((10, 10, 10), np.float32)
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:4, 5:6, 7:9] = 1  # voxels x in {2,3}, y=5, z in {7,8}
    score[2:4, 5:6, 7:9] = [[[0.6, 0.7]], [[0.8, 0.9]]]
    labels[6, 1, 1] = 2
    score[6, 1, 1] = 0.95
    f = extract_findings(score, labels, aff)
    assert [x["id"] for x in f] == [2, 1]  # sorted by peak
    a = f[1]
    assert a["centroid_voxel"] == [2.5, 5.0, 7.5]
    # RAS = (2*7.5 - 50, -1.5*2.5 + 30, 3*5 + 10)
    assert np.allclose(a["centroid_ras_mm"], [-35.0, 26.25, 25.0])
    assert np.allclose(a["centroid_lps_mm"], [35.0, -26.25, 25.0])
    assert a["bbox_voxel"] == [[2, 4], [5, 6], [7, 9]]
    assert a["peak_voxel"] == [3, 5, 8]
    assert a["peak_score"] == pytest.approx(0.9) and a["mean_score"] == pytest.approx(0.75)
    assert a["volume_ml"] == pytest.approx(4 * 9.0 / 1000)
    json.dumps(f)  # plain Python types
    with pytest.raises(ValueError):
        extract_findings(score, labels)  # no affine anywhere


def test_array_and_dict_transforms_with_metatensor():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = MetaTensor(torch.as_tensor(_cube_map())[None], affine=torch.as_tensor(aff))
    out = AnomalyPostprocess(sigma_mm=0.0, min_volume_mm3=100.0)(img)
    assert isinstance(out, MetaTensor) and out.shape == (1, 24, 24, 24) and out.dtype == torch.uint8
    assert int(out.max()) == 1  # small cube: 8 voxels * 8 mm3 = 64 mm3 < 100 mm3
    assert np.allclose(out.affine.numpy(), aff)
    d = AnomalyPostprocessd("map", sigma_mm=0.0, min_volume_mm3=50.0)({"map": img})
    assert int(d["map_labels"].max()) == 2
    f = d["map_findings"]
    assert len(f) == 2 and f[0]["peak_score"] == pytest.approx(0.95)
    assert np.allclose(f[1]["centroid_ras_mm"], [28.0, 28.0, 28.0])
    with pytest.raises(ValueError):
        AnomalyPostprocess()(np.zeros((2, 4, 4, 4)), affine=aff)
    with pytest.raises(ValueError):
        AnomalyPostprocess()(np.zeros((1, 4, 4, 4)))  # no spacing source
    with pytest.raises(ValueError):
        AnomalyPostprocess(min_volume_mm3=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_the_scipy_measurement_reference(seed):
    """Component sizes and peaks are taken over the foreground voxels; the result equals the plain
    ``ndimage.label`` + ``ndimage.maximum`` formulation (numbered by peak, then size)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random((30, 28, 26)).astype(np.float32), 1.5)
    m = (m - m.min()) / (m.max() - m.min())
    m[rng.random(m.shape) < 0.01] = 0.97  # isolated hot voxels: many small components, some tied peaks
    body = np.ones(m.shape, bool)
    body[:3] = False
    labels, _ = postprocess_anomaly_map(m, (1.0, 1.0, 1.0), sigma_mm=0.0, threshold=0.6, min_volume_mm3=2.0, body_mask=body)

    fg = (m >= 0.6) & body
    comp, n = ndimage.label(fg, structure=ndimage.generate_binary_structure(3, 3))
    idx = np.arange(1, n + 1)
    counts = np.asarray(ndimage.sum(fg, comp, idx))
    peaks = np.asarray(ndimage.maximum(m, comp, idx))
    keep = counts >= 2
    kept = idx[keep][np.lexsort((-counts[keep], -peaks[keep]))]
    expected = np.zeros(m.shape, np.uint8)
    for rank, i in enumerate(kept[:255], start=1):
        expected[comp == i] = rank
    assert n > 5 and labels.max() == min(kept.size, 255)
    np.testing.assert_array_equal(labels, expected)
