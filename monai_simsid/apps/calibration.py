"""Score calibration from normal scans only (never from test labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["calibrate_map", "calibrate_score", "compute_calibration", "voxel_statistics"]


def voxel_statistics(voxel_samples: np.ndarray, voxel_fpr: float = 0.001) -> tuple[float, float, float]:
    """``(threshold, median, scale)`` of raw map values sampled in normal bodies: the ``1 - voxel_fpr`` quantile,
    the median, and a quarter of their difference (the scale :func:`calibrate_map` divides by).

    Raises:
        ValueError: no samples, or ``voxel_fpr`` outside (0, 1).
    """
    if not 0 < voxel_fpr < 1:
        raise ValueError("voxel_fpr must be in (0, 1).")
    v = np.asarray(voxel_samples, dtype=float).reshape(-1)
    if v.size == 0:
        raise ValueError("calibration needs voxel samples.")
    v_thr = float(np.quantile(v, 1 - voxel_fpr))
    v_med = float(np.median(v))
    return v_thr, v_med, max((v_thr - v_med) / 4.0, 1e-6)


def compute_calibration(
    scan_scores: Sequence[float],
    voxel_samples: np.ndarray,
    window_scores: Sequence[float] | None = None,
    fpr: float = 0.05,
    voxel_fpr: float = 0.001,
    source: str = "validation normals",
) -> dict[str, Any]:
    """Statistics that turn raw scores into calibrated ones, computed on normal scans.

    Args:
        scan_scores: raw scan scores of normal scans.
        voxel_samples: raw anomaly-map values sampled inside the body of normal scans.
        window_scores: raw per-scan discriminator scores of normal scans (SimSID's sigmoid normalisation).
        fpr: target false-positive rate at the scan level; the threshold is the ``1 - fpr`` quantile of the
            normal scan scores (with fewer than 20 scans, at least the mean + 1.645 sd under a normal
            approximation, where the sd is floored at 5% of the mean score).
        voxel_fpr: fraction of normal body voxels allowed above the voxel threshold.
        source: where the normals came from (written to every report).

    Returns:
        a JSON-serialisable dict stored in the checkpoint.
    """
    s = np.asarray(scan_scores, dtype=float)
    if s.size == 0:
        raise ValueError("calibration needs at least one normal scan.")
    if not 0 < fpr < 1 or not 0 < voxel_fpr < 1:
        raise ValueError("fpr and voxel_fpr must be in (0, 1).")
    mean, std = float(s.mean()), float(s.std(ddof=1)) if s.size > 1 else 0.0
    # with a handful of normal scans the sample sd is unreliable: never let it fall below 5% of the mean score
    std = max(std, 0.05 * abs(mean), 1e-12)
    threshold = max(float(np.quantile(s, 1 - fpr)), mean + 1.645 * std if s.size < 20 else -np.inf)
    v_thr, v_med, v_scale = voxel_statistics(voxel_samples, voxel_fpr)
    cal: dict[str, Any] = {
        "source": source,
        "num_scans": int(s.size),
        "fpr": fpr,
        "voxel_fpr": voxel_fpr,
        "scan_mean": mean,
        "scan_std": std,
        "scan_threshold": threshold,
        "voxel_threshold": v_thr,
        "voxel_median": v_med,
        "voxel_scale": v_scale,
    }
    if window_scores is not None and len(window_scores):
        w = np.asarray(window_scores, dtype=float)
        cal["window_mean"] = float(w.mean())
        cal["window_std"] = max(float(w.std(ddof=1)) if w.size > 1 else 0.0, 1e-6)
    return cal


def calibrate_map(anomaly_map: torch.Tensor, cal: Mapping[str, Any]) -> torch.Tensor:
    """Map raw voxel values to [0, 1] with 0.5 exactly at the normal-data voxel threshold."""
    return torch.sigmoid((anomaly_map.float() - cal["voxel_threshold"]) / cal["voxel_scale"])


def calibrate_score(score: float, cal: Mapping[str, Any]) -> float:
    """Map a raw scan score to (0, 1) with 0.5 exactly at the normal-data scan threshold."""
    z = (score - cal["scan_threshold"]) / cal["scan_std"]
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))
