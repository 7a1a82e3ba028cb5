"""Lesion shape primitives shared by the phantom generator and the synthetic-anomaly transforms, and the transplant
of a real lesion (e.g. an LIDC nodule crop) into a normal scan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["irregular_ellipsoid", "lesion_sites", "transplant_lesion"]


def irregular_ellipsoid(
    spatial_shape: Sequence[int],
    center: Sequence[float],
    radii: Sequence[float],
    rng: np.random.Generator,
    roughness: float = 0.25,
    edge_width: float = 1.0,
) -> np.ndarray:
    """Soft mask of an ellipsoid with an irregular, lobulated boundary.

    The boundary radius is modulated by smoothed random noise, and the edge is blended over ``edge_width``
    voxels, so the result looks like a lesion rather than a geometric solid. Works in 2D and 3D.

    Args:
        spatial_shape: shape of the output array.
        center: centre in voxel coordinates (one value per spatial dimension).
        radii: semi-axes in voxels (one value per spatial dimension), each > 0.
        rng: the random generator that drives the boundary noise (explicitly seeded by the caller).
        roughness: relative amplitude of the boundary modulation, in [0, 1).
        edge_width: width in voxels of the soft transition at the boundary (> 0).

    Returns:
        float32 array of ``spatial_shape`` with values in [0, 1] (1 inside, 0 outside).

    Raises:
        ValueError: if the arguments are inconsistent.
    """
    shape = tuple(int(s) for s in spatial_shape)
    nd = len(shape)
    if len(center) != nd or len(radii) != nd:
        raise ValueError(f"center and radii need {nd} values, got {len(center)} and {len(radii)}.")
    if min(radii) <= 0:
        raise ValueError(f"radii must be positive, got {tuple(radii)}.")
    if not 0 <= roughness < 1:
        raise ValueError(f"roughness must be in [0, 1), got {roughness}.")
    if edge_width <= 0:
        raise ValueError(f"edge_width must be positive, got {edge_width}.")

    # work on the bounding box only
    lo = [max(0, int(np.floor(c - 1.6 * r - 2 * edge_width))) for c, r in zip(center, radii)]
    hi = [min(s, int(np.ceil(c + 1.6 * r + 2 * edge_width)) + 1) for s, c, r in zip(shape, center, radii)]
    out = np.zeros(shape, dtype=np.float32)
    if any(h <= l for l, h in zip(lo, hi)):
        return out
    grids = np.meshgrid(*[np.arange(l, h, dtype=np.float32) for l, h in zip(lo, hi)], indexing="ij")
    norm = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)))
    if roughness > 0:
        noise = rng.standard_normal(norm.shape).astype(np.float32)
        sigma = max(1.0, 0.35 * float(min(radii)))
        noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="wrap")
        noise /= noise.std() + 1e-8
        norm = norm * (1.0 + roughness * np.tanh(noise))
    # signed distance to the boundary, approximately in voxels
    dist = (norm - 1.0) * float(np.mean(radii))
    soft = 1.0 / (1.0 + np.exp(np.clip(dist / (0.5 * edge_width), -30, 30)))
    out[tuple(slice(l, h) for l, h in zip(lo, hi))] = soft.astype(np.float32)
    return out


def transplant_lesion(
    host_hu: np.ndarray,
    host_spacing: Sequence[float],
    lesion_hu: np.ndarray,
    lesion_mask: np.ndarray,
    lesion_spacing: Sequence[float],
    centre: Sequence[int],
    feather_mm: float = 0.75,
) -> tuple[np.ndarray, np.ndarray]:
    """Put a real lesion into a host scan: its density is added where it exceeds the host's.

    The lesion's VOI is resampled (linearly, in mm) onto the host grid with the centroid of ``lesion_mask`` at the
    host voxel ``centre``. Inside the lesion, and over a soft edge of about ``feather_mm`` around it, the host
    becomes ``max(host, lesion)`` (so a solid nodule replaces parenchyma, and a vessel of the host that crosses it
    stays); nothing of the VOI outside the lesion (its own parenchyma, a chest wall) is copied. Both arrays are
    ``(X, Y, Z)`` in HU on axis-aligned grids of the same orientation.

    Args:
        host_hu: the normal scan.
        host_spacing, lesion_spacing: voxel sizes in mm.
        lesion_hu, lesion_mask: the lesion's VOI and its mask (same shape).
        centre: host voxel that receives the lesion's centroid.
        feather_mm: width of the soft edge (Gaussian sigma, mm; 0 for a hard edge).

    Returns:
        ``(image, label)``: the host with the lesion (float32) and the lesion's mask on the host grid (bool).

    Raises:
        ValueError: an empty or mismatching mask, bad spacings, or a centre outside the host.
    """
    host = np.asarray(host_hu, dtype=np.float32)
    mask = np.asarray(lesion_mask) > 0.5
    vox = np.asarray(lesion_hu, dtype=np.float32)
    if host.ndim != 3 or vox.shape != mask.shape or vox.ndim != 3:
        raise ValueError(f"need 3D arrays and a mask of the lesion's shape, got {host.shape}, {vox.shape}, {mask.shape}.")
    if not mask.any():
        raise ValueError("the lesion mask is empty.")
    hs, ls = (np.asarray(x, dtype=np.float64) for x in (host_spacing, lesion_spacing))
    if hs.shape != (3,) or ls.shape != (3,) or not (np.all(hs > 0) and np.all(ls > 0)):
        raise ValueError(f"spacings must be three positive values, got {host_spacing} and {lesion_spacing}.")
    c = np.asarray(centre, dtype=np.int64)
    if c.shape != (3,) or np.any(c < 0) or np.any(c >= host.shape):
        raise ValueError(f"centre {tuple(centre)} lies outside the host {host.shape}.")
    if feather_mm < 0:
        raise ValueError(f"feather_mm must be >= 0, got {feather_mm}.")
    centroid = np.array(ndimage.center_of_mass(mask))
    # host voxels that can receive the VOI: its extent around the centroid, in host voxels, cut to the host
    half = np.ceil(np.maximum(centroid, np.array(mask.shape) - 1 - centroid) * ls / hs).astype(int) + 2
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, host.shape)
    grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    coords = [centroid[i] + (grid[i] - c[i]) * hs[i] / ls[i] for i in range(3)]
    sample = lambda a, cval: ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=cval)  # noqa: E731
    patch = sample(vox, -1000.0).astype(np.float32)
    weight = sample(mask.astype(np.float32), 0.0)
    label = weight >= 0.5
    if feather_mm > 0:
        weight = np.maximum(weight, ndimage.gaussian_filter(label.astype(np.float32), feather_mm / hs))
    weight = np.clip(weight, 0.0, 1.0)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = host.copy()
    out[box] = host[box] + weight * np.maximum(patch - host[box], 0.0)
    full = np.zeros(host.shape, dtype=bool)
    full[box] = label
    return out, full


def lesion_sites(
    lung: np.ndarray, image_hu: np.ndarray, spacing: Sequence[float], margin_mm: float, rng: np.random.Generator,
    n: int = 1, max_hu: float = -700.0, max_margin_mm: float | None = None,
) -> np.ndarray:
    """``n`` random voxels deep in the lung: at least ``margin_mm`` from the edge of ``lung`` and in parenchyma (the
    image smoothed by 2 mm below ``max_hu``, so not on a vessel), drawn uniformly with ``rng``.

    With ``max_margin_mm`` the voxels lie at most that far from the edge, too: a band along the lung's border, e.g. for
    a nodule against the pleura.

    Returns:
        int array ``(n, 3)``.

    Raises:
        ValueError: when no voxel qualifies, or ``max_margin_mm`` is below ``margin_mm``.
    """
    if max_margin_mm is not None and max_margin_mm < margin_mm:
        raise ValueError(f"max_margin_mm ({max_margin_mm}) must be at least margin_mm ({margin_mm}).")
    sp = np.asarray(spacing, dtype=np.float64)
    dist = ndimage.distance_transform_edt(np.asarray(lung, dtype=bool), sampling=sp)
    inside = dist >= margin_mm
    if max_margin_mm is not None:
        inside &= dist <= max_margin_mm
    inside &= ndimage.gaussian_filter(np.asarray(image_hu, dtype=np.float32), 2.0 / sp) < max_hu
    idx = np.argwhere(inside)
    if not len(idx):
        where = f"{margin_mm}-{max_margin_mm}" if max_margin_mm is not None else f"{margin_mm}"
        raise ValueError(f"no lung voxel lies {where} mm inside the lung in parenchyma.")
    return idx[rng.choice(len(idx), size=n, replace=len(idx) < n)]
