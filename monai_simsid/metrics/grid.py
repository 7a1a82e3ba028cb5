"""Does an anomaly map show the sliding-window grid? A check on normal scans.

A map stitched from windows can carry the window layout: errors that rise towards each window's rim (zero padding,
no context) or a model that learned where in a window anomalies tend to be. Averaged over the body, such a map
repeats with the window stride along each axis. :func:`compute_window_grid_strength` measures how much of an axis
profile's (detrended) variation is explained by the phase within the window stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compute_window_grid_strength", "profile_periodicity", "window_stride"]


def window_stride(roi_size: Sequence[int], overlap: float) -> list[int]:
    """Window start spacing per axis, as MONAI's ``sliding_window_inference`` lays windows out."""
    return [max(int(round(r * (1 - overlap))), 1) for r in roi_size]


def profile_periodicity(profile: np.ndarray, period: float, phase_bins: int = 8) -> float:
    """Fraction of a 1D profile's detrended variance explained by its phase modulo ``period``.

    The trend is a moving average over one period (which removes every component of that period from the trend, so
    it stays in the residual). Residual samples are grouped by phase (``phase_bins`` bins over one period); the value is
    ``var(mean per phase bin) / var(residual)``. A profile that repeats with the period gives ~1; one without a
    component of that period gives about ``phase_bins / len(profile)`` (sampling noise of the bin means).

    Returns NaN when the profile is shorter than two periods or has no variation.
    """
    p = np.asarray(profile, dtype=np.float64).reshape(-1)
    if period <= 1 or p.size < 2 * period:
        return float("nan")
    w = int(round(period))
    trend = np.convolve(np.pad(p, (w // 2, w - 1 - w // 2), mode="reflect"), np.ones(w) / w, mode="valid")
    r = p - trend
    total = r.var()
    if not np.isfinite(total) or total <= 1e-20:
        return float("nan")
    phase = np.floor((np.arange(p.size) % period) / period * phase_bins).astype(int)
    means = np.array([r[phase == b].mean() if np.any(phase == b) else 0.0 for b in range(phase_bins)])
    counts = np.bincount(phase, minlength=phase_bins)
    between = float(np.sum(counts * (means - r.mean()) ** 2) / counts.sum())
    return between / float(total)


def compute_window_grid_strength(
    anomaly_map: np.ndarray,
    stride_vox: Sequence[float],
    mask: np.ndarray | None = None,
    phase_bins: int = 8,
) -> list[float]:
    """Window-grid strength of a 3D (or 2D) map, one value per axis (see :func:`profile_periodicity`).

    Args:
        anomaly_map: the map, in any geometry.
        stride_vox: the window stride in voxels of this map's grid, per axis (convert from the model's grid when the
            map was resampled, e.g. ``stride * model_spacing / map_spacing``).
        mask: optional body mask; profiles average the map over it, slice by slice (slices without mask are dropped).
        phase_bins: phase bins per period.

    Returns:
        Per-axis fraction of the profile's detrended variance explained by the window phase (NaN if undefined).
    """
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if len(stride_vox) != amap.ndim:
        raise ValueError(f"stride_vox needs {amap.ndim} entries, got {len(stride_vox)}.")
    m = np.ones(amap.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != amap.shape:
        raise ValueError(f"mask shape {m.shape} differs from the map's {amap.shape}.")
    out = []
    for axis in range(amap.ndim):
        other = tuple(a for a in range(amap.ndim) if a != axis)
        n = m.sum(axis=other)
        s = (amap * m).sum(axis=other)
        keep = n > 0
        idx = np.nonzero(keep)[0]
        if idx.size == 0:
            out.append(float("nan"))
            continue
        lo, hi = idx[0], idx[-1] + 1  # a contiguous run of slices keeps the phase of each sample
        prof = s[lo:hi] / np.maximum(n[lo:hi], 1)
        prof = np.where(n[lo:hi] > 0, prof, np.nan)
        if np.isnan(prof).any():  # holes: fill from neighbours
            good = ~np.isnan(prof)
            prof = np.interp(np.arange(prof.size), np.nonzero(good)[0], prof[good])
        out.append(profile_periodicity(prof, float(stride_vox[axis]), phase_bins))
    return out
