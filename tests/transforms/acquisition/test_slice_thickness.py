"""Simulated slice thickness: what it changes (only the slice axis, mass kept, thin planes spread to the thickness)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_simsid.transforms import (
    SimulateSliceThickness,
    SimulateSliceThicknessd,
    simulate_slice_thickness,
)


def _plane(n: int = 64, at: int = 32) -> np.ndarray:
    img = np.zeros((6, 5, n), dtype=np.float32)
    img[..., at] = 1.0
    return img


def test_thin_plane_spreads_to_the_thickness_and_keeps_its_mass():
    img = _plane()
    out = simulate_slice_thickness(img, (1.0, 1.0, 1.0), 4.0, axis=2)
    assert out.shape == img.shape and out.dtype == np.float32
    profile = out[0, 0]
    # mass along the slice axis is kept on average over the slices' phase (one phase samples a thin structure at its
    # peak, another between two planes: planes a slice thickness apart under-sample it, as a thick-slice series does)
    masses = [simulate_slice_thickness(img, (1.0,) * 3, 4.0, offset=o)[0, 0].sum() for o in (0.0, 0.25, 0.5, 0.75)]
    assert np.mean(masses) == pytest.approx(1.0, rel=0.02)
    assert all(m == pytest.approx(1.0, rel=0.15) for m in masses)
    # the peak drops and the profile is about as wide as the slice: more than half the mass lies beyond +-1 voxel
    assert profile.max() < 0.35
    assert profile[31:34].sum() < 0.75
    assert profile[24:41].sum() > 0.97  # but nothing spreads far
    # every column along the other axes is treated alike
    np.testing.assert_allclose(out, np.broadcast_to(profile, out.shape), atol=1e-6)


def test_thicker_slices_spread_more():
    img = _plane()
    widths = []
    for t in (2.0, 4.0, 8.0):
        p = simulate_slice_thickness(img, (1.0, 1.0, 1.0), t)[0, 0]
        z = np.arange(p.size)
        mean = (p * z).sum() / p.sum()
        widths.append(np.sqrt((p * (z - mean) ** 2).sum() / p.sum()))
    assert widths[0] < widths[1] < widths[2]


def test_constant_and_ramp_are_kept_and_other_axes_are_untouched():
    sp = (0.7, 0.7, 1.5)
    const = np.full((4, 4, 40), -300.0, dtype=np.float32)
    np.testing.assert_allclose(simulate_slice_thickness(const, sp, 5.0), const, atol=1e-3)
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32) * 10.0, (4, 4, 40)).copy()
    out = simulate_slice_thickness(ramp, sp, 5.0)
    np.testing.assert_allclose(out[..., 8:30], ramp[..., 8:30], atol=1e-2)  # linear along z: kept inside
    in_plane = np.broadcast_to(np.random.default_rng(0).normal(size=(4, 4, 1)).astype(np.float32), (4, 4, 40)).copy()
    np.testing.assert_allclose(simulate_slice_thickness(in_plane, sp, 5.0), in_plane, atol=1e-5)


def test_at_or_below_the_spacing_nothing_changes():
    img = np.random.default_rng(1).normal(size=(5, 5, 20)).astype(np.float32)
    out = simulate_slice_thickness(img, (1.0, 1.0, 2.5), 2.5)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_axis_and_offset():
    img = np.moveaxis(_plane(), 2, 0)  # slices along axis 0
    out = simulate_slice_thickness(img, (1.0, 1.0, 1.0), 4.0, axis=0)
    np.testing.assert_allclose(np.moveaxis(out, 0, 2), simulate_slice_thickness(_plane(), (1.0,) * 3, 4.0), atol=1e-6)
    shifted = simulate_slice_thickness(_plane(), (1.0,) * 3, 4.0, offset=0.5)[0, 0]
    assert shifted.sum() == pytest.approx(1.0, rel=0.15)
    assert not np.allclose(shifted, simulate_slice_thickness(_plane(), (1.0,) * 3, 4.0)[0, 0])


@pytest.mark.parametrize(
    "kwargs",
    [{"thickness_mm": 0.0}, {"thickness_mm": float("nan")}, {"thickness_mm": "thick"}, {"offset": 1.0},
     {"spacing": (1.0, 1.0)}, {"spacing": (1.0, 0.0, 1.0)}, {"axis": 3}],
)
def test_bad_arguments(kwargs):
    args = {"image": np.zeros((3, 3, 8)), "spacing": (1.0, 1.0, 1.0), "thickness_mm": 3.0, **kwargs}
    with pytest.raises(ValueError):
        simulate_slice_thickness(**args)


def test_transform_reads_the_spacing_from_the_affine_and_keeps_metadata():
    img = MetaTensor(torch.from_numpy(_plane()[None]), affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    out = SimulateSliceThickness(4.0)(img)
    assert isinstance(out, MetaTensor) and out.shape == img.shape
    torch.testing.assert_close(out.affine, img.affine)
    np.testing.assert_allclose(out[0].numpy(), simulate_slice_thickness(_plane(), (1.0,) * 3, 4.0), atol=1e-6)
    # the affine's spacing counts: with 2 mm slices, 4 mm spreads less than with 1 mm
    img2 = MetaTensor(torch.from_numpy(_plane()[None]), affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))
    assert SimulateSliceThickness(4.0)(img2)[0].max() > out[0].max()
    d = SimulateSliceThicknessd("image", 4.0)({"image": img, "label": 7})
    assert d["label"] == 7
    torch.testing.assert_close(d["image"].as_tensor(), out.as_tensor())
    plain = SimulateSliceThickness(4.0, pixdim=(1.0, 1.0, 1.0))(torch.from_numpy(_plane()[None]))
    assert isinstance(plain, torch.Tensor) and not isinstance(plain, MetaTensor)
    with pytest.raises(ValueError, match="pixdim"):
        SimulateSliceThickness(4.0)(torch.from_numpy(_plane()[None]))
    with pytest.raises(ValueError):
        SimulateSliceThickness(-1.0)
