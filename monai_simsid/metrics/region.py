"""Region-level anomaly-segmentation metrics: AUPRO and lesion detection rate.

Lesions are the connected components of the ground-truth mask (``scipy.ndimage.label``), labelled per case.
Inputs follow :mod:`monai_simsid.metrics.voxel`: one array/tensor or a list/tuple with one per case, and an
optional region mask restricting the evaluation (lesion voxels outside it are ignored too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from ._utils import (
    MetricResult,
    SortedCurve,
    as_cases,
    binarize,
    check_scores,
    prepare_voxels,
    sorted_curve,
    spacing_tuple,
    structure_for,
    undefined,
    validate_threshold,
)

__all__ = ["LesionDetectionResult", "compute_aupro", "compute_lesion_detection_rate"]


def aupro_from_curve(curve: SortedCurve, n_components: int, max_fpr: float) -> MetricResult:
    """Normalised area under the PRO(FPR) curve up to ``max_fpr`` (MVTec AD integration scheme)."""
    if n_components == 0:
        return undefined("no lesion component: AUPRO is undefined")
    n_neg = int(curve.fps[-1]) if curve.fps.size else 0
    if n_neg == 0:
        return undefined("no normal voxels: AUPRO is undefined")
    assert curve.pro is not None
    fpr = np.concatenate([[0.0], curve.fps.astype(np.float64) / n_neg])
    pro = np.concatenate([[0.0], curve.pro / n_components])
    ins = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[ins - 1] <= max_fpr < fpr[ins]
    x, y = fpr[:ins], pro[:ins]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)
    if ins < fpr.size and x[-1] < max_fpr:
        y_max = y[-1] + (pro[ins] - y[-1]) * (max_fpr - x[-1]) / (fpr[ins] - x[-1])
        area += 0.5 * (y[-1] + y_max) * (max_fpr - x[-1])
    return MetricResult(area / max_fpr)


def _equivalent_diameter(volume: float, ndim: int) -> float:
    """Diameter of the ball (3D), disc (2D) or segment (1D) of the given volume."""
    if ndim == 3:
        return float((6.0 * volume / np.pi) ** (1.0 / 3.0))
    if ndim == 2:
        return float(2.0 * np.sqrt(volume / np.pi))
    return float(volume)


def _check_max_fpr(max_fpr: float) -> float:
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
    return max_fpr


def compute_aupro(
    anomaly_map: Any, label: Any, mask: Any = None, max_fpr: float = 0.3, connectivity: int | None = None
) -> MetricResult:
    """Area under the per-region-overlap (PRO) curve up to ``max_fpr``, normalised to [0, 1] (MVTec AD).

    For a threshold ``t``, PRO is the mean over all lesion components ``C_k`` (of all cases) of
    ``|{score >= t} ∩ C_k| / |C_k|`` and FPR is the fraction of normal voxels with ``score >= t``. The curve is
    computed exactly at every distinct score, integrated with the trapezoidal rule from FPR 0 to ``max_fpr``
    (linear interpolation at ``max_fpr``) and divided by ``max_fpr``, so a perfect map scores 1.

    Args:
        anomaly_map: anomaly map(s), one array/tensor or a list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        mask: optional region mask(s); only voxels inside are evaluated.
        max_fpr: upper FPR integration limit in (0, 1], 0.3 as in MVTec AD.
        connectivity: ``scipy.ndimage.generate_binary_structure`` connectivity (``None``: full, 26 in 3D).

    Returns:
        :class:`MetricResult`; ``None`` (with a reason) without lesion components or without normal voxels.

    Raises:
        ValueError: on inconsistent shapes, NaN scores or invalid ``max_fpr`` / ``connectivity``.
    """
    max_fpr = _check_max_fpr(max_fpr)
    s, y, w, k = prepare_voxels(anomaly_map, label, mask, with_weights=True, connectivity=connectivity)
    return aupro_from_curve(sorted_curve(s, y, w), k, max_fpr)


class LesionDetectionResult(NamedTuple):
    """Lesion-wise detection outcome.

    Attributes:
        value: fraction of ground-truth lesions detected, or ``None``.
        reason: why ``value`` is undefined, or ``None``.
        n_detected: number of detected lesions.
        n_lesions: number of ground-truth lesions (connected components, all cases).
        n_false_positive_components: predicted components touching no lesion.
        lesions: one record per lesion (see :func:`compute_lesion_detection_rate`).
    """

    value: float | None
    reason: str | None
    n_detected: int
    n_lesions: int
    n_false_positive_components: int
    lesions: list[dict]


def compute_lesion_detection_rate(
    prediction: Any,
    label: Any,
    mask: Any = None,
    threshold: float | None = None,
    min_overlap_fraction: float = 0.0,
    spacing: float | Sequence[float] | None = None,
    connectivity: int | None = None,
    inclusive: bool = True,
) -> LesionDetectionResult:
    """Fraction of ground-truth lesions hit by the predicted segmentation, with one record per lesion.

    A lesion (connected component of the lesion mask) is detected when at least one predicted voxel overlaps
    it and the overlapping fraction of its voxels is ``>= min_overlap_fraction``.

    Each record in ``lesions`` is a JSON-serialisable dict with keys ``case`` (case index), ``lesion``
    (component id within the case), ``n_voxels``, ``volume`` (``n_voxels`` times the voxel volume),
    ``equivalent_diameter`` (diameter of the sphere of the same volume), ``extent`` (largest bounding-box side,
    same unit as ``spacing``), ``centroid`` (voxel coordinates), ``overlap_voxels``, ``overlap_fraction``,
    ``detected`` and, when ``threshold`` is given, ``max_score`` (maximal anomaly score inside the lesion) - so a
    benchmark can bin detection by lesion diameter.

    Args:
        prediction: binary predicted mask(s), or anomaly map(s) when ``threshold`` is given; one array/tensor or a
            list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        mask: optional region mask(s); predictions and lesions outside are ignored.
        threshold: if given, ``prediction`` is an anomaly map thresholded at ``>= threshold``.
        min_overlap_fraction: minimal fraction of a lesion's voxels that must be predicted, in [0, 1]
            (0: a single voxel suffices).
        spacing: voxel spacing (one value or one per axis, e.g. in mm) for volumes and diameters; ``None``: voxels.
        connectivity: component connectivity (``None``: full, 26 in 3D).
        inclusive: with ``threshold``, ``score >= threshold`` (default) or, if False, ``score > threshold``.

    Returns:
        :class:`LesionDetectionResult`; the rate is ``None`` (with a reason) when there is no lesion.

    Raises:
        ValueError: on inconsistent shapes or invalid arguments.
    """
    if not 0.0 <= float(min_overlap_fraction) <= 1.0:
        raise ValueError(f"min_overlap_fraction must be in [0, 1], got {min_overlap_fraction}.")
    t = None if threshold is None else validate_threshold(threshold)
    preds, labels = as_cases(prediction), as_cases(label)
    masks: list[np.ndarray | None] = [None] * len(preds) if mask is None else list(as_cases(mask))
    if not (len(preds) == len(labels) == len(masks)):
        raise ValueError("prediction, label and mask must have the same number of cases.")
    records: list[dict] = []
    n_fp = 0
    for ci, (p, y, r) in enumerate(zip(preds, labels, masks)):
        y = binarize(y)
        scores = None
        if t is not None:
            scores = check_scores(p, "prediction")
            p = scores >= t if inclusive else scores > t
        else:
            p = binarize(p)
        if p.shape != y.shape:
            raise ValueError(f"case {ci}: prediction shape {p.shape} differs from label shape {y.shape}.")
        if r is not None:
            r = binarize(r)
            if r.shape != y.shape:
                raise ValueError(f"case {ci}: region mask shape {r.shape} differs from label shape {y.shape}.")
            y, p = y & r, p & r
        structure = structure_for(y.ndim, connectivity)
        sp = spacing_tuple(spacing, y.ndim)
        voxel_volume = float(np.prod(sp))
        comps, n = ndimage.label(y, structure=structure)
        pred_comps, n_pred = ndimage.label(p, structure=structure)
        hit_pred = np.unique(pred_comps[p & y])
        n_fp += int(n_pred - np.count_nonzero(hit_pred))
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)[1:]
        overlaps = np.bincount(comps[p], minlength=n + 1)[1:]
        centroids = ndimage.center_of_mass(y, comps, index)
        boxes = ndimage.find_objects(comps)
        max_scores = ndimage.maximum(scores, comps, index) if scores is not None else None
        for k in range(n):
            size, ov = int(sizes[k]), int(overlaps[k])
            frac = ov / size
            volume = size * voxel_volume
            extent = max((sl.stop - sl.start) * sp[d] for d, sl in enumerate(boxes[k])) if boxes[k] else 0.0
            rec = {
                "case": ci,
                "lesion": k + 1,
                "n_voxels": size,
                "volume": volume,
                "equivalent_diameter": _equivalent_diameter(volume, y.ndim),
                "extent": float(extent),
                "centroid": [float(c) for c in np.atleast_1d(centroids[k])],
                "overlap_voxels": ov,
                "overlap_fraction": float(frac),
                "detected": bool(ov >= 1 and frac >= min_overlap_fraction),
            }
            if max_scores is not None:
                rec["max_score"] = float(np.atleast_1d(max_scores)[k])
            records.append(rec)
    n_lesions = len(records)
    n_det = sum(r["detected"] for r in records)
    if n_lesions == 0:
        return LesionDetectionResult(None, "no lesion in the ground truth: detection rate is undefined", 0, 0, n_fp, [])
    return LesionDetectionResult(n_det / n_lesions, None, n_det, n_lesions, n_fp, records)
