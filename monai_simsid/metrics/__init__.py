"""Anomaly-detection evaluation metrics (sample, voxel and region level).

Every ``compute_*`` function returns a named tuple whose first two fields are ``value`` (``None`` when the metric
is undefined for the data, e.g. no positive case) and ``reason``; :func:`compute_all_metrics` gathers them into a
JSON-serialisable dict. The ``*Metric`` classes accumulate over iterations (MONAI ``CumulativeIterationMetric``).
"""

from __future__ import annotations

from ._utils import MetricResult
from .anomaly import compute_all_metrics
from .cumulative import (
    SampleAPMetric,
    SampleAUROCMetric,
    SampleF1Metric,
    VoxelAPMetric,
    VoxelAUROCMetric,
    VoxelBestDiceMetric,
)
from .region import LesionDetectionResult, compute_aupro, compute_lesion_detection_rate
from .sample import F1Result, compute_sample_ap, compute_sample_auroc, compute_sample_f1
from .voxel import BestDiceResult, compute_best_dice, compute_dice_at_threshold, compute_voxel_ap, compute_voxel_auroc

__all__ = [
    "BestDiceResult",
    "F1Result",
    "LesionDetectionResult",
    "MetricResult",
    "SampleAPMetric",
    "SampleAUROCMetric",
    "SampleF1Metric",
    "VoxelAPMetric",
    "VoxelAUROCMetric",
    "VoxelBestDiceMetric",
    "compute_all_metrics",
    "compute_aupro",
    "compute_best_dice",
    "compute_dice_at_threshold",
    "compute_lesion_detection_rate",
    "compute_sample_ap",
    "compute_sample_auroc",
    "compute_sample_f1",
    "compute_voxel_ap",
    "compute_voxel_auroc",
]
