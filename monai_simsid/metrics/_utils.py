"""Shared helpers of the anomaly-detection metrics: result type, input conversion and sorted score curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.utils import convert_data_type
from scipy import ndimage

__all__ = ["MetricResult", "to_numpy"]


class MetricResult(NamedTuple):
    """A metric value that may be undefined.

    Attributes:
        value: the metric value, or ``None`` when the metric is undefined for the given data.
        reason: why the metric is undefined (``None`` when ``value`` is defined).
    """

    value: float | None
    reason: str | None = None


def undefined(reason: str) -> MetricResult:
    """Shorthand for an undefined :class:`MetricResult`."""
    return MetricResult(None, reason)


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor (incl. MetaTensor) or nested sequence into a numpy array."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        return convert_data_type(x.detach().cpu(), output_type=np.ndarray)[0]
    return np.asarray(x)


def as_cases(x: Any) -> list[np.ndarray]:
    """Treat a list/tuple as one array per case, anything else as a single case."""
    if isinstance(x, (list, tuple)):
        return [to_numpy(c) for c in x]
    return [to_numpy(x)]


def check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Return ``scores`` as a floating array, raising ValueError on NaN."""
    if scores.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {scores.dtype}.")
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if scores.size and np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN values.")
    return scores


def binarize(x: np.ndarray) -> np.ndarray:
    """Boolean view of a mask: boolean masks are kept, numeric masks are thresholded at 0.5."""
    if x.dtype == bool:
        return x
    if x.dtype.kind not in "fiu":
        raise ValueError(f"masks must be boolean or numeric, got dtype {x.dtype}.")
    return x > 0.5


def check_binary_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate per-sample labels in {0, 1} (or boolean) and return them as a boolean array."""
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be boolean or numeric, got dtype {labels.dtype}.")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name} must contain only 0 and 1.")
    return labels == 1


def prepare_samples(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and validate one score and one binary label per sample."""
    s = check_scores(to_numpy(scores).reshape(-1), "scores")
    y = check_binary_labels(to_numpy(labels).reshape(-1))
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same number of samples, got {s.size} and {y.size}.")
    return s, y


def structure_for(ndim: int, connectivity: int | None) -> np.ndarray:
    """Binary structuring element for ``scipy.ndimage.label`` (``None``: full connectivity)."""
    conn = ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= max(ndim, 1):
        raise ValueError(f"connectivity must be in [1, {ndim}] for {ndim}D masks, got {connectivity}.")
    return ndimage.generate_binary_structure(ndim, conn)


def prepare_voxels(
    anomaly_map: Any,
    label: Any,
    mask: Any = None,
    with_weights: bool = False,
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Flatten anomaly maps and lesion masks (optionally restricted to a region mask) over all cases.

    Args:
        anomaly_map: one array/tensor, or a list/tuple of them (one per case).
        label: the lesion mask(s), same structure and shapes as ``anomaly_map``.
        mask: optional region mask(s) (e.g. body or lung); voxels outside are ignored.
        with_weights: also compute per-voxel region-overlap weights ``1 / |component|`` (0 for negatives),
            with connected components of the (region-restricted) lesion mask labelled per case.
        connectivity: connectivity of the component labelling (``None``: full, e.g. 26 in 3D).

    Returns:
        scores, boolean labels, weights (or ``None``) and the number of lesion components (0 without weights).
    """
    maps, labels = as_cases(anomaly_map), as_cases(label)
    masks: list[np.ndarray | None] = [None] * len(maps) if mask is None else list(as_cases(mask))
    if not (len(maps) == len(labels) == len(masks)):
        raise ValueError(
            f"anomaly_map, label and mask must have the same number of cases, got {len(maps)}, {len(labels)}"
            f" and {len(masks)}."
        )
    s_all, y_all, w_all, n_comp = [], [], [], 0
    for i, (m, y, r) in enumerate(zip(maps, labels, masks)):
        m = check_scores(m, "anomaly_map")
        y = binarize(y)
        if m.shape != y.shape:
            raise ValueError(f"case {i}: anomaly_map shape {m.shape} differs from label shape {y.shape}.")
        if r is not None:
            r = binarize(r)
            if r.shape != m.shape:
                raise ValueError(f"case {i}: region mask shape {r.shape} differs from anomaly_map shape {m.shape}.")
            y = y & r
        if with_weights:
            comps, n = ndimage.label(y, structure=structure_for(y.ndim, connectivity))
            sizes = np.bincount(comps.ravel(), minlength=n + 1).astype(np.float64)
            inv = np.zeros_like(sizes)
            inv[1:] = 1.0 / np.maximum(sizes[1:], 1.0)
            w = inv[comps]
            n_comp += int(n)
        if r is not None:
            s_all.append(m[r])
            y_all.append(y[r])
            if with_weights:
                w_all.append(w[r])
        else:
            s_all.append(m.reshape(-1))
            y_all.append(y.reshape(-1))
            if with_weights:
                w_all.append(w.reshape(-1))
    scores = s_all[0] if len(s_all) == 1 else np.concatenate(s_all)
    labels_flat = y_all[0] if len(y_all) == 1 else np.concatenate(y_all)
    weights = None
    if with_weights:
        weights = w_all[0] if len(w_all) == 1 else np.concatenate(w_all)
    return scores, labels_flat, weights, n_comp


class SortedCurve(NamedTuple):
    """Cumulative counts at each distinct score, scores visited in decreasing order.

    Attributes:
        thresholds: distinct scores (decreasing); threshold ``t`` predicts ``score >= t`` as anomalous.
        tps: number of positives with ``score >= t`` (int64).
        fps: number of negatives with ``score >= t`` (int64).
        pro: cumulative sum of the extra per-voxel weights (float64), or ``None``.
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    pro: np.ndarray | None


def sorted_curve(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> SortedCurve:
    """Exact sort-based binary classification curve, with ties grouped like ``sklearn``'s ``_binary_clf_curve``."""
    order = np.argsort(scores)[::-1]
    s = scores[order]
    idx = np.flatnonzero(s[1:] != s[:-1])
    idx = np.append(idx, s.size - 1)
    tps = np.cumsum(labels[order], dtype=np.int64)[idx]
    fps = idx.astype(np.int64) + 1 - tps
    pro = None
    if weights is not None:
        pro = np.cumsum(weights[order], dtype=np.float64)[idx]
    return SortedCurve(s[idx], tps, fps, pro)


def auroc_from_curve(curve: SortedCurve) -> MetricResult:
    """Area under the ROC curve (trapezoidal, float64), ``None`` without positives or negatives."""
    if curve.tps.size == 0:
        return undefined("no samples")
    p, n = int(curve.tps[-1]), int(curve.fps[-1])
    if p == 0:
        return undefined("no positive (anomalous) samples: AUROC is undefined")
    if n == 0:
        return undefined("no negative (normal) samples: AUROC is undefined")
    tpr = np.concatenate([[0.0], curve.tps.astype(np.float64) / p])
    fpr = np.concatenate([[0.0], curve.fps.astype(np.float64) / n])
    return MetricResult(float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0))


def ap_from_curve(curve: SortedCurve) -> MetricResult:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` (``sklearn.metrics.average_precision_score``)."""
    if curve.tps.size == 0:
        return undefined("no samples")
    p = int(curve.tps[-1])
    if p == 0:
        return undefined("no positive (anomalous) samples: average precision is undefined")
    tps = curve.tps.astype(np.float64)
    precision = tps / (tps + curve.fps)
    d_recall = np.diff(np.concatenate([[0.0], tps])) / p
    return MetricResult(float(np.sum(d_recall * precision)))


def validate_threshold(threshold: Any, name: str = "threshold") -> float:
    """Return ``threshold`` as a finite float, raising ValueError otherwise."""
    try:
        t = float(threshold)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number, got {threshold!r}.") from e
    if np.isnan(t):
        raise ValueError(f"{name} must not be NaN.")
    return t


def spacing_tuple(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel spacing as one positive float per spatial dimension (``None``: 1, i.e. voxel units)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(v) for v in spacing)  # type: ignore
    if len(sp) != ndim or any(v <= 0 for v in sp):
        raise ValueError(f"spacing must be {ndim} positive values, got {spacing!r}.")
    return sp
