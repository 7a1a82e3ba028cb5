"""Lesion shape primitives shared by the phantom generator and the synthetic-anomaly transforms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["irregular_ellipsoid"]


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
