"""Ignite metric handlers wrapping the anomaly metrics, usable as (key) metrics of MONAI workflows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler

from monai_simsid.metrics import SampleAPMetric, SampleAUROCMetric, VoxelAPMetric, VoxelAUROCMetric
from monai_simsid.metrics.cumulative import _ChunkedCumulativeMetric

__all__ = ["SampleAP", "SampleAUROC", "VoxelAP", "VoxelAUROC"]

logger = logging.getLogger(__name__)


class _AnomalyMetricHandler(IgniteMetricHandler):
    """Handler around a metric whose ``aggregate()`` returns ``(value, reason, ...)``.

    ``compute()`` returns the value as a float, or ``undefined_value`` (default ``None``) with the reason logged
    and kept in :attr:`last_reason`. MONAI workflows skip a ``None`` key metric when tracking the best metric;
    pass e.g. ``undefined_value=0.0`` when a number is needed (checkpoint scoring).
    """

    def __init__(
        self, metric_fn: _ChunkedCumulativeMetric, output_transform: Callable, undefined_value: float | None
    ) -> None:
        self.undefined_value = undefined_value
        self.last_reason: str | None = None
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=False)

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Accumulate ``(y_pred, y)`` (or ``(y_pred, y, mask)`` for voxel metrics) of one iteration."""
        if len(output) != 2:
            raise ValueError(f"output must have length 2 (y_pred, y), got {len(output)}.")
        self.metric_fn(output[0], output[1])

    def compute(self) -> float | None:
        result = self.metric_fn.aggregate()
        self._is_reduced = True
        self.last_reason = result.reason
        if result.value is None:
            logger.warning("%s is undefined: %s", type(self).__name__, result.reason)
            return self.undefined_value
        return float(result.value)


class _VoxelMetricHandler(_AnomalyMetricHandler):
    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Accumulate ``(y_pred, y)`` or ``(y_pred, y, region_mask)`` of one iteration."""
        if len(output) not in (2, 3):
            raise ValueError(f"output must have length 2 (y_pred, y) or 3 (y_pred, y, mask), got {len(output)}.")
        mask = output[2] if len(output) == 3 else None
        self.metric_fn(output[0], output[1], mask=mask)


class SampleAUROC(_AnomalyMetricHandler):
    """Sample-level AUROC accumulated over an epoch (:class:`~monai_simsid.metrics.SampleAUROCMetric`).

    Args:
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``: one anomaly score and
            one binary label per sample, as batch-first tensors or lists of per-sample tensors, e.g.
            ``monai.handlers.from_engine(["score", "label"])``.
        undefined_value: value reported when AUROC is undefined (only one class seen); default ``None``.
    """

    def __init__(self, output_transform: Callable = lambda x: x, undefined_value: float | None = None) -> None:
        super().__init__(SampleAUROCMetric(), output_transform, undefined_value)


class SampleAP(_AnomalyMetricHandler):
    """Sample-level average precision accumulated over an epoch (:class:`~monai_simsid.metrics.SampleAPMetric`).

    Args:
        output_transform: callable extracting ``(y_pred, y)`` (one score and one binary label per sample).
        undefined_value: value reported when AP is undefined (no positive sample); default ``None``.
    """

    def __init__(self, output_transform: Callable = lambda x: x, undefined_value: float | None = None) -> None:
        super().__init__(SampleAPMetric(), output_transform, undefined_value)


class VoxelAUROC(_VoxelMetricHandler):
    """Voxel-level AUROC pooled over all voxels of an epoch (:class:`~monai_simsid.metrics.VoxelAUROCMetric`).

    Args:
        output_transform: callable extracting ``(anomaly_map, lesion_mask)`` or
            ``(anomaly_map, lesion_mask, region_mask)`` from ``engine.state.output``, e.g.
            ``monai.handlers.from_engine(["anomaly_map", "label", "body"])``.
        undefined_value: value reported when AUROC is undefined; default ``None``.
    """

    def __init__(self, output_transform: Callable = lambda x: x, undefined_value: float | None = None) -> None:
        super().__init__(VoxelAUROCMetric(), output_transform, undefined_value)


class VoxelAP(_VoxelMetricHandler):
    """Voxel-level average precision pooled over an epoch (:class:`~monai_simsid.metrics.VoxelAPMetric`).

    Args:
        output_transform: callable extracting ``(anomaly_map, lesion_mask[, region_mask])``.
        undefined_value: value reported when AP is undefined; default ``None``.
    """

    def __init__(self, output_transform: Callable = lambda x: x, undefined_value: float | None = None) -> None:
        super().__init__(VoxelAPMetric(), output_transform, undefined_value)


