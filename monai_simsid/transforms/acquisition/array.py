"""Simulated slice thickness: what a scan of the same anatomy looks like when acquired with thicker slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from scipy import ndimage

from monai_simsid.transforms.post.array import spacing_from_affine

__all__ = ["FWHM_TO_SIGMA", "SimulateSliceThickness", "check_thickness", "simulate_slice_thickness"]

#: a Gaussian's standard deviation per unit of its full width at half maximum
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def check_thickness(thickness_mm: float, name: str = "thickness_mm") -> float:
    """``thickness_mm`` as a positive finite float, or ``ValueError``."""
    try:
        t = float(thickness_mm)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a positive number of mm, got {thickness_mm!r}.") from e
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be a positive number of mm, got {thickness_mm!r}.")
    return t


def _check_offset(offset: float) -> float:
    if not 0.0 <= float(offset) < 1.0:
        raise ValueError(f"offset must lie in [0, 1), got {offset}.")
    return float(offset)


def simulate_slice_thickness(
    image: NdarrayOrTensor, spacing: Sequence[float], thickness_mm: float, axis: int = -1, offset: float = 0.0
) -> np.ndarray:
    """An array re-acquired with slices of ``thickness_mm``, on its own grid.

    A scanner's slice sensitivity profile is about Gaussian, and the nominal slice thickness is its full width at half
    maximum. Along ``axis`` the image is smoothed by the part of that profile it lacks (a Gaussian of FWHM
    ``sqrt(thickness**2 - spacing**2)``: its own voxels already average over their spacing), sampled on planes
    ``thickness_mm`` apart (slice spacing = thickness, as in a routine thick-slice series), and brought back to its
    own grid by linear interpolation between those planes, as resampling a thick-slice scan to a fine grid does. So a
    vessel that crosses a thick slice looks as it does in such a scan: smeared along the axis into a short blob.

    Args:
        image: a spatial array (e.g. ``(X, Y, Z)`` in HU).
        spacing: its voxel size in mm per axis.
        thickness_mm: the simulated slice thickness and spacing (mm). At or below the spacing along ``axis``, the
            image comes back unchanged (as float32).
        axis: the slice axis.
        offset: where the first simulated plane lies, as a fraction of the plane spacing in ``[0, 1)`` (the
            phase of the slices; 0: on the first voxel).

    Returns:
        float32 array of the image's shape.

    Raises:
        ValueError: a bad spacing, thickness, axis or offset.
    """
    img = np.asarray(torch.as_tensor(image).detach().cpu().numpy(), dtype=np.float32)
    sp = [float(s) for s in spacing]
    if len(sp) != img.ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must hold one positive value per axis of the {img.ndim}-D image, got {spacing}.")
    if not -img.ndim <= axis < img.ndim:
        raise ValueError(f"axis {axis} is out of range for a {img.ndim}-D image.")
    offset = _check_offset(offset)
    t = check_thickness(thickness_mm)
    axis = axis % img.ndim
    s = sp[axis]
    n = img.shape[axis]
    if t <= s or n < 2:
        return img.copy()
    blurred = ndimage.gaussian_filter1d(img, np.sqrt(t * t - s * s) * FWHM_TO_SIGMA / s, axis=axis, mode="nearest")
    step = t / s  # plane spacing in voxels
    planes = np.arange(float(offset) * step, n - 1 + 1e-6, step)  # beyond the first and last: the nearest plane
    if planes.size < 2:
        return np.repeat(_linear(blurred, planes, axis), n, axis=axis)
    values = _linear(blurred, planes, axis)  # the thick slices
    return _linear_between(values, planes, n, axis)


def _linear(a: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """``a`` linearly interpolated at fractional ``positions`` along ``axis``."""
    lo = np.clip(np.floor(positions).astype(int), 0, a.shape[axis] - 1)
    hi = np.clip(lo + 1, 0, a.shape[axis] - 1)
    w = _along(positions - lo, a.ndim, axis).astype(np.float32)
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def _linear_between(values: np.ndarray, planes: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Values given on increasing ``planes`` (voxel positions, at least two) along ``axis``, linearly interpolated onto
    ``0..n-1`` (constant beyond the first and last plane)."""
    z = np.arange(n, dtype=np.float64)
    k = np.clip(np.searchsorted(planes, z, side="right") - 1, 0, planes.size - 2)
    w = np.clip((z - planes[k]) / (planes[k + 1] - planes[k]), 0.0, 1.0)
    w = _along(w, values.ndim, axis).astype(np.float32)
    out = np.take(values, k, axis=axis) * (1 - w) + np.take(values, k + 1, axis=axis) * w
    return out.astype(np.float32)


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


class SimulateSliceThickness(Transform):
    """Channel-first version of :func:`simulate_slice_thickness`: every channel of ``(C, *S)`` re-acquired with slices
    of ``thickness_mm`` along spatial axis ``axis``, on its own grid; the spacing is read from the image's affine
    (a ``MetaTensor``) unless ``pixdim`` is given. Metadata is kept.

    Use it to make normal scans look like a thick-slice series (e.g. to build a normal reference for one), or, with a
    random thickness, as a training augmentation.

    Args:
        thickness_mm: simulated slice thickness and spacing (mm).
        axis: spatial slice axis (2: axial after RAS orientation).
        pixdim: voxel size (mm) per spatial axis; ``None``: from the affine.
        offset: phase of the first plane (see :func:`simulate_slice_thickness`).
    """

    def __init__(
        self, thickness_mm: float, axis: int = 2, pixdim: Sequence[float] | None = None, offset: float = 0.0
    ) -> None:
        self.thickness_mm = check_thickness(thickness_mm)
        self.axis = int(axis)
        self.pixdim = None if pixdim is None else [float(p) for p in pixdim]
        self.offset = _check_offset(offset)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``img`` ``(C, *S)`` -> the same shape and type, float32."""
        x = torch.as_tensor(img)
        if x.ndim < 2:
            raise ValueError(f"expected a channel-first image (C, *S), got shape {tuple(x.shape)}.")
        if self.pixdim is not None:
            spacing = self.pixdim
        elif isinstance(img, MetaTensor):
            spacing = spacing_from_affine(img.affine).tolist()
        else:
            raise ValueError("SimulateSliceThickness needs pixdim, or a MetaTensor whose affine gives the spacing.")
        out = np.stack(
            [simulate_slice_thickness(c, spacing, self.thickness_mm, self.axis, self.offset) for c in x.detach().cpu()]
        )
        if isinstance(img, MetaTensor):
            res = img.clone().float()
            res.array = out if not isinstance(res.array, torch.Tensor) else torch.from_numpy(out)
            return res
        return torch.from_numpy(out) if isinstance(img, torch.Tensor) else out
