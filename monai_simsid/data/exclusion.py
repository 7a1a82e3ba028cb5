"""Regions of a normal scan that training and calibration must not learn from.

"Normal" scans are rarely certified lesion-free, and the normal-set audit (:mod:`monai_simsid.apps.audit`) can find a
mass in one of them. Dropping the whole scan throws away the rest of it; instead a datalist entry may name a mask
of the region to leave out, in the scan's own geometry (same shape and affine, like a lesion ``label``)::

    {"training": [{"image": "chest_07.nii.gz", "exclude": "chest_07_exclude.nii.gz"}, ...]}

Everything that learns from normal scans then leaves out the mask grown by :data:`EXCLUDE_MARGIN_MM` (a lesion's
look reaches beyond its edge: the descriptor memory's widest Gaussians, a network's receptive field):

- training windows (:class:`~monai_simsid.transforms.body.RandBodyWindowsd`) never overlap it;
- the calibration (thresholds, normative statistics, scan scores, :class:`~monai_simsid.handlers.CalibrationHandler`)
  reads no voxel in it;
- the descriptor memory (the fusion's, and ``descriptor_knn_ct``'s) stores no descriptor from it, and the normal-set
  audit looks elsewhere in that scan.

``tools/make_exclusion_mask.py`` writes such a mask: a sphere around a point, e.g. an audit's peak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_simsid.utils.geometry import spacing_from_affine

__all__ = ["EXCLUDE_KEY", "EXCLUDE_MARGIN_MM", "grow_mask", "item_exclusion", "sphere_mask"]

#: the datalist key (and preprocessed item key) of the exclusion mask
EXCLUDE_KEY = "exclude"
#: the exclusion mask is grown by this much (mm) before it is left out
EXCLUDE_MARGIN_MM = 10.0


def grow_mask(mask: Any, spacing: Sequence[float], margin_mm: float = EXCLUDE_MARGIN_MM) -> np.ndarray:
    """``mask`` (``(X, Y, Z)``, nonzero = in) and every voxel within ``margin_mm`` of it, as a bool array.

    The distance is Euclidean in mm, computed only over the mask's bounding box grown by the margin, so a small mask
    in a large scan costs little.

    Raises:
        ValueError: for a negative or non-finite margin, or a spacing that does not match the mask.
    """
    m = np.asarray(mask) > 0.5 if np.asarray(mask).dtype != bool else np.asarray(mask)
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != m.ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing {tuple(sp)} does not fit a {m.ndim}D mask.")
    if not np.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"margin_mm must be a finite value >= 0, got {margin_mm}.")
    if not m.any() or margin_mm == 0:
        return m.copy()
    idx = np.argwhere(m)
    pad = np.ceil(margin_mm / sp).astype(int) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, m.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dist = ndimage.distance_transform_edt(~m[box], sampling=sp)
    out = np.zeros_like(m)
    out[box] = dist <= margin_mm
    return out


def item_exclusion(
    item: Mapping[str, Any], spacing: Sequence[float] | None = None, margin_mm: float = EXCLUDE_MARGIN_MM
) -> np.ndarray | None:
    """The grown exclusion region ``(X, Y, Z)`` of a preprocessed item, or ``None`` when it has none.

    Args:
        item: a dict with the mask under :data:`EXCLUDE_KEY` (``(1, X, Y, Z)`` or ``(X, Y, Z)``), in the grid of its
            ``image``.
        spacing: the voxel size in mm (default: read off the mask's, else the image's, ``affine``).
        margin_mm: see :func:`grow_mask`.
    """
    mask = item.get(EXCLUDE_KEY)
    if mask is None:
        return None
    if spacing is None:
        affine = getattr(mask, "affine", None)
        affine = getattr(item.get("image"), "affine", None) if affine is None else affine
        if affine is None:
            raise ValueError("the exclusion mask carries no affine: give its spacing.")
        spacing = spacing_from_affine(affine)
    arr = np.asarray(torch.as_tensor(mask).detach().cpu())
    arr = arr[0] if arr.ndim == 4 else arr
    return grow_mask(arr, spacing, margin_mm)


def sphere_mask(shape: Sequence[int], affine: Any, centre_ras_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """A uint8 mask of the voxels of a grid (``shape``, voxel-to-RAS ``affine``) whose centres lie within
    ``radius_mm`` of the world point ``centre_ras_mm`` (e.g. an audit's ``peak_ras_mm``).

    Raises:
        ValueError: for a non-positive radius, a non-invertible affine, or a sphere that misses the grid.
    """
    a = np.asarray(torch.as_tensor(affine), dtype=np.float64)
    centre = np.asarray(centre_ras_mm, dtype=np.float64).ravel()
    if not np.isfinite(radius_mm) or radius_mm <= 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}.")
    if a.shape != (4, 4) or abs(np.linalg.det(a[:3, :3])) < 1e-9 or centre.size != 3:
        raise ValueError("need a 4x4 invertible affine and a 3D centre.")
    shape = tuple(int(s) for s in shape)
    ijk = np.linalg.solve(a, np.r_[centre, 1.0])[:3]
    reach = radius_mm / spacing_from_affine(a) + 1
    lo = np.clip(np.floor(ijk - reach), 0, shape).astype(int)
    hi = np.clip(np.ceil(ijk + reach) + 1, 0, shape).astype(int)
    out = np.zeros(shape, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(x, y) for x, y in zip(lo, hi)], indexing="ij"), axis=-1)
    world = grid @ a[:3, :3].T + a[:3, 3]
    out[tuple(slice(x, y) for x, y in zip(lo, hi))] = np.linalg.norm(world - centre, axis=-1) <= radius_mm
    if not out.any():
        raise ValueError(f"the {radius_mm} mm sphere at RAS {centre.tolist()} mm holds no voxel of the grid.")
    return out
