"""Tests of the normative multi-scale descriptor memory (:mod:`monai_simsid.apps.descriptor_knn`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from monai_simsid.apps.descriptor_knn import DescriptorKNN, multiscale_descriptors


def _lung_with_vessels(seed: int, nodule_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm lung block: noisy parenchyma (-850 HU) crossed by straight vessels (radius 1.5 mm, +40 HU), and
    optionally a spherical nodule of radius ``nodule_mm`` at the centre. Returns the image and the nodule mask."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    img = rng.normal(-850.0, 30.0, shape).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    for _ in range(6):
        point, direction = rng.uniform(5, 35, 3), rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        rel = grid - point
        dist = np.linalg.norm(rel - (rel @ direction)[..., None] * direction, axis=-1)
        img[dist <= 1.5] = 40.0
    nodule = np.linalg.norm(grid - 19.5, axis=-1) <= nodule_mm
    img[nodule] = 40.0
    return img, nodule


@pytest.fixture(scope="module")
def fitted():
    normals = [_lung_with_vessels(s)[0] for s in (1, 2, 3)]
    masks = [np.ones(n.shape, bool) for n in normals]
    knn = DescriptorKNN(scales_mm=(1.5, 3.0, 5.0), k=5, bank_size=20000).fit(normals, masks, [(1.0, 1.0, 1.0)] * 3)
    return knn, normals, masks


def test_descriptors_are_smoothed_hu_in_mm():
    img = np.full((20, 20, 8), -800.0, np.float32)
    img[10, 10, 4] = 400.0
    mask = np.zeros(img.shape, bool)
    mask[10, 10, 4] = mask[2, 2, 2] = True
    f = multiscale_descriptors(img, (1.0, 1.0, 4.0), mask, scales_mm=(1.0, 4.0))
    assert f.shape == (2, 2) and f.dtype == np.float32
    # row order follows the mask's C order: (2,2,2) then (10,10,4); the point raises the finer scale more
    assert f[0, 0] == pytest.approx(-800.0, abs=1e-3)
    assert f[1, 0] > f[1, 1] > -800.0
    clipped = multiscale_descriptors(np.where(img > 0, 3000.0, img), (1.0, 1.0, 4.0), mask, scales_mm=(1.0, 4.0))
    np.testing.assert_allclose(clipped, f)  # HU above 400 is clipped: a metal voxel counts as dense tissue
    with pytest.raises(ValueError, match="scales_mm"):
        multiscale_descriptors(img, (1.0, 1.0, 1.0), scales_mm=(0.0,))


def test_nodule_scores_above_vessels_and_parenchyma(fitted):
    knn = fitted[0]
    image, nodule = _lung_with_vessels(seed=7, nodule_mm=5.0)  # a scan not in the bank
    vessels = (image > -400) & ~ndimage.binary_dilation(nodule, iterations=3)
    whole = np.ones(image.shape, bool)
    score = knn(image, whole, (1.0, 1.0, 1.0))
    assert score.shape == image.shape and score.dtype == np.float32
    assert vessels.sum() > 200
    # dense tissue alone is not anomalous (every normal has vessels); a dense blob wider than a vessel is
    assert score[nodule].mean() > np.percentile(score[vessels], 99)
    assert score[nodule].mean() > 3 * np.median(score)
    mask = np.zeros(image.shape, bool)
    mask[10:30, 10:30, 10:30] = True
    inside = knn(image, mask, (1.0, 1.0, 1.0))
    assert np.all(inside[~mask] == 0) and np.all(inside[mask] > 0)
    # a voxel's descriptor needs only its neighbourhood: scoring inside a mask equals scoring everywhere there
    np.testing.assert_allclose(inside[mask], score[mask], rtol=1e-5)


def test_bank_comes_from_normal_masks_only(fitted):
    knn, normals, masks = fitted
    assert knn.bank.shape == (20000, 3)
    pooled = np.concatenate([multiscale_descriptors(n, (1.0, 1.0, 1.0), m, knn.scales_mm) for n, m in zip(normals, masks)])
    np.testing.assert_allclose(knn.bank.std(axis=0), np.ones(3), atol=0.05)  # features divided by their normal spread
    # every bank row is one of the normal descriptors (a sample, nothing else)
    bank = knn.bank.astype(np.float64) * knn.scale
    dist, _ = cKDTree(pooled).query(bank[:200], k=1)
    assert np.max(dist) < 1e-2


def test_state_round_trip_and_errors(fitted):
    knn, normals, masks = fitted
    img, sp = normals[0], (1.0, 1.0, 1.0)
    again = DescriptorKNN.from_dict(knn.state_dict())
    np.testing.assert_array_equal(again(img, masks[0], sp), knn(img, masks[0], sp))
    with pytest.raises(RuntimeError, match="not fitted"):
        DescriptorKNN()(img, masks[0], sp)
    with pytest.raises(ValueError, match="missing"):
        DescriptorKNN.from_dict({"scales_mm": [1.0], "k": 1})
    with pytest.raises(ValueError, match="do not fit"):
        DescriptorKNN.from_dict({**knn.state_dict(), "scale": np.ones(2)})
    with pytest.raises(ValueError, match="k must be"):
        DescriptorKNN(k=0)
    with pytest.raises(ValueError, match="same length"):
        DescriptorKNN().fit([img], [], [sp])
    with pytest.raises(ValueError, match="shape"):
        knn(img, masks[0][:-1], sp)
