"""Score calibration from normal scans only (never from test labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "SLICE_RATIO",
    "acquisition_check",
    "calibrate_map",
    "calibrate_score",
    "compute_calibration",
    "voxel_statistics",
]

#: a scan's slices count as thicker (or thinner) than the normal reference's beyond this ratio
SLICE_RATIO = 1.5


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


def acquisition_check(input_spacing: Sequence[float], cal: Mapping[str, Any], ratio: float = SLICE_RATIO) -> dict[str, Any] | None:
    """Whether a scan's slices match those of the normal scans its calibration came from.

    Thick slices smear small structures and lower the map and the scan score, so a thick-slice scan judged against
    thin-slice normals is scored less anomalous than it is (``docs/benchmarks.md``, "Thick slices and the normal
    reference"). The slice of a scan is its largest voxel size; the reference's is the largest of its normal scans'
    (``cal["normal_slice_mm"]``), or the thickness they were re-sliced to (``cal["slice_thickness_mm"]``).

    Args:
        input_spacing: the scan's voxel size in mm per axis.
        cal: a calibration (see :func:`compute_calibration`).
        ratio: how much thicker or thinner a scan's slices may be before a note is given.

    Returns:
        ``None`` for a calibration that does not record its normals' slices (made before they were recorded), else
        ``{"slice_mm", "normal_slice_mm", "note"}``, where ``note`` is ``None`` when the slices match and otherwise
        says what differs and what to do.
    """
    slices = cal.get("normal_slice_mm")
    if not slices:
        return None
    resliced = cal.get("slice_thickness_mm")
    normal = max(float(max(slices)), float(resliced or 0.0))
    given = float(max(input_spacing))
    note = None
    if given > ratio * normal:
        note = (
            f"this scan's slices ({given:.3g} mm) are thicker than those of the normal scans of the calibration "
            f"({normal:.3g} mm): its map and scan score run lower, so its score and findings are less sensitive. "
            f"Re-calibrate with calibrate.json's calibration_thickness_mm {given:.3g} for scans like it."
        )
    elif resliced and given * ratio < normal:
        note = (
            f"the normal scans of the calibration were re-sliced to {normal:.3g} mm, and this scan's slices are thinner "
            f"({given:.3g} mm): use a checkpoint calibrated on normal scans as thin as it."
        )
    return {"slice_mm": given, "normal_slice_mm": normal, "note": note}
