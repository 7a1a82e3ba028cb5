"""Voxel-level anomaly-segmentation metrics: AUROC, AP and Dice, pooled over all voxels of all cases.

All functions take an anomaly map and a lesion mask, either one array/tensor or a list/tuple of them (one per
case, shapes may differ between cases), and an optional region mask (e.g. body or lung) restricting the
evaluation to its voxels. Lesion and region masks are boolean or numeric (binarised at 0.5). The computation
is exact and sort-based (no binning, no subsampling), with float64 accumulation and tied scores grouped like
scikit-learn, so tens of millions of voxels are handled in a few seconds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._utils import (
    MetricResult,
    SortedCurve,
    ap_from_curve,
    auroc_from_curve,
    prepare_voxels,
    sorted_curve,
    undefined,
    validate_threshold,
)

__all__ = [
    "BestDiceResult",
    "compute_best_dice",
    "compute_dice_at_threshold",
    "compute_voxel_ap",
    "compute_voxel_auroc",
]


def compute_voxel_auroc(anomaly_map: Any, label: Any, mask: Any = None) -> MetricResult:
    """Voxel-level AUROC (equal to ``sklearn.metrics.roc_auc_score`` on the flattened, masked voxels).

    Args:
        anomaly_map: anomaly map(s), one array/tensor or a list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        mask: optional region mask(s); only voxels inside are evaluated.

    Returns:
        :class:`MetricResult`; ``None`` (with a reason) without lesion or without normal voxels.

    Raises:
        ValueError: on inconsistent shapes or NaN scores.
    """
    s, y, _, _ = prepare_voxels(anomaly_map, label, mask)
    return auroc_from_curve(sorted_curve(s, y))


def compute_voxel_ap(anomaly_map: Any, label: Any, mask: Any = None) -> MetricResult:
    """Voxel-level average precision (``sklearn.metrics.average_precision_score`` on the masked voxels).

    Args:
        anomaly_map: anomaly map(s), one array/tensor or a list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        mask: optional region mask(s); only voxels inside are evaluated.

    Returns:
        :class:`MetricResult`; ``None`` (with a reason) without lesion voxels.

    Raises:
        ValueError: on inconsistent shapes or NaN scores.
    """
    s, y, _, _ = prepare_voxels(anomaly_map, label, mask)
    return ap_from_curve(sorted_curve(s, y))


class BestDiceResult(NamedTuple):
    """Best Dice over all thresholds.

    Attributes:
        value: the maximal Dice, or ``None``.
        reason: why ``value`` is undefined, or ``None``.
        threshold: the (oracle) threshold reaching it: voxels with ``score >= threshold`` are predicted.
    """

    value: float | None
    reason: str | None
    threshold: float | None


def best_dice_from_curve(curve: SortedCurve) -> BestDiceResult:
    """Maximal pooled Dice ``2 TP / (TP + FP + P)`` over the curve's thresholds."""
    if curve.tps.size == 0 or curve.tps[-1] == 0:
        return BestDiceResult(None, "empty lesion mask: Dice is undefined", None)
    tps = curve.tps.astype(np.float64)
    dice = 2.0 * tps / (tps + curve.fps + tps[-1])
    i = int(np.argmax(dice))
    return BestDiceResult(float(dice[i]), None, float(curve.thresholds[i]))


def compute_best_dice(anomaly_map: Any, label: Any, mask: Any = None) -> BestDiceResult:
    """Best achievable Dice over all thresholds of the anomaly map (``⌈Dice⌉``, Baur et al. 2021).

    Warning:
        This is an **oracle** metric: the threshold is chosen using the ground-truth lesion masks of the evaluation
        data, so it is an upper bound of what a deployable method reaches. Report :func:`compute_dice_at_threshold`
        with a threshold estimated on normal data alongside it.

    The Dice is pooled over all voxels of all cases (one global threshold), not averaged per case. Every distinct
    score is tried exactly; ties move together.

    Args:
        anomaly_map: anomaly map(s), one array/tensor or a list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        mask: optional region mask(s); only voxels inside are evaluated.

    Returns:
        :class:`BestDiceResult` with the Dice and the threshold (``score >= threshold``); ``None`` values
        (with a reason) when the lesion mask is empty.

    Raises:
        ValueError: on inconsistent shapes or NaN scores.
    """
    s, y, _, _ = prepare_voxels(anomaly_map, label, mask)
    return best_dice_from_curve(sorted_curve(s, y))


def compute_dice_at_threshold(
    anomaly_map: Any, label: Any, threshold: float, mask: Any = None, inclusive: bool = True
) -> MetricResult:
    """Pooled Dice of the segmentation ``anomaly_map >= threshold`` against the lesion mask.

    Args:
        anomaly_map: anomaly map(s), one array/tensor or a list/tuple with one per case.
        label: lesion mask(s) with the same structure and shapes.
        threshold: decision threshold, normally derived from normal data (not from these labels).
        mask: optional region mask(s); only voxels inside are evaluated.
        inclusive: predict ``score >= threshold`` (default) or, if False, ``score > threshold``.

    Returns:
        :class:`MetricResult`; ``None`` (with a reason) when the lesion mask is empty (like MONAI's
        ``DiceMetric(ignore_empty=True)``).

    Raises:
        ValueError: on inconsistent shapes, NaN scores or a non-numeric threshold.
    """
    t = validate_threshold(threshold)
    s, y, _, _ = prepare_voxels(anomaly_map, label, mask)
    return dice_from_voxels(s, y, t, inclusive)


def dice_from_voxels(s: np.ndarray, y: np.ndarray, threshold: float, inclusive: bool = True) -> MetricResult:
    """Dice of ``s >= threshold`` (or ``>``) against boolean ``y``."""
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return undefined("empty lesion mask: Dice is undefined")
    pred = s >= threshold if inclusive else s > threshold
    tp = int(np.count_nonzero(pred & y))
    return MetricResult(2.0 * tp / (int(np.count_nonzero(pred)) + n_pos))
