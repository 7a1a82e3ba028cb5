"""Normative calibration of anomaly maps: per-position statistics of the map on normal scans.

Some structures are bright in every map, normal or not: ribs clipped by the HU window, the chest-wall rim, the
heart border. A voxel threshold shared by the whole scan lets them win. :class:`NormativeMap` stores, for each cell
of a body-normalised grid (the body's bounding box divided into ``grid`` cells, the same frame as the memory's body
regions), the median and the robust spread (1.4826 x MAD) of the raw map of *normal* scans, and turns a raw map into
a robust z-score: ``(map - median(position)) / spread(position)``. The cell statistics are interpolated trilinearly
to every voxel, so the output has no cell edges.

Everything comes from normal scans only (the calibration set of training: validation normals, or the training
normals when there are none); test labels are never seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_simsid.transforms.body.array import body_bbox

__all__ = ["NormativeMap", "position_cells"]

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


class NormativeMap:
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
        n = int(np.prod(self.grid))
        self.median = np.asarray(median, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if self.median.size != n or self.scale.size != n:
            raise ValueError(f"median and scale need {n} entries for grid {self.grid}, got {self.median.size}, {self.scale.size}.")
        if not (np.all(np.isfinite(self.median)) and np.all(self.scale > 0) and global_scale > 0):
            raise ValueError("normative statistics must be finite with positive scales.")
        self.global_median = float(global_median)
        self.global_scale = float(global_scale)

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
        v = np.asarray(torch.as_tensor(values).float().cpu().numpy(), dtype=np.float64).reshape(-1)
        c = np.asarray(torch.as_tensor(cells).cpu().numpy(), dtype=np.int64).reshape(-1)
        if v.size == 0 or v.size != c.size:
            raise ValueError(f"need equal, non-zero numbers of values and cells, got {v.size} and {c.size}.")
        n = int(np.prod(grid))
        if c.min() < 0 or c.max() >= n:
            raise ValueError(f"cell indices must be in [0, {n}).")
        if min_voxels < 1 or not 0 < scale_floor <= 1:
            raise ValueError("min_voxels must be >= 1 and scale_floor in (0, 1].")
        g_med = float(np.median(v))
        g_scale = max(_MAD_TO_SD * float(np.median(np.abs(v - g_med))), float(np.std(v)) * 1e-3, 1e-8)
        median = np.full(n, g_med)
        scale = np.full(n, g_scale)
        order = np.argsort(c, kind="stable")
        sorted_c, sorted_v = c[order], v[order]
        bounds = np.searchsorted(sorted_c, np.arange(n + 1))
        for i in range(n):
            vals = sorted_v[bounds[i] : bounds[i + 1]]
            if vals.size < min_voxels:
                continue
            med = float(np.median(vals))
            median[i] = med
            scale[i] = max(_MAD_TO_SD * float(np.median(np.abs(vals - med))), scale_floor * g_scale)
        return cls(grid, median, scale, g_med, g_scale)

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

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored as ``calibration["normative"]``)."""
        return {
            "grid": list(self.grid),
            "median": [float(v) for v in self.median],
            "scale": [float(v) for v in self.scale],
            "global_median": self.global_median,
            "global_scale": self.global_scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormativeMap:
        return cls(data["grid"], data["median"], data["scale"], data["global_median"], data["global_scale"])
