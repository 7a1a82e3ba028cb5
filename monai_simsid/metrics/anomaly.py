"""One-call evaluation of an anomaly detector: all sample-, voxel- and region-level metrics as a JSON dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._utils import MetricResult, ap_from_curve, auroc_from_curve, prepare_voxels, sorted_curve
from .region import _check_max_fpr, aupro_from_curve, compute_lesion_detection_rate
from .sample import compute_sample_ap, compute_sample_auroc, compute_sample_f1
from .voxel import best_dice_from_curve, dice_from_voxels

__all__ = ["compute_all_metrics"]

SAMPLE_KEYS = ("sample_auroc", "sample_ap", "sample_f1", "sample_precision", "sample_recall")
VOXEL_KEYS = ("voxel_auroc", "voxel_ap", "best_dice", "dice_at_threshold", "aupro", "lesion_detection_rate")


def _put(out: dict, name: str, result: Any) -> None:
    """Store ``result.value`` under ``name`` and, when undefined, its reason under ``<name>_reason``."""
    value = result.value
    out[name] = None if value is None else float(value)
    if value is None:
        out[f"{name}_reason"] = result.reason


def compute_all_metrics(
    sample_scores: Any = None,
    sample_labels: Any = None,
    sample_threshold: float | None = None,
    anomaly_maps: Any = None,
    lesion_masks: Any = None,
    region_masks: Any = None,
    voxel_threshold: float | None = None,
    max_fpr: float = 0.3,
    min_overlap_fraction: float = 0.0,
    spacing: float | Sequence[float] | None = None,
    connectivity: int | None = None,
    include_lesions: bool = False,
) -> dict:
    """Compute every metric for which inputs are given and return a JSON-serialisable dict.

    The dict always holds the keys ``sample_auroc``, ``sample_ap``, ``sample_f1``, ``sample_precision``,
    ``sample_recall``, ``voxel_auroc``, ``voxel_ap``, ``best_dice`` (oracle), ``best_dice_threshold``,
    ``dice_at_threshold``, ``aupro``, ``lesion_detection_rate``, ``n_lesions`` and ``n_lesions_detected``, plus
    the thresholds that were passed. A metric that is undefined (or lacks its inputs) is ``None`` (JSON ``null``)
    and has a ``"<name>_reason"`` entry. The voxel scores are sorted only once for all curve-based metrics.

    Args:
        sample_scores: one anomaly score per scan.
        sample_labels: one binary label per scan (1 = anomalous).
        sample_threshold: scan-level threshold (from normal data) for F1/precision/recall.
        anomaly_maps: anomaly map(s), one array/tensor or a list/tuple with one per case.
        lesion_masks: lesion mask(s) matching ``anomaly_maps``.
        region_masks: optional region mask(s) (e.g. body or lung) restricting the voxel-level evaluation.
        voxel_threshold: voxel-level threshold (from normal data) for ``dice_at_threshold`` and lesion detection.
        max_fpr: AUPRO integration limit.
        min_overlap_fraction: see :func:`~monai_simsid.metrics.compute_lesion_detection_rate`.
        spacing: voxel spacing for the lesion records.
        connectivity: connectivity of the lesion components (``None``: full).
        include_lesions: also return the per-lesion records under ``"lesions"``.

    Returns:
        the metrics dict.

    Raises:
        ValueError: when only one of a pair of inputs is given or inputs are invalid.
    """
    if (sample_scores is None) != (sample_labels is None):
        raise ValueError("sample_scores and sample_labels must be given together.")
    if (anomaly_maps is None) != (lesion_masks is None):
        raise ValueError("anomaly_maps and lesion_masks must be given together.")
    max_fpr = _check_max_fpr(max_fpr)
    out: dict[str, Any] = {}

    if sample_scores is None:
        for name in SAMPLE_KEYS:
            _put(out, name, MetricResult(None, "no sample scores given"))
    else:
        _put(out, "sample_auroc", compute_sample_auroc(sample_scores, sample_labels))
        _put(out, "sample_ap", compute_sample_ap(sample_scores, sample_labels))
        if sample_threshold is None:
            for name in ("sample_f1", "sample_precision", "sample_recall"):
                _put(out, name, MetricResult(None, "no sample threshold given"))
        else:
            f1 = compute_sample_f1(sample_scores, sample_labels, sample_threshold)
            _put(out, "sample_f1", f1)
            _put(out, "sample_precision", f1.precision)
            _put(out, "sample_recall", f1.recall)
    if sample_threshold is not None:
        out["sample_threshold"] = float(sample_threshold)

    if anomaly_maps is None:
        for name in VOXEL_KEYS:
            _put(out, name, MetricResult(None, "no anomaly maps given"))
        out["best_dice_threshold"] = None
        out["n_lesions"] = out["n_lesions_detected"] = None
    else:
        s, y, w, k = prepare_voxels(anomaly_maps, lesion_masks, region_masks, True, connectivity)
        curve = sorted_curve(s, y, w)
        _put(out, "voxel_auroc", auroc_from_curve(curve))
        _put(out, "voxel_ap", ap_from_curve(curve))
        best = best_dice_from_curve(curve)
        _put(out, "best_dice", best)
        out["best_dice_threshold"] = best.threshold
        _put(out, "aupro", aupro_from_curve(curve, k, max_fpr))
        del curve, w
        if voxel_threshold is None:
            _put(out, "dice_at_threshold", MetricResult(None, "no voxel threshold given"))
            _put(out, "lesion_detection_rate", MetricResult(None, "no voxel threshold given"))
            out["n_lesions"] = k
            out["n_lesions_detected"] = None
        else:
            _put(out, "dice_at_threshold", dice_from_voxels(s, y, float(voxel_threshold)))
            del s, y
            det = compute_lesion_detection_rate(
                anomaly_maps,
                lesion_masks,
                region_masks,
                threshold=voxel_threshold,
                min_overlap_fraction=min_overlap_fraction,
                spacing=spacing,
                connectivity=connectivity,
            )
            _put(out, "lesion_detection_rate", det)
            out["n_lesions"] = det.n_lesions
            out["n_lesions_detected"] = det.n_detected
            out["n_false_positive_components"] = det.n_false_positive_components
            if include_lesions:
                out["lesions"] = det.lesions
        out["max_fpr"] = max_fpr
    if voxel_threshold is not None:
        out["voxel_threshold"] = float(voxel_threshold)
    for key, val in out.items():  # JSON has no NaN/inf
        if isinstance(val, float) and not math.isfinite(val):
            out[key] = None
            out.setdefault(f"{key}_reason", "non-finite value")
    return out
