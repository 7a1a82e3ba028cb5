"""Sample-level (one score per scan) anomaly-detection metrics."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._utils import (
    MetricResult,
    ap_from_curve,
    auroc_from_curve,
    prepare_samples,
    sorted_curve,
    undefined,
    validate_threshold,
)

__all__ = ["F1Result", "compute_sample_ap", "compute_sample_auroc", "compute_sample_f1"]


def compute_sample_auroc(scores: Any, labels: Any) -> MetricResult:
    """Area under the ROC curve of per-scan anomaly scores (same value as ``sklearn.metrics.roc_auc_score``).

    Args:
        scores: one anomaly score per sample (higher = more anomalous), numpy array or tensor of any shape.
        labels: one binary label per sample (1 = anomalous), same number of elements as ``scores``.

    Returns:
        :class:`MetricResult`; the value is ``None`` (with a reason) without positive or negative samples.

    Raises:
        ValueError: on mismatched sizes, non-binary labels or NaN scores.
    """
    s, y = prepare_samples(scores, labels)
    return auroc_from_curve(sorted_curve(s, y))


def compute_sample_ap(scores: Any, labels: Any) -> MetricResult:
    """Average precision of per-scan anomaly scores (same definition as ``sklearn.metrics.average_precision_score``).

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order (no interpolation).

    Args:
        scores: one anomaly score per sample (higher = more anomalous).
        labels: one binary label per sample (1 = anomalous).

    Returns:
        :class:`MetricResult`; the value is ``None`` (with a reason) without positive samples.

    Raises:
        ValueError: on mismatched sizes, non-binary labels or NaN scores.
    """
    s, y = prepare_samples(scores, labels)
    return ap_from_curve(sorted_curve(s, y))


class F1Result(NamedTuple):
    """F1 score at a fixed threshold, with precision, recall and the confusion counts.

    Attributes:
        value: the F1 score ``2 TP / (2 TP + FP + FN)``, or ``None``.
        reason: why ``value`` is undefined, or ``None``.
        precision: ``TP / (TP + FP)`` (undefined without positive predictions).
        recall: ``TP / (TP + FN)`` (undefined without positive samples).
        threshold: the threshold that was applied.
        tp: true positives.
        fp: false positives.
        fn: false negatives.
        tn: true negatives.
    """

    value: float | None
    reason: str | None
    precision: MetricResult
    recall: MetricResult
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int


def compute_sample_f1(scores: Any, labels: Any, threshold: float, inclusive: bool = True) -> F1Result:
    """F1 score, precision and recall of per-scan decisions ``score >= threshold``.

    The threshold must be chosen without the evaluation labels, typically from the scores of held-out *normal*
    scans (e.g. their 95th percentile). F1 equals ``sklearn.metrics.f1_score`` whenever it is defined here.

    Args:
        scores: one anomaly score per sample (higher = more anomalous).
        labels: one binary label per sample (1 = anomalous).
        threshold: decision threshold.
        inclusive: predict anomalous when ``score >= threshold`` (default) or, if False, ``score > threshold``.

    Returns:
        :class:`F1Result`. F1 and recall are ``None`` without positive samples; precision is ``None`` without
        positive predictions (F1 is then 0 when positives exist).

    Raises:
        ValueError: on mismatched sizes, non-binary labels, NaN scores or a non-numeric threshold.
    """
    t = validate_threshold(threshold)
    s, y = prepare_samples(scores, labels)
    pred = s >= t if inclusive else s > t
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(np.count_nonzero(~pred & ~y))
    precision = (
        MetricResult(tp / (tp + fp)) if tp + fp > 0 else undefined("no positive predictions: precision is undefined")
    )
    if tp + fn == 0:
        recall = undefined("no positive (anomalous) samples: recall is undefined")
        f1: MetricResult = undefined("no positive (anomalous) samples: F1 is undefined")
    else:
        recall = MetricResult(tp / (tp + fn))
        f1 = MetricResult(2.0 * tp / (2 * tp + fp + fn))
    return F1Result(f1.value, f1.reason, precision, recall, t, tp, fp, fn, tn)
