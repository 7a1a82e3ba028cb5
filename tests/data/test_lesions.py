"""Tests of the lesion transplant (a real lesion put into a normal scan) and of the sites it is put at."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from monai_simsid.data.lesions import lesion_sites, transplant_lesion


def _voi(spacing=(0.5, 0.5, 1.0), radius_mm=3.0, shape=(30, 30, 16)):
    """A nodule VOI: a solid sphere (+40 HU) in parenchyma (-850 HU) beside a slab of chest wall (+60 HU)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing)])
    mask = np.linalg.norm(grid - centre, axis=-1) <= radius_mm
    hu = np.full(shape, -850.0, np.float32)
    hu[mask] = 40.0
    hu[:3] = 60.0  # chest wall at the VOI's edge: not part of the lesion, must not be copied
    return hu, mask


def test_transplant_adds_the_lesion_density_on_the_host_grid_and_nothing_else():
    host = np.full((40, 40, 40), -800.0, np.float32)
    host[:, 20, :] = 30.0  # a vessel crossing the site: denser than parenchyma, kept
    hu, mask = _voi()
    out, label = transplant_lesion(host, (1.5, 1.5, 1.5), hu, mask, (0.5, 0.5, 1.0), (20, 18, 20))
    # the label is the lesion resampled to 1.5 mm: about its volume, centred on the site
    volume = mask.sum() * 0.25 * 1.0
    assert label.sum() * 1.5**3 == pytest.approx(volume, rel=0.3)
    assert np.allclose(ndimage.center_of_mass(label), (20, 18, 20), atol=0.6)
    assert out[label].min() > -100 and out[label].mean() > 0  # solid inside
    assert np.array_equal(out[:, 20, :] >= 30.0 - 1e-3, np.ones_like(out[:, 20, :], bool))  # the vessel stays
    changed = out != host
    assert changed.any() and not (changed & ~ndimage.binary_dilation(label, iterations=3)).any()  # only near it
    assert out.max() <= 60.0 and out.dtype == np.float32
    # a hard edge changes only the label's voxels
    hard, label2 = transplant_lesion(host, (1.5, 1.5, 1.5), hu, mask, (0.5, 0.5, 1.0), (20, 18, 20), feather_mm=0)
    assert np.array_equal(label, label2) and not ((hard != host) & ~label).any()
    # at the host's edge the lesion is cut, not wrapped
    edge, cut = transplant_lesion(host, (1.5, 1.5, 1.5), hu, mask, (0.5, 0.5, 1.0), (0, 0, 0))
    assert 0 < cut.sum() < label.sum() and not cut[-5:].any()


def test_transplant_rejects_bad_inputs():
    host = np.zeros((10, 10, 10), np.float32)
    hu, mask = _voi()
    with pytest.raises(ValueError, match="empty"):
        transplant_lesion(host, (1, 1, 1), hu, np.zeros_like(mask), (1, 1, 1), (5, 5, 5))
    with pytest.raises(ValueError, match="outside"):
        transplant_lesion(host, (1, 1, 1), hu, mask, (1, 1, 1), (5, 5, 10))
    with pytest.raises(ValueError, match="spacings"):
        transplant_lesion(host, (1, 1, 0), hu, mask, (1, 1, 1), (5, 5, 5))
    with pytest.raises(ValueError, match="shape"):
        transplant_lesion(host, (1, 1, 1), hu, mask[:-1], (1, 1, 1), (5, 5, 5))


def test_sites_lie_deep_in_the_lung_in_parenchyma_and_are_seeded():
    lung = np.zeros((40, 40, 40), bool)
    lung[5:35, 5:35, 5:35] = True
    hu = np.full(lung.shape, 0.0, np.float32)
    hu[lung] = -850.0
    hu[18:22, :, :] = 40.0  # a dense band through the lung: not parenchyma
    sites = lesion_sites(lung, hu, (1.0, 1.0, 1.0), 6.0, np.random.default_rng(0), n=50)
    assert sites.shape == (50, 3)
    assert np.all(sites >= 5 + 6 - 1) and np.all(sites <= 34 - 6 + 1)  # at least 6 mm inside
    assert not np.any((sites[:, 0] >= 16) & (sites[:, 0] <= 23))  # not on or next to the dense band
    again = lesion_sites(lung, hu, (1.0, 1.0, 1.0), 6.0, np.random.default_rng(0), n=50)
    assert np.array_equal(sites, again)
    with pytest.raises(ValueError, match="no lung voxel"):
        lesion_sites(lung, hu, (1.0, 1.0, 1.0), 30.0, np.random.default_rng(0))


def test_sites_in_a_band_along_the_lung_border():
    from scipy import ndimage

    lung = np.zeros((40, 40, 40), bool)
    lung[5:35, 5:35, 5:35] = True
    hu = np.where(lung, -850.0, 0.0).astype(np.float32)
    sites = lesion_sites(lung, hu, (1.0, 1.0, 1.0), 3.0, np.random.default_rng(1), n=200, max_margin_mm=5.0)
    dist = ndimage.distance_transform_edt(lung)[tuple(sites.T)]
    assert np.all((dist >= 3.0) & (dist <= 5.0))
    assert len({tuple(s) for s in sites}) > 100  # spread along the whole border, not one spot
    with pytest.raises(ValueError, match="max_margin_mm"):
        lesion_sites(lung, hu, (1.0, 1.0, 1.0), 6.0, np.random.default_rng(0), max_margin_mm=5.0)
