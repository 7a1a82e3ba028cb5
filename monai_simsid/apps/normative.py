"""Normative calibration of anomaly maps: per-position statistics of the map on normal scans.

Some structures are bright in every map, normal or not: ribs clipped by the HU window, the chest-wall rim, the
heart border. A voxel threshold shared by the whole scan lets them win. :class:`NormativeMap` stores, for each cell
of a body-normalised grid (the body's bounding box divided into ``grid`` cells, the same frame as the memory's body
regions), the median and the robust spread (1.4826 x MAD) of the raw map of *normal* scans, and turns a raw map into
a robust z-score: ``(map - median(position)) / spread(position)``. The cell statistics are interpolated trilinearly
to every voxel, so the output has no cell edges.

:class:`LungDepthNormativeMap` keys the same statistics by the voxel's signed depth in the closed lung envelope
(:func:`~monai_simsid.apps.descriptor_knn.lung_envelope_depth`, 1 mm bins) instead: the pleural rim, the chest wall
and the mediastinal border lie at the same depth in every chest whatever its shape and size, where a coarse
body-normalised cell mixes them with lung. A dense lesion inside the envelope is then measured against what normal
lungs show at its depth.

Everything comes from normal scans only (the calibration set of training: validation normals, or the training
normals when there are none); test labels are never seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_simsid.apps.descriptor_knn import DEPTH_RANGE_MM, lung_envelope_depth
from monai_simsid.transforms.body.array import body_bbox
from monai_simsid.transforms.intensity.array import hu_from_windows
from monai_simsid.utils.geometry import spacing_from_affine

__all__ = [
    "LungDepthNormativeMap",
    "NormativeMap",
    "affine_spacing",
    "depth_bins",
    "lung_depth_from_windows",
    "normative_from_dict",
    "position_cells",
]

_MAD_TO_SD = 1.4826
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_grid(grid: Sequence[int]) -> tuple[int, ...]:
    g = tuple(int(v) for v in grid)
    if not g or any(v < 1 for v in g):
        raise ValueError(f"grid must hold positive integers, got {tuple(grid)}.")
    return g


def _bbox(body: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of a body mask given as bool, integer or float (> 0.5) values."""
    return body_bbox(body > 0.5 if body.is_floating_point() else body.bool())


def _robust_stats(
    v: np.ndarray, index: np.ndarray, n: int, min_voxels: int, scale_floor: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-bin median and robust spread (1.4826 x MAD) of values ``v`` in bins ``index`` (``[0, n)``), with the global
    ones; a bin with fewer than ``min_voxels`` values keeps the global statistics, and no spread is below
    ``scale_floor`` times the global one."""
    if min_voxels < 1 or not 0 < scale_floor <= 1:
        raise ValueError("min_voxels must be >= 1 and scale_floor in (0, 1].")
    g_med = float(np.median(v))
    g_scale = max(_MAD_TO_SD * float(np.median(np.abs(v - g_med))), float(np.std(v)) * 1e-3, 1e-8)
    median = np.full(n, g_med)
    scale = np.full(n, g_scale)
    order = np.argsort(index, kind="stable")
    sorted_i, sorted_v = index[order], v[order]
    bounds = np.searchsorted(sorted_i, np.arange(n + 1))
    for i in range(n):
        vals = sorted_v[bounds[i] : bounds[i + 1]]
        if vals.size < min_voxels:
            continue
        med = float(np.median(vals))
        median[i] = med
        scale[i] = max(_MAD_TO_SD * float(np.median(np.abs(vals - med))), scale_floor * g_scale)
    return median, scale, g_med, g_scale


def _samples(values: np.ndarray | torch.Tensor, index: np.ndarray | torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(torch.as_tensor(values).float().cpu().numpy(), dtype=np.float64).reshape(-1)
    c = np.asarray(torch.as_tensor(index).cpu().numpy(), dtype=np.int64).reshape(-1)
    if v.size == 0 or v.size != c.size:
        raise ValueError(f"need equal, non-zero numbers of values and bins, got {v.size} and {c.size}.")
    if c.min() < 0 or c.max() >= n:
        raise ValueError(f"bin indices must be in [0, {n}).")
    return v, c


def position_cells(body: torch.Tensor | np.ndarray, grid: Sequence[int]) -> torch.Tensor:
    """Row-major index of the body-normalised cell of every voxel.

    The body's bounding box is divided into ``grid`` equal cells per axis; voxels outside the box take the nearest
    cell. An empty body uses the whole array as its box.

    Args:
        body: spatial mask ``(*S)``.
        grid: cells per axis (``len(grid) == body.ndim``).

    Returns:
        long tensor ``(*S)`` with values in ``[0, prod(grid))``.
    """
    grid = _check_grid(grid)
    body = torch.as_tensor(body)
    if body.ndim != len(grid):
        raise ValueError(f"grid {grid} does not match a {body.ndim}-D body mask.")
    lo, hi = _bbox(body)
    index = torch.zeros((), dtype=torch.long)
    for ax, (n, a, b) in enumerate(zip(grid, lo, hi)):
        coord = torch.arange(body.shape[ax], dtype=torch.float64)
        cell = ((coord - int(a)) / max(int(b) - int(a), 1) * n).floor().long().clamp(0, n - 1)
        shape = [1] * body.ndim
        shape[ax] = -1
        index = index * n + cell.reshape(shape)
    return index.expand(body.shape).contiguous()


class _BinStatistics:
    """Per-bin robust statistics of normal maps and their global fallback (shared by the two normative maps)."""

    median: np.ndarray
    scale: np.ndarray
    global_median: float
    global_scale: float

    def _set_statistics(
        self, median: Sequence[float], scale: Sequence[float], global_median: float, global_scale: float, n: int, what: str
    ) -> None:
        self.median = np.asarray(median, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if self.median.size != n or self.scale.size != n:
            raise ValueError(f"median and scale need {n} entries {what}, got {self.median.size}, {self.scale.size}.")
        if not (np.all(np.isfinite(self.median)) and np.all(self.scale > 0) and global_scale > 0):
            raise ValueError("normative statistics must be finite with positive scales.")
        self.global_median = float(global_median)
        self.global_scale = float(global_scale)

    def _statistics_dict(self) -> dict[str, Any]:
        return {
            "median": [float(v) for v in self.median],
            "scale": [float(v) for v in self.scale],
            "global_median": self.global_median,
            "global_scale": self.global_scale,
        }


class NormativeMap(_BinStatistics):
    """Robust per-position z-score of an anomaly map, from normal scans.

    Args:
        grid: cells per axis of the body-normalised frame.
        median: ``prod(grid)`` per-cell medians of the normal map (row-major).
        scale: ``prod(grid)`` per-cell spreads (> 0).
        global_median, global_scale: the same over all normal body voxels (used for cells without enough normal
            voxels, and for inputs without a body frame, e.g. a small crop).

    Use :meth:`fit` to compute it and :meth:`to_dict` / :meth:`from_dict` to store it in a checkpoint's calibration.
    """

    def __init__(
        self,
        grid: Sequence[int],
        median: Sequence[float],
        scale: Sequence[float],
        global_median: float,
        global_scale: float,
    ) -> None:
        self.grid = _check_grid(grid)
        self._set_statistics(median, scale, global_median, global_scale, int(np.prod(self.grid)), f"for grid {self.grid}")

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        cells: np.ndarray | torch.Tensor,
        grid: Sequence[int],
        min_voxels: int = 200,
        scale_floor: float = 0.25,
    ) -> NormativeMap:
        """Fit from samples of normal map values and their cells (see :func:`position_cells`).

        Args:
            values: raw map values of normal body voxels.
            cells: their cell indices.
            grid: the grid the cells refer to.
            min_voxels: a cell with fewer samples keeps the global statistics.
            scale_floor: a cell's spread is at least this fraction of the global spread (a cell that is nearly
                constant in the normals must not turn small deviations into huge scores).
        """
        grid = _check_grid(grid)
        n = int(np.prod(grid))
        v, c = _samples(values, cells, n)
        return cls(grid, *_robust_stats(v, c, n, min_voxels, scale_floor))

    # ------------------------------------------------------------------ applying
    def fields(self, body: torch.Tensor, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-voxel median and scale ``(*S)`` for a body mask ``(*S)``: the cell grid interpolated over the body box."""
        body = torch.as_tensor(body)
        if body.ndim != len(self.grid):
            raise ValueError(f"normative grid {self.grid} does not match a {body.ndim}-D map.")
        device = body.device if device is None else torch.device(device)
        lo, hi = _bbox(body)
        size = tuple(int(b - a) for a, b in zip(lo, hi))
        stats = torch.as_tensor(np.stack([self.median, self.scale]), dtype=torch.float32, device=device)
        stats = stats.reshape(1, 2, *self.grid)
        inside = F.interpolate(stats, size=size, mode=_INTERP[len(self.grid)], align_corners=False)
        # outside the box: the nearest edge value (the map is zero outside the body anyway)
        pad = [p for a, b, s in zip(reversed(lo), reversed(hi), reversed(body.shape)) for p in (int(a), int(s - b))]
        full = F.pad(inside, pad, mode="replicate") if any(pad) else inside
        return full[0, 0], full[0, 1]

    def __call__(self, anomaly_map: torch.Tensor, body: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise a raw map ``(*S)`` (or ``(1, *S)``); without ``body`` the global statistics are used."""
        amap = torch.as_tensor(anomaly_map).float()
        if body is None:
            return (amap - self.global_median) / self.global_scale
        body = torch.as_tensor(body)
        squeeze = amap.ndim == len(self.grid) + 1
        if squeeze:
            amap = amap[0]
        if body.ndim == len(self.grid) + 1:
            body = body[0]
        if tuple(body.shape) != tuple(amap.shape):
            raise ValueError(f"body mask {tuple(body.shape)} and map {tuple(amap.shape)} differ in shape.")
        med, scale = self.fields(body, device=amap.device)
        out = (amap - med) / scale
        return out[None] if squeeze else out

    def apply(self, anomaly_map: torch.Tensor, body: torch.Tensor | None = None, depth: Any = None) -> torch.Tensor:
        """Normalise ``anomaly_map`` by body position (``depth`` is not used; see :meth:`__call__`)."""
        return self(anomaly_map, body)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored as ``calibration["normative"]``)."""
        return {"grid": list(self.grid), **self._statistics_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormativeMap:
        return cls(data["grid"], data["median"], data["scale"], data["global_median"], data["global_scale"])


#: width in mm of the depth bins of :class:`LungDepthNormativeMap`
DEPTH_BIN_MM = 1.0
_NUM_DEPTH_BINS = int(round((DEPTH_RANGE_MM[1] - DEPTH_RANGE_MM[0]) / DEPTH_BIN_MM)) + 1


def depth_bins(depth_mm: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Bin index (long, ``[0, 41)``) of signed lung-envelope depths in mm: 1 mm bins over ``DEPTH_RANGE_MM``."""
    d = torch.as_tensor(np.asarray(depth_mm, dtype=np.float32))
    return torch.round((d - DEPTH_RANGE_MM[0]) / DEPTH_BIN_MM).long().clamp_(0, _NUM_DEPTH_BINS - 1)


def affine_spacing(affine: Any) -> tuple[float, ...]:
    """Voxel size (mm) per axis of a 4x4 affine (e.g. a MetaTensor's ``affine``)."""
    if affine is None:
        raise ValueError("the voxel size is unknown: the image carries no affine (a MetaTensor is needed).")
    a = np.asarray(torch.as_tensor(affine), dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {a.shape}.")
    return tuple(float(v) for v in spacing_from_affine(a))


def lung_depth_from_windows(
    image: np.ndarray | torch.Tensor, hu_windows: Sequence[Sequence[float]], spacing: Sequence[float], step: int = 2
) -> np.ndarray:
    """Signed lung-envelope depth (mm) of every voxel of a model-space image whose channels are HU windows.

    HU is read back from the widest window (the envelope needs -1000..-400 HU, which a lung or wide window keeps), and
    :func:`~monai_simsid.apps.descriptor_knn.lung_envelope_depth` runs on it, on every ``step``-th voxel per axis
    (its distance transforms dominate the cost: ``step=2`` is about eight times faster on a 1.5 mm grid), and the
    result is interpolated (trilinear) back to every voxel.

    Args:
        image: ``(C, X, Y, Z)`` with one channel per window of ``hu_windows`` (each scaled to [-1, 1]), ``Z`` axial.
        hu_windows: the ``[[low, high], ...]`` HU windows of the channels.
        spacing: voxel size in mm per axis.
        step: sub-sampling of the grid the depth is computed on (1: every voxel).

    Returns:
        float32 ``(X, Y, Z)``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}.")
    if torch.as_tensor(image).ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) image of HU windows, got shape {tuple(torch.as_tensor(image).shape)}.")
    hu = hu_from_windows(image, hu_windows)[0].astype(np.float32)
    coarse = hu[::step, ::step, ::step]
    depth = lung_envelope_depth(coarse, [float(s) * step for s in spacing]).reshape(coarse.shape)
    if coarse.shape == hu.shape:
        return depth
    full = F.interpolate(torch.from_numpy(depth)[None, None], size=hu.shape, mode="trilinear", align_corners=True)
    return full[0, 0].numpy()


class LungDepthNormativeMap(_BinStatistics):
    """Robust z-score of an anomaly map against normal scans at the same depth in the lung envelope.

    Per 1 mm bin of the signed depth (:func:`depth_bins`; beyond 10 mm outside the envelope is one bin, as is beyond
    30 mm inside), the median and robust spread of the raw map over normal body voxels:
    ``(map - median(depth)) / spread(depth)``. A bin with too few normal voxels keeps the global statistics.

    Args:
        median, scale: per-bin statistics (``len == 41``; scales > 0).
        global_median, global_scale: over all normal body voxels (used without a depth, e.g. for a crop).
    """

    kind = "lung_depth"

    def __init__(self, median: Sequence[float], scale: Sequence[float], global_median: float, global_scale: float) -> None:
        self._set_statistics(median, scale, global_median, global_scale, _NUM_DEPTH_BINS, "(1 mm depth bins)")

    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        depths: np.ndarray | torch.Tensor,
        min_voxels: int = 200,
        scale_floor: float = 0.25,
    ) -> LungDepthNormativeMap:
        """Fit from raw map values of normal body voxels and their signed depths in mm (see :class:`NormativeMap.fit`
        for ``min_voxels`` and ``scale_floor``)."""
        v, b = _samples(values, depth_bins(depths), _NUM_DEPTH_BINS)
        return cls(*_robust_stats(v, b, _NUM_DEPTH_BINS, min_voxels, scale_floor))

    def __call__(self, anomaly_map: torch.Tensor, depth: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Normalise a raw map ``(*S)`` or ``(1, *S)`` given the depth ``(*S)`` in mm of its voxels; without a depth,
        the global statistics are used."""
        amap = torch.as_tensor(anomaly_map).float()
        if depth is None:
            return (amap - self.global_median) / self.global_scale
        bins = depth_bins(depth).to(amap.device)
        if tuple(bins.shape) != tuple(amap.shape[-bins.ndim :]) or amap.ndim - bins.ndim not in (0, 1):
            raise ValueError(f"depth {tuple(bins.shape)} and map {tuple(amap.shape)} differ in shape.")
        med = torch.as_tensor(self.median, dtype=torch.float32, device=amap.device)[bins]
        scale = torch.as_tensor(self.scale, dtype=torch.float32, device=amap.device)[bins]
        return (amap - med) / scale

    def apply(self, anomaly_map: torch.Tensor, body: torch.Tensor | None = None, depth: Any = None) -> torch.Tensor:
        """Normalise ``anomaly_map`` by depth (``body`` is not used; see :meth:`__call__`)."""
        return self(anomaly_map, depth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored as ``calibration["normative"]``)."""
        return {
            "kind": self.kind,
            "bin_mm": DEPTH_BIN_MM,
            "depth_range_mm": list(DEPTH_RANGE_MM),
            **self._statistics_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LungDepthNormativeMap:
        return cls(data["median"], data["scale"], data["global_median"], data["global_scale"])


def normative_from_dict(data: Mapping[str, Any]) -> NormativeMap | LungDepthNormativeMap:
    """The normative map stored in a calibration: by body-normalised position (no ``kind``, as older checkpoints
    store it) or by lung-envelope depth (``kind == "lung_depth"``)."""
    kind = data.get("kind", "position")
    if kind == "lung_depth":
        return LungDepthNormativeMap.from_dict(data)
    if kind == "position":
        return NormativeMap.from_dict(data)
    raise ValueError(f"unknown normative map kind {kind!r}.")
