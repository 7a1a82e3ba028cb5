"""Cumulative (iteration-wise) versions of the anomaly metrics, following ``monai.metrics.ROCAUCMetric``.

Typical use::

    metric = VoxelAUROCMetric()
    for batch in loader:
        metric(y_pred=anomaly_map, y=lesion_mask, mask=body_mask)  # batch-first or lists of channel-first
    result = metric.aggregate()  # MetricResult(value, reason)
    metric.reset()

Unlike MONAI's ``Cumulative``, each iteration is buffered as one flat chunk (not split per voxel) so that tens of
millions of voxels per scan can be accumulated; chunks are concatenated (and gathered across distributed ranks)
at :meth:`aggregate`. Voxel metrics keep every voxel in memory (scores as float32, labels as bool): pass a region
mask to keep only the relevant voxels.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import evenly_divisible_all_gather

from ._utils import MetricResult, ap_from_curve, auroc_from_curve, sorted_curve, to_numpy, validate_threshold
from .sample import F1Result, compute_sample_f1
from .voxel import BestDiceResult, best_dice_from_curve

__all__ = [
    "SampleAPMetric",
    "SampleAUROCMetric",
    "SampleF1Metric",
    "VoxelAPMetric",
    "VoxelAUROCMetric",
    "VoxelBestDiceMetric",
]


class _ChunkedCumulativeMetric(CumulativeIterationMetric):
    """CumulativeIterationMetric that buffers each iteration's flat 1D tensors as whole chunks."""

    def extend(self, *data: Any) -> None:
        if self._buffers is None:
            self._buffers = [[] for _ in data]
        for b, d in zip(self._buffers, data):
            b.append(torch.as_tensor(d).reshape(-1))
        self._synced = False

    def _sync(self) -> None:
        if self._synced or self._buffers is None:
            return
        self._synced_tensors = [evenly_divisible_all_gather(torch.cat(b, dim=0), concat=True) for b in self._buffers]
        self._synced = True

    def get_buffer(self):  # type: ignore[override]
        """The concatenated buffers (no copy), or ``None`` before the first iteration."""
        self._sync()
        if self._synced_tensors is None:
            return None
        return self._synced_tensors[0] if len(self._synced_tensors) == 1 else self._synced_tensors

    def _numpy_buffers(self):
        buf = self.get_buffer()
        if buf is None:
            return None
        scores, labels = buf
        return to_numpy(scores), to_numpy(labels).astype(bool)


class _SampleMetric(_ChunkedCumulativeMetric):
    """Buffers one score and one binary label per sample."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any):  # type: ignore
        if y is None:
            raise ValueError("y (the binary sample labels) is required.")
        b = y_pred.shape[0] if y_pred.ndim else 1
        scores, labels = y_pred.reshape(b, -1), y.reshape(b, -1)
        if scores.shape[1] != 1 or labels.shape[1] != 1:
            raise ValueError(
                f"expected one score and one label per sample, got y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)}."
            )
        if not torch.all((labels == 0) | (labels == 1)):
            raise ValueError("y must contain only 0 and 1.")
        scores = scores.reshape(-1)
        if not scores.is_floating_point():
            scores = scores.double()
        if torch.isnan(scores).any():
            raise ValueError("y_pred contains NaN values.")
        return scores, labels.reshape(-1).bool()


class _VoxelMetric(_ChunkedCumulativeMetric):
    """Buffers the (optionally region-masked) voxels of anomaly maps ``y_pred`` and lesion masks ``y``.

    ``__call__(y_pred, y, mask=None)``: ``y_pred`` and ``y`` are batch-first tensors of equal shape or lists of
    channel-first tensors; the optional region ``mask`` has the same structure and must broadcast to ``y_pred``.
    Lesion and region masks are boolean or numeric (binarised at 0.5).
    """

    def _compute_list(self, y_pred, y=None, mask=None, **kwargs: Any):  # type: ignore[override]
        if y is None:
            raise ValueError("y (the lesion masks) is required.")
        if not isinstance(y_pred, (list, tuple)):
            y_pred = list(y_pred)
        if not isinstance(y, (list, tuple)):
            y = list(y)
        if mask is None:
            masks: list = [None] * len(y_pred)
        elif isinstance(mask, (list, tuple)):
            masks = list(mask)
        else:
            masks = list(mask)
        if not len(y_pred) == len(y) == len(masks):
            raise ValueError("y_pred, y and mask must have the same number of items.")
        rets = [
            self._compute_tensor(
                torch.as_tensor(p).unsqueeze(0),
                torch.as_tensor(t).unsqueeze(0),
                None if m is None else torch.as_tensor(m).unsqueeze(0),
            )
            for p, t, m in zip(y_pred, y, masks)
        ]
        return [torch.cat(r, dim=0) for r in zip(*rets)]

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: Any = None, **kwargs: Any
    ):
        if y is None:
            raise ValueError("y (the lesion masks) is required.")
        if isinstance(mask, (list, tuple)):
            return self._compute_list(list(y_pred), list(y), mask)
        y_pred = y_pred.detach()
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred shape {tuple(y_pred.shape)} differs from y shape {tuple(y.shape)}.")
        labels = y.detach().bool() if y.dtype == torch.bool else y.detach() > 0.5
        scores = y_pred if y_pred.is_floating_point() else y_pred.double()
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        if mask is not None:
            m = torch.as_tensor(mask, device=y_pred.device)
            m = m.bool() if m.dtype == torch.bool else m > 0.5
            try:
                m = torch.broadcast_to(m, y_pred.shape)
            except RuntimeError as e:
                raise ValueError(f"mask shape {tuple(m.shape)} does not broadcast to {tuple(y_pred.shape)}.") from e
            scores, labels = scores[m], labels[m]
        scores, labels = scores.reshape(-1).cpu(), labels.reshape(-1).cpu()
        if torch.isnan(scores).any():
            raise ValueError("y_pred contains NaN values.")
        return scores, labels


class SampleAUROCMetric(_SampleMetric):
    """Accumulated sample-level AUROC (:func:`~monai_simsid.metrics.compute_sample_auroc`).

    ``__call__(y_pred, y)`` with one score and one binary label per sample; :meth:`aggregate` returns a
    :class:`~monai_simsid.metrics.MetricResult`.
    """

    def aggregate(self) -> MetricResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return MetricResult(None, "no data accumulated")
        return auroc_from_curve(sorted_curve(*buf))


class SampleAPMetric(_SampleMetric):
    """Accumulated sample-level average precision (:func:`~monai_simsid.metrics.compute_sample_ap`)."""

    def aggregate(self) -> MetricResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return MetricResult(None, "no data accumulated")
        return ap_from_curve(sorted_curve(*buf))


class SampleF1Metric(_SampleMetric):
    """Accumulated sample-level F1 at a fixed threshold (:func:`~monai_simsid.metrics.compute_sample_f1`).

    Args:
        threshold: decision threshold (from normal data).
        inclusive: predict ``score >= threshold`` (default) or ``score > threshold``.
    """

    def __init__(self, threshold: float, inclusive: bool = True) -> None:
        super().__init__()
        self.threshold = validate_threshold(threshold)
        self.inclusive = inclusive

    def aggregate(self) -> F1Result | MetricResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return MetricResult(None, "no data accumulated")
        return compute_sample_f1(buf[0], buf[1], self.threshold, self.inclusive)


class VoxelAUROCMetric(_VoxelMetric):
    """Accumulated voxel-level AUROC (:func:`~monai_simsid.metrics.compute_voxel_auroc`), pooled over all voxels."""

    def aggregate(self) -> MetricResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return MetricResult(None, "no data accumulated")
        return auroc_from_curve(sorted_curve(*buf))


class VoxelAPMetric(_VoxelMetric):
    """Accumulated voxel-level average precision (:func:`~monai_simsid.metrics.compute_voxel_ap`)."""

    def aggregate(self) -> MetricResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return MetricResult(None, "no data accumulated")
        return ap_from_curve(sorted_curve(*buf))


class VoxelBestDiceMetric(_VoxelMetric):
    """Accumulated oracle best Dice (:func:`~monai_simsid.metrics.compute_best_dice`); returns value and threshold."""

    def aggregate(self) -> BestDiceResult:  # type: ignore[override]
        buf = self._numpy_buffers()
        if buf is None:
            return BestDiceResult(None, "no data accumulated", None)
        return best_dice_from_curve(sorted_curve(*buf))
