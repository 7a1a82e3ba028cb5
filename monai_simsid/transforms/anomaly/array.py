"""Synthetic-anomaly transforms (array versions).

Every transform works on channel-first images ``(C, *spatial)`` with 2 or 3 spatial dimensions, given as numpy
arrays, torch tensors or MetaTensors (the output keeps the input's type, dtype, device and metadata), and returns a
tuple ``(image, mask)`` where ``mask`` has shape ``(1, *spatial)``, dtype float32, values in {0, 1}, the same container
type as the image, and marks *exactly* the voxels whose value changed (in any channel): ``mask == any(out != img)``.

Following TorchIO, each random transform (``Rand*``) samples explicit parameters in ``randomize()`` (with MONAI's
``self.R``, settable through ``set_random_state``), stores them (``last_params`` / ``get_params()``) and then applies
the matching deterministic transform, which can be rebuilt with ``Deterministic(**params)`` to replay a synthetic
anomaly exactly on the same image.

Boxes are given as one ``(start, stop)`` pair per spatial dimension (``stop`` exclusive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from monai.utils.misc import MAX_SEED
from scipy import ndimage

from monai_simsid.data.lesions import irregular_ellipsoid

__all__ = [
    "PRETEXT_CLASSES",
    "pretext_class_index",
    "CutPaste",
    "RandCutPaste",
    "Scar",
    "RandScar",
    "ForeignPatchBlend",
    "RandForeignPatchBlend",
    "EllipsoidLesion",
    "RandEllipsoidLesion",
    "RandSyntheticAnomaly",
]

#: class names of the synthetic-anomaly pretext task; the position is the class index (0 normal, 1 cut-paste, 2 scar).
PRETEXT_CLASSES: tuple[str, ...] = ("normal", "cutpaste", "scar", "foreign", "ellipsoid")

Box = Sequence[Sequence[int]]


def pretext_class_index(name: str) -> int:
    """Class index of a synthetic-anomaly kind: 0 normal, 1 cut-paste, 2 scar, 3 foreign patch, 4 ellipsoid.

    Raises:
        ValueError: if ``name`` is not one of :data:`PRETEXT_CLASSES`.
    """
    if name not in PRETEXT_CLASSES:
        raise ValueError(f"unknown anomaly kind {name!r}, expected one of {PRETEXT_CLASSES}.")
    return PRETEXT_CLASSES.index(name)


# ----------------------------------------------------------------------------------------------------------- helpers
def _as_numpy(img: NdarrayOrTensor, name: str = "img") -> np.ndarray:
    arr = np.asarray(convert_to_numpy(img))
    if arr.ndim not in (3, 4):
        raise ValueError(f"{name} must be channel-first with 2 or 3 spatial dims, got shape {arr.shape}.")
    return arr


def _spatial_mask(mask: NdarrayOrTensor | None, spatial_shape: Sequence[int]) -> np.ndarray | None:
    """Boolean ``spatial_shape`` array from a restrict mask given with or without a channel dimension."""
    if mask is None:
        return None
    arr = np.asarray(convert_to_numpy(mask))
    if arr.ndim == len(spatial_shape) + 1:
        arr = np.any(arr != 0, axis=0)
    if tuple(arr.shape) != tuple(spatial_shape):
        raise ValueError(f"restrict_mask spatial shape {arr.shape} does not match the image {tuple(spatial_shape)}.")
    return arr != 0


def _finalize(out: np.ndarray, img: NdarrayOrTensor, img_np: np.ndarray) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
    """Cast ``out`` to the input dtype, compute the exact change mask and convert both to the input's type."""
    dtype = img_np.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    elif dtype == np.bool_:
        out = out > 0.5
    out = out.astype(dtype, copy=False)
    mask = np.any(out != img_np, axis=0, keepdims=True).astype(np.float32)
    out_t = convert_to_dst_type(out, img)[0]
    mask_t = convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]
    return out_t, mask_t


def _empty_mask(img: NdarrayOrTensor) -> NdarrayOrTensor:
    shape = (1, *tuple(img.shape[1:]))
    mask = np.zeros(shape, dtype=np.float32)
    return convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


def _work_dtype(dtype: np.dtype) -> np.dtype:
    return np.result_type(dtype, np.float32) if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _check_box(box: Box, name: str) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(a), int(b)) for a, b in box)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of (start, stop) pairs, got {box!r}.") from e
    if len(out) not in (2, 3):
        raise ValueError(f"{name} needs 2 or 3 (start, stop) pairs, got {len(out)}.")
    for a, b in out:
        if a < 0 or b <= a:
            raise ValueError(f"{name} needs 0 <= start < stop in every dimension, got {out}.")
    return out


def _box_fits(box: tuple[tuple[int, int], ...], shape: Sequence[int], name: str) -> None:
    if len(box) != len(shape):
        raise ValueError(f"{name} has {len(box)} dims but the image has {len(shape)} spatial dims.")
    for (a, b), s in zip(box, shape):
        if b > s:
            raise ValueError(f"{name} {box} does not fit in spatial shape {tuple(shape)}.")


def _box_slices(box: tuple[tuple[int, int], ...]) -> tuple[slice, ...]:
    return (slice(None),) + tuple(slice(a, b) for a, b in box)


def _check_range(rng: Sequence[float], name: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> tuple[float, float]:
    try:
        a, b = (float(rng[0]), float(rng[1]))
    except (TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{name} must be a (low, high) pair, got {rng!r}.") from e
    if not (np.isfinite(a) and np.isfinite(b)) or a > b:
        raise ValueError(f"{name} must be finite with low <= high, got {rng!r}.")
    if lo is not None and (a < lo or (lo_open and a <= lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {rng!r}.")
    if hi is not None and b > hi:
        raise ValueError(f"{name} must be <= {hi}, got {rng!r}.")
    return a, b


def _check_prob(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}.")
    return p


def _intensity_stats(img_np: np.ndarray) -> tuple[float, float]:
    """(min, span) of the image intensities; span falls back to 1 for a constant image."""
    lo, hi = float(np.min(img_np)), float(np.max(img_np))
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        span = 1.0
    return lo, span


class _RandAnomalyBase(RandomizableTransform):
    """Shared machinery of the random anomaly transforms: parameter storage and centre sampling."""

    deterministic_class: type = Transform

    def __init__(self, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob=_check_prob(prob, "prob"))
        self._params: dict[str, Any] | None = None

    @property
    def last_params(self) -> dict[str, Any] | None:
        """Parameters sampled by the last ``randomize`` (``None`` when the transform was skipped)."""
        return self._params

    def get_params(self) -> dict[str, Any] | None:
        """A copy of :attr:`last_params`, usable as ``deterministic_class(**params)``."""
        return None if self._params is None else dict(self._params)

    def get_deterministic(self) -> Transform | None:
        """The deterministic transform that replays the last sampled anomaly (``None`` if skipped)."""
        return None if self._params is None else self.deterministic_class(**self._params)

    def _sample_center(
        self, spatial_shape: Sequence[int], restrict: np.ndarray | None, low: Sequence[int], high: Sequence[int]
    ) -> tuple[int, ...]:
        """Integer centre in ``[low, high]`` (inclusive, per dim) and inside ``restrict`` when given.

        When no voxel of ``restrict`` lies in the admissible range, a voxel of ``restrict`` is used anyway (callers
        then clip the anomaly to the image, so it still contains that voxel). Raises ValueError for an empty mask.
        """
        low = [max(0, min(int(l), s - 1)) for l, s in zip(low, spatial_shape)]
        high = [max(l, min(int(h), s - 1)) for l, h, s in zip(low, high, spatial_shape)]
        if restrict is None:
            return tuple(int(self.R.randint(l, h + 1)) for l, h in zip(low, high))
        if not restrict.any():
            raise ValueError("restrict_mask is empty: nowhere to place the anomaly.")
        valid = np.zeros_like(restrict)
        sl = tuple(slice(l, h + 1) for l, h in zip(low, high))
        valid[sl] = restrict[sl]
        idx = np.flatnonzero(valid)
        if idx.size == 0:
            idx = np.flatnonzero(restrict)
        flat = int(idx[self.R.randint(idx.size)])
        return tuple(int(v) for v in np.unravel_index(flat, tuple(spatial_shape)))

    def _sample_fractions(self, nd: int, frac_range: tuple[float, float], max_aspect: float) -> np.ndarray:
        """Per-dimension fractions in ``frac_range`` whose ratios stay within ``max_aspect``."""
        base = self.R.uniform(*frac_range)
        half = 0.5 * np.log(max_aspect)
        fr = base * np.exp(self.R.uniform(-half, half, size=nd))
        return np.clip(fr, *frac_range)

    def _box_sizes(self, spatial_shape: Sequence[int], frac_range, max_aspect) -> list[int]:
        fr = self._sample_fractions(len(spatial_shape), frac_range, max_aspect)
        return [int(min(s, max(1, round(f * s)))) for f, s in zip(fr, spatial_shape)]

    def _box_at_center(self, sizes: Sequence[int], spatial_shape: Sequence[int], restrict) -> list[list[int]]:
        low = [z // 2 for z in sizes]
        high = [s - z + z // 2 for s, z in zip(spatial_shape, sizes)]
        c = self._sample_center(spatial_shape, restrict, low, high)
        starts = [int(np.clip(ci - z // 2, 0, s - z)) for ci, z, s in zip(c, sizes, spatial_shape)]
        return [[a, a + z] for a, z in zip(starts, sizes)]

    def __call__(  # type: ignore[override]
        self, img: NdarrayOrTensor, restrict_mask: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``; ``randomize=False`` reuses the last sampled parameters."""
        if randomize:
            self.randomize(img, restrict_mask)
        return self._apply(img)

    def _apply(self, img: NdarrayOrTensor, **kwargs) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if not self._do_transform or self._params is None:
            _as_numpy(img)
            return img, _empty_mask(img)
        return self.deterministic_class(**self._params)(img, **kwargs)


# --------------------------------------------------------------------------------------------------------- cut-paste
class CutPaste(Transform):
    """Copy the content of ``src_box`` into ``dst_box``, optionally flipped, rotated by 90° and intensity-jittered.

    The pasted patch is ``(patch - mean) * intensity_scale + mean + intensity_shift`` (``mean`` is the per-channel
    patch mean, so ``intensity_scale`` changes the contrast and ``intensity_shift`` the brightness, in image units).

    Args:
        src_box: ``(start, stop)`` per spatial dim of the region to cut.
        dst_box: ``(start, stop)`` per spatial dim of the region to paste into; its size must equal the source size
            after the rotation (sizes along ``rot_axes`` swap when ``rot90_k`` is odd).
        flip_axes: spatial axes (0-based, channel excluded) along which the patch is flipped.
        rot90_k: number of 90° rotations of the patch in the plane ``rot_axes``.
        rot_axes: two distinct spatial axes defining the rotation plane.
        intensity_scale: contrast factor of the pasted patch (> 0).
        intensity_shift: intensity offset of the pasted patch.

    Raises:
        ValueError: on malformed boxes, axes or intensity parameters, or box sizes that do not match.
    """

    def __init__(
        self,
        src_box: Box,
        dst_box: Box,
        flip_axes: Sequence[int] = (),
        rot90_k: int = 0,
        rot_axes: Sequence[int] = (0, 1),
        intensity_scale: float = 1.0,
        intensity_shift: float = 0.0,
    ) -> None:
        self.src_box = _check_box(src_box, "src_box")
        self.dst_box = _check_box(dst_box, "dst_box")
        nd = len(self.src_box)
        if len(self.dst_box) != nd:
            raise ValueError(f"src_box and dst_box need the same number of dims, got {nd} and {len(self.dst_box)}.")
        self.flip_axes = tuple(int(a) for a in flip_axes)
        if any(not 0 <= a < nd for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ValueError(f"flip_axes must be distinct spatial axes in [0, {nd}), got {tuple(flip_axes)}.")
        self.rot90_k = int(rot90_k) % 4
        self.rot_axes = tuple(int(a) for a in rot_axes)
        if len(self.rot_axes) != 2 or self.rot_axes[0] == self.rot_axes[1] or any(
            not 0 <= a < nd for a in self.rot_axes
        ):
            raise ValueError(f"rot_axes must be two distinct spatial axes in [0, {nd}), got {tuple(rot_axes)}.")
        self.intensity_scale = float(intensity_scale)
        self.intensity_shift = float(intensity_shift)
        if not np.isfinite(self.intensity_scale) or self.intensity_scale <= 0:
            raise ValueError(f"intensity_scale must be finite and > 0, got {intensity_scale}.")
        if not np.isfinite(self.intensity_shift):
            raise ValueError(f"intensity_shift must be finite, got {intensity_shift}.")
        size = [b - a for a, b in self.src_box]
        if self.rot90_k % 2 == 1:
            i, j = self.rot_axes
            size[i], size[j] = size[j], size[i]
        if size != [b - a for a, b in self.dst_box]:
            raise ValueError(f"dst_box size {[b - a for a, b in self.dst_box]} must equal the transformed "
                             f"src_box size {size}.")

    def __call__(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``."""
        img_np = _as_numpy(img)
        shape = img_np.shape[1:]
        _box_fits(self.src_box, shape, "src_box")
        _box_fits(self.dst_box, shape, "dst_box")
        work = img_np.astype(_work_dtype(img_np.dtype))
        patch = work[_box_slices(self.src_box)]
        if self.flip_axes:
            patch = np.flip(patch, axis=tuple(a + 1 for a in self.flip_axes))
        if self.rot90_k:
            patch = np.rot90(patch, k=self.rot90_k, axes=tuple(a + 1 for a in self.rot_axes))
        mean = patch.mean(axis=tuple(range(1, patch.ndim)), keepdims=True)
        patch = (patch - mean) * self.intensity_scale + mean + self.intensity_shift
        out = work.copy()
        out[_box_slices(self.dst_box)] = patch
        return _finalize(out, img, img_np)


class RandCutPaste(_RandAnomalyBase):
    """Randomly cut a box and paste it elsewhere (optionally flipped / rotated, with intensity jitter).

    Args:
        prob: probability of applying the transform.
        box_size_range: ``(low, high)`` box size as a fraction of each spatial size, in (0, 1].
        max_aspect: largest ratio between the box fractions of two dimensions (>= 1).
        flip_prob: probability of flipping the patch along each spatial axis.
        rot_prob: probability of rotating the patch by k*90° (k in {1, 2, 3}) in a random plane.
        intensity_scale_range: ``(low, high)`` contrast factor, > 0.
        intensity_shift_range: ``(low, high)`` magnitude of the brightness offset as a fraction of the image's
            intensity range (``max - min``); the sign is random. Keep ``low > 0`` so pasted voxels really change.

    Raises:
        ValueError: on invalid arguments.
    """

    deterministic_class = CutPaste

    def __init__(
        self,
        prob: float = 1.0,
        box_size_range: Sequence[float] = (0.05, 0.25),
        max_aspect: float = 3.0,
        flip_prob: float = 0.5,
        rot_prob: float = 0.5,
        intensity_scale_range: Sequence[float] = (0.9, 1.1),
        intensity_shift_range: Sequence[float] = (0.02, 0.1),
    ) -> None:
        super().__init__(prob)
        self.box_size_range = _check_range(box_size_range, "box_size_range", 0.0, 1.0, lo_open=True)
        if not np.isfinite(max_aspect) or max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}.")
        self.max_aspect = float(max_aspect)
        self.flip_prob = _check_prob(flip_prob, "flip_prob")
        self.rot_prob = _check_prob(rot_prob, "rot_prob")
        self.intensity_scale_range = _check_range(intensity_scale_range, "intensity_scale_range", 0.0, lo_open=True)
        self.intensity_shift_range = _check_range(intensity_shift_range, "intensity_shift_range", 0.0)

    def randomize(self, img: NdarrayOrTensor, restrict_mask: NdarrayOrTensor | None = None) -> None:  # type: ignore
        """Sample the parameters for ``img`` (the destination centre lies inside ``restrict_mask`` if given)."""
        super().randomize(None)
        self._params = None
        if not self._do_transform:
            return
        img_np = _as_numpy(img)
        shape = img_np.shape[1:]
        nd = len(shape)
        restrict = _spatial_mask(restrict_mask, shape)
        sizes = self._box_sizes(shape, self.box_size_range, self.max_aspect)
        flip_axes = [a for a in range(nd) if self.R.rand() < self.flip_prob]
        rot90_k, rot_axes = 0, [0, 1]
        if self.R.rand() < self.rot_prob:
            rot90_k = int(self.R.randint(1, 4))
            rot_axes = sorted(int(a) for a in self.R.choice(nd, 2, replace=False))
            if rot90_k % 2 == 1:
                i, j = rot_axes
                sizes[i], sizes[j] = min(sizes[i], shape[j]), min(sizes[j], shape[i])
        starts = [int(self.R.randint(0, s - z + 1)) for s, z in zip(shape, sizes)]
        src_box = [[a, a + z] for a, z in zip(starts, sizes)]
        dst_sizes = list(sizes)
        if rot90_k % 2 == 1:
            i, j = rot_axes
            dst_sizes[i], dst_sizes[j] = dst_sizes[j], dst_sizes[i]
        dst_box = self._box_at_center(dst_sizes, shape, restrict)
        _, span = _intensity_stats(img_np)
        shift = float(self.R.uniform(*self.intensity_shift_range)) * span * (1.0 if self.R.rand() < 0.5 else -1.0)
        self._params = {
            "src_box": src_box,
            "dst_box": dst_box,
            "flip_axes": flip_axes,
            "rot90_k": rot90_k,
            "rot_axes": rot_axes,
            "intensity_scale": float(self.R.uniform(*self.intensity_scale_range)),
            "intensity_shift": shift,
        }


# -------------------------------------------------------------------------------------------------------------- scar
class Scar(Transform):
    """Paint a thin tube (polyline) or sheet (thin bounded slab) of constant intensity.

    Args:
        kind: ``"tube"`` or ``"sheet"``.
        intensity: value written into the scar voxels (image units).
        thickness: tube diameter / sheet thickness in voxels (> 0); a tube voxel is painted when its distance to
            the rasterised polyline is at most ``thickness / 2``.
        points: tube vertices, at least two, each with one coordinate per spatial dim (voxel units).
        center: sheet centre (voxel units).
        normal: sheet normal (any non-zero vector, normalised internally).
        extent: sheet in-plane radius in voxels (> 0).

    Raises:
        ValueError: on missing or invalid geometry.
    """

    def __init__(
        self,
        kind: str = "tube",
        intensity: float = 1.0,
        thickness: float = 1.0,
        points: Sequence[Sequence[float]] | None = None,
        center: Sequence[float] | None = None,
        normal: Sequence[float] | None = None,
        extent: float | None = None,
    ) -> None:
        if kind not in ("tube", "sheet"):
            raise ValueError(f"kind must be 'tube' or 'sheet', got {kind!r}.")
        self.kind = kind
        self.intensity = float(intensity)
        if not np.isfinite(self.intensity):
            raise ValueError(f"intensity must be finite, got {intensity}.")
        self.thickness = float(thickness)
        if not np.isfinite(self.thickness) or self.thickness <= 0:
            raise ValueError(f"thickness must be > 0, got {thickness}.")
        self.points = self.center = self.normal = None
        self.extent = None
        if kind == "tube":
            if points is None:
                raise ValueError("a tube scar needs points.")
            pts = np.asarray(points, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] not in (2, 3) or not np.all(np.isfinite(pts)):
                raise ValueError(f"points must be an (N >= 2, 2 or 3) array of finite values, got shape {pts.shape}.")
            self.points = pts
        else:
            if center is None or normal is None or extent is None:
                raise ValueError("a sheet scar needs center, normal and extent.")
            c = np.asarray(center, dtype=np.float64)
            n = np.asarray(normal, dtype=np.float64)
            if c.ndim != 1 or c.shape[0] not in (2, 3) or n.shape != c.shape:
                raise ValueError(f"center and normal need 2 or 3 matching values, got {c.shape} and {n.shape}.")
            norm = float(np.linalg.norm(n))
            if not np.isfinite(norm) or norm == 0:
                raise ValueError(f"normal must be a finite non-zero vector, got {tuple(normal)}.")
            if not np.isfinite(extent) or extent <= 0:
                raise ValueError(f"extent must be > 0, got {extent}.")
            self.center, self.normal, self.extent = c, n / norm, float(extent)

    @property
    def ndim(self) -> int:
        return int(self.points.shape[1] if self.kind == "tube" else self.center.shape[0])  # type: ignore

    def region(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Boolean array of ``spatial_shape`` with the scar voxels."""
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != self.ndim:
            raise ValueError(f"scar has {self.ndim} dims but the image has {len(shape)} spatial dims.")
        out = np.zeros(shape, dtype=bool)
        r = 0.5 * self.thickness
        if self.kind == "tube":
            pts = self.points
            samples = [pts[:1]]
            for p0, p1 in zip(pts[:-1], pts[1:]):
                n = max(2, int(np.ceil(np.linalg.norm(p1 - p0) / 0.25)) + 1)
                samples.append(p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0))
            seeds = np.rint(np.concatenate(samples)).astype(np.int64)
            inside = np.all((seeds >= 0) & (seeds < np.asarray(shape)), axis=1)
            seeds = seeds[inside]
            if seeds.shape[0] == 0:
                return out
            margin = int(np.ceil(r)) + 1
            lo = np.maximum(seeds.min(0) - margin, 0)
            hi = np.minimum(seeds.max(0) + margin + 1, shape)
            crop = np.ones(tuple(hi - lo), dtype=bool)
            crop[tuple((seeds - lo).T)] = False
            dist = ndimage.distance_transform_edt(crop)
            out[tuple(slice(a, b) for a, b in zip(lo, hi))] = dist <= r + 1e-6
            return out
        reach = self.extent + r + 1  # type: ignore[operator]
        lo = np.maximum(np.floor(self.center - reach).astype(int), 0)  # type: ignore[operator]
        hi = np.minimum(np.ceil(self.center + reach).astype(int) + 1, shape)  # type: ignore[operator]
        if np.any(hi <= lo):
            return out
        grids = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi)], indexing="ij")
        rel = [g - c for g, c in zip(grids, self.center)]  # type: ignore[arg-type]
        d_n = sum(v * n for v, n in zip(rel, self.normal))  # type: ignore[arg-type]
        d_in = np.sqrt(np.maximum(sum(v * v for v in rel) - d_n * d_n, 0.0))
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = (np.abs(d_n) <= r + 1e-6) & (d_in <= self.extent + 1e-6)
        return out

    def __call__(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``."""
        img_np = _as_numpy(img)
        region = self.region(img_np.shape[1:])
        out = img_np.astype(_work_dtype(img_np.dtype))
        out[:, region] = self.intensity
        return _finalize(out, img, img_np)


class RandScar(_RandAnomalyBase):
    """Random thin tubes (curved or straight polylines) or sheets (thin slabs of limited extent).

    Args:
        prob: probability of applying the transform.
        sheet_prob: probability of a sheet instead of a tube.
        num_points_range: ``(low, high)`` inclusive number of polyline vertices (>= 2; 2 gives a straight tube).
        length_range: ``(low, high)`` tube length as a fraction of the smallest spatial size.
        curvature: standard deviation of the direction change between consecutive segments (0: straight).
        thickness_range: ``(low, high)`` thickness in voxels (> 0), e.g. 1-3.
        extent_range: ``(low, high)`` sheet in-plane radius as a fraction of the smallest spatial size.
        intensity_range: ``(low, high)`` scar intensity as a fraction of the image range:
            ``intensity = min + u * (max - min)``; values outside [0, 1] go beyond the image range.

    Raises:
        ValueError: on invalid arguments.
    """

    deterministic_class = Scar

    def __init__(
        self,
        prob: float = 1.0,
        sheet_prob: float = 0.3,
        num_points_range: Sequence[int] = (2, 5),
        length_range: Sequence[float] = (0.2, 0.6),
        curvature: float = 0.5,
        thickness_range: Sequence[float] = (1.0, 3.0),
        extent_range: Sequence[float] = (0.1, 0.3),
        intensity_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(prob)
        self.sheet_prob = _check_prob(sheet_prob, "sheet_prob")
        npr = _check_range(num_points_range, "num_points_range", 2.0)
        self.num_points_range = (int(npr[0]), int(npr[1]))
        if self.num_points_range != npr:
            raise ValueError(f"num_points_range must be integers, got {num_points_range!r}.")
        self.length_range = _check_range(length_range, "length_range", 0.0, lo_open=True)
        if not np.isfinite(curvature) or curvature < 0:
            raise ValueError(f"curvature must be >= 0, got {curvature}.")
        self.curvature = float(curvature)
        self.thickness_range = _check_range(thickness_range, "thickness_range", 0.0, lo_open=True)
        self.extent_range = _check_range(extent_range, "extent_range", 0.0, lo_open=True)
        self.intensity_range = _check_range(intensity_range, "intensity_range")

    def _unit(self, nd: int) -> np.ndarray:
        v = self.R.standard_normal(nd)
        n = np.linalg.norm(v)
        return v / n if n > 1e-8 else np.eye(nd)[0]

    def randomize(self, img: NdarrayOrTensor, restrict_mask: NdarrayOrTensor | None = None) -> None:  # type: ignore
        """Sample the scar for ``img`` (its centre lies inside ``restrict_mask`` if given)."""
        super().randomize(None)
        self._params = None
        if not self._do_transform:
            return
        img_np = _as_numpy(img)
        shape = img_np.shape[1:]
        nd = len(shape)
        restrict = _spatial_mask(restrict_mask, shape)
        center = np.asarray(self._sample_center(shape, restrict, [0] * nd, [s - 1 for s in shape]), dtype=float)
        lo, span = _intensity_stats(img_np)
        thickness = float(self.R.uniform(*self.thickness_range))
        if self.R.rand() < self.sheet_prob:
            params: dict[str, Any] = {
                "kind": "sheet",
                "center": center.tolist(),
                "normal": self._unit(nd).tolist(),
                "extent": float(max(1.0, self.R.uniform(*self.extent_range) * min(shape))),
            }
        else:
            n_pts = int(self.R.randint(self.num_points_range[0], self.num_points_range[1] + 1))
            length = max(1.0, float(self.R.uniform(*self.length_range)) * min(shape))
            step = length / (n_pts - 1)
            d = self._unit(nd)
            pts = [np.zeros(nd)]
            for _ in range(n_pts - 1):
                pts.append(pts[-1] + step * d)
                d = d + self.curvature * self.R.standard_normal(nd)
                d = d / max(float(np.linalg.norm(d)), 1e-8)
            arr = np.stack(pts)
            arr = arr - arr[n_pts // 2] + center  # the middle vertex is the sampled centre
            params = {"kind": "tube", "points": arr.tolist()}
        params["thickness"] = thickness
        params["intensity"] = float(lo + self.R.uniform(*self.intensity_range) * span)
        self._params = params


# ----------------------------------------------------------------------------------------------- foreign patch blend
class ForeignPatchBlend(Transform):
    """Blend a patch of another image into the image: ``out[dst] = (1 - alpha) * img[dst] + alpha * foreign[src]``.

    Args:
        src_box: ``(start, stop)`` per spatial dim of the patch in the foreign image.
        dst_box: ``(start, stop)`` per spatial dim of the destination in the image (same size as ``src_box``).
        alpha: blending factor in (0, 1].

    Raises:
        ValueError: on malformed boxes, different box sizes or ``alpha`` outside (0, 1].
    """

    def __init__(self, src_box: Box, dst_box: Box, alpha: float = 1.0) -> None:
        self.src_box = _check_box(src_box, "src_box")
        self.dst_box = _check_box(dst_box, "dst_box")
        if [b - a for a, b in self.src_box] != [b - a for a, b in self.dst_box]:
            raise ValueError(f"src_box {self.src_box} and dst_box {self.dst_box} must have the same size.")
        self.alpha = float(alpha)
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}.")

    def __call__(  # type: ignore[override]
        self, img: NdarrayOrTensor, foreign: NdarrayOrTensor
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``; ``foreign`` has the same channels as ``img`` (or one channel)."""
        img_np = _as_numpy(img)
        if foreign is None:
            raise ValueError("ForeignPatchBlend needs a foreign image.")
        for_np = _as_numpy(foreign, "foreign")
        if for_np.ndim != img_np.ndim or for_np.shape[0] not in (1, img_np.shape[0]):
            raise ValueError(f"foreign shape {for_np.shape} is incompatible with image shape {img_np.shape}.")
        _box_fits(self.src_box, for_np.shape[1:], "src_box")
        _box_fits(self.dst_box, img_np.shape[1:], "dst_box")
        work = img_np.astype(_work_dtype(img_np.dtype))
        src = for_np[_box_slices(self.src_box)].astype(work.dtype)
        dst = _box_slices(self.dst_box)
        work[dst] = (1.0 - self.alpha) * work[dst] + self.alpha * src
        return _finalize(work, img, img_np)


class RandForeignPatchBlend(_RandAnomalyBase):
    """Blend a random patch of another image (given at call time) into a random place of the image.

    Args:
        prob: probability of applying the transform.
        box_size_range: ``(low, high)`` patch size as a fraction of each spatial size of the image, in (0, 1].
        max_aspect: largest ratio between the box fractions of two dimensions (>= 1).
        alpha_range: ``(low, high)`` blending factor, within (0, 1].

    Raises:
        ValueError: on invalid arguments.
    """

    deterministic_class = ForeignPatchBlend

    def __init__(
        self,
        prob: float = 1.0,
        box_size_range: Sequence[float] = (0.05, 0.25),
        max_aspect: float = 3.0,
        alpha_range: Sequence[float] = (0.3, 1.0),
    ) -> None:
        super().__init__(prob)
        self.box_size_range = _check_range(box_size_range, "box_size_range", 0.0, 1.0, lo_open=True)
        if not np.isfinite(max_aspect) or max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}.")
        self.max_aspect = float(max_aspect)
        self.alpha_range = _check_range(alpha_range, "alpha_range", 0.0, 1.0, lo_open=True)

    def randomize(  # type: ignore[override]
        self, img: NdarrayOrTensor, foreign: NdarrayOrTensor, restrict_mask: NdarrayOrTensor | None = None
    ) -> None:
        """Sample boxes in ``foreign`` and ``img`` and the blending factor."""
        super().randomize(None)
        self._params = None
        if not self._do_transform:
            return
        if foreign is None:
            raise ValueError("RandForeignPatchBlend needs a foreign image.")
        img_np = _as_numpy(img)
        shape = img_np.shape[1:]
        fshape = _as_numpy(foreign, "foreign").shape[1:]
        if len(fshape) != len(shape):
            raise ValueError(f"foreign has {len(fshape)} spatial dims, the image {len(shape)}.")
        restrict = _spatial_mask(restrict_mask, shape)
        sizes = [min(z, f) for z, f in zip(self._box_sizes(shape, self.box_size_range, self.max_aspect), fshape)]
        starts = [int(self.R.randint(0, f - z + 1)) for f, z in zip(fshape, sizes)]
        self._params = {
            "src_box": [[a, a + z] for a, z in zip(starts, sizes)],
            "dst_box": self._box_at_center(sizes, shape, restrict),
            "alpha": float(self.R.uniform(*self.alpha_range)),
        }

    def __call__(  # type: ignore[override]
        self,
        img: NdarrayOrTensor,
        foreign: NdarrayOrTensor | None = None,
        restrict_mask: NdarrayOrTensor | None = None,
        randomize: bool = True,
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``; ``randomize=False`` reuses the last sampled parameters."""
        if randomize:
            self.randomize(img, foreign, restrict_mask)
        if self._do_transform and self._params is not None and foreign is None:
            raise ValueError("RandForeignPatchBlend needs a foreign image.")
        return self._apply(img, foreign=foreign)


# ------------------------------------------------------------------------------------------------- ellipsoid lesion
class EllipsoidLesion(Transform):
    """Blend an irregular ellipsoid of a target intensity into the image: ``out = (1 - w) * img + w * target``.

    ``w`` is :func:`monai_simsid.data.lesions.irregular_ellipsoid` (soft edge) with weights below ``eps`` set to 0.
    With ``intensity_mode="absolute"`` the target is ``intensity``; with ``"relative"`` it is the per-channel
    ``w``-weighted mean of the image under the lesion plus ``intensity`` (positive: brighter, negative: darker).

    Args:
        center: lesion centre in voxels, one value per spatial dim.
        radii: semi-axes in voxels (> 0), one value per spatial dim.
        intensity: absolute target value, or offset from the local mean (``intensity_mode="relative"``).
        roughness: boundary irregularity in [0, 1).
        edge_seed: seed of the boundary noise (``numpy.random.default_rng(edge_seed)``).
        edge_width: width in voxels of the soft edge (> 0).
        intensity_mode: ``"absolute"`` or ``"relative"``.
        eps: weights ``<= eps`` are dropped so the lesion has a finite support.

    Raises:
        ValueError: on invalid arguments.
    """

    def __init__(
        self,
        center: Sequence[float],
        radii: Sequence[float],
        intensity: float,
        roughness: float = 0.25,
        edge_seed: int = 0,
        edge_width: float = 1.0,
        intensity_mode: str = "absolute",
        eps: float = 0.02,
    ) -> None:
        self.center = tuple(float(c) for c in center)
        self.radii = tuple(float(r) for r in radii)
        if len(self.center) not in (2, 3) or len(self.radii) != len(self.center):
            raise ValueError(f"center and radii need 2 or 3 matching values, got {self.center} and {self.radii}.")
        if min(self.radii) <= 0 or not all(np.isfinite(self.radii + self.center)):
            raise ValueError(f"radii must be finite and > 0, got {self.radii}.")
        self.intensity = float(intensity)
        if not np.isfinite(self.intensity):
            raise ValueError(f"intensity must be finite, got {intensity}.")
        if not 0.0 <= roughness < 1.0:
            raise ValueError(f"roughness must be in [0, 1), got {roughness}.")
        self.roughness = float(roughness)
        if edge_width <= 0:
            raise ValueError(f"edge_width must be > 0, got {edge_width}.")
        self.edge_width = float(edge_width)
        self.edge_seed = int(edge_seed)
        if intensity_mode not in ("absolute", "relative"):
            raise ValueError(f"intensity_mode must be 'absolute' or 'relative', got {intensity_mode!r}.")
        self.intensity_mode = intensity_mode
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}.")
        self.eps = float(eps)

    def weights(self, spatial_shape: Sequence[int]) -> np.ndarray:
        """Blending weights ``w`` (float32 in [0, 1], 0 outside the lesion support)."""
        if len(spatial_shape) != len(self.center):
            raise ValueError(f"lesion has {len(self.center)} dims but the image has {len(spatial_shape)}.")
        w = irregular_ellipsoid(
            spatial_shape, self.center, self.radii, np.random.default_rng(self.edge_seed), self.roughness,
            self.edge_width,
        )
        w[w <= self.eps] = 0.0
        return w

    def __call__(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``."""
        img_np = _as_numpy(img)
        w = self.weights(img_np.shape[1:]).astype(np.float64)
        out = img_np.astype(np.float64)
        total = float(w.sum())
        if total > 0:
            if self.intensity_mode == "relative":
                local = (out * w).reshape(out.shape[0], -1).sum(1) / total
                target = (local + self.intensity).reshape((-1,) + (1,) * w.ndim)
            else:
                target = self.intensity
            out = out + w[None] * (target - out)
        return _finalize(out.astype(_work_dtype(img_np.dtype)), img, img_np)


class RandEllipsoidLesion(_RandAnomalyBase):
    """Random irregular ellipsoid lesion with a soft edge.

    Args:
        prob: probability of applying the transform.
        radius_range: ``(low, high)`` semi-axis as a fraction of each spatial size (radii are at least 1 voxel).
        max_aspect: largest ratio between the radius fractions of two dimensions (>= 1).
        roughness_range: ``(low, high)`` boundary irregularity within [0, 1).
        edge_width_range: ``(low, high)`` soft-edge width in voxels (> 0), capped at ``max(0.5, min(radii) / 2)``.
        intensity_mode: ``"relative"`` (offset from the local mean) or ``"absolute"``.
        intensity_range: relative mode: ``(low, high)`` magnitude of the offset as a fraction of the image range
            (``max - min``), signed by ``polarity``; absolute mode: target as a fraction of the image range,
            ``target = min + u * (max - min)``.
        polarity: relative mode only: ``"both"``, ``"bright"`` or ``"dark"``.

    Raises:
        ValueError: on invalid arguments.
    """

    deterministic_class = EllipsoidLesion

    def __init__(
        self,
        prob: float = 1.0,
        radius_range: Sequence[float] = (0.05, 0.15),
        max_aspect: float = 2.0,
        roughness_range: Sequence[float] = (0.0, 0.3),
        edge_width_range: Sequence[float] = (0.5, 2.0),
        intensity_mode: str = "relative",
        intensity_range: Sequence[float] = (0.1, 0.5),
        polarity: str = "both",
    ) -> None:
        super().__init__(prob)
        self.radius_range = _check_range(radius_range, "radius_range", 0.0, lo_open=True)
        if not np.isfinite(max_aspect) or max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}.")
        self.max_aspect = float(max_aspect)
        self.roughness_range = _check_range(roughness_range, "roughness_range", 0.0)
        if self.roughness_range[1] >= 1.0:
            raise ValueError(f"roughness_range must lie in [0, 1), got {roughness_range!r}.")
        self.edge_width_range = _check_range(edge_width_range, "edge_width_range", 0.0, lo_open=True)
        if intensity_mode not in ("absolute", "relative"):
            raise ValueError(f"intensity_mode must be 'absolute' or 'relative', got {intensity_mode!r}.")
        self.intensity_mode = intensity_mode
        self.intensity_range = _check_range(intensity_range, "intensity_range")
        if polarity not in ("both", "bright", "dark"):
            raise ValueError(f"polarity must be 'both', 'bright' or 'dark', got {polarity!r}.")
        self.polarity = polarity

    def randomize(self, img: NdarrayOrTensor, restrict_mask: NdarrayOrTensor | None = None) -> None:  # type: ignore
        """Sample the lesion for ``img`` (its centre lies inside ``restrict_mask`` if given)."""
        super().randomize(None)
        self._params = None
        if not self._do_transform:
            return
        img_np = _as_numpy(img)
        shape = img_np.shape[1:]
        nd = len(shape)
        restrict = _spatial_mask(restrict_mask, shape)
        center = self._sample_center(shape, restrict, [0] * nd, [s - 1 for s in shape])
        fr = self._sample_fractions(nd, self.radius_range, self.max_aspect)
        radii = [float(max(1.0, f * s)) for f, s in zip(fr, shape)]
        lo, span = _intensity_stats(img_np)
        u = float(self.R.uniform(*self.intensity_range))
        if self.intensity_mode == "relative":
            sign = {"bright": 1.0, "dark": -1.0}.get(self.polarity, 1.0 if self.R.rand() < 0.5 else -1.0)
            intensity = sign * u * span
        else:
            intensity = lo + u * span
        self._params = {
            "center": [float(c) for c in center],
            "radii": radii,
            "intensity": float(intensity),
            "roughness": float(self.R.uniform(*self.roughness_range)),
            "edge_seed": int(self.R.randint(MAX_SEED)),
            # keep the soft edge narrower than the lesion itself
            "edge_width": float(min(self.R.uniform(*self.edge_width_range), max(0.5, 0.5 * min(radii)))),
            "intensity_mode": self.intensity_mode,
        }


# ------------------------------------------------------------------------------------------------ random selection
class RandSyntheticAnomaly(RandomizableTransform):
    """Apply one synthetic anomaly chosen at random with configurable weights.

    Kinds are named as in :data:`PRETEXT_CLASSES`; ``"normal"`` leaves the image unchanged. After a call,
    :attr:`last_kind` is the chosen kind, :attr:`last_class` its class index (0 normal, 1 cut-paste, 2 scar,
    3 foreign, 4 ellipsoid; 0 as well when ``prob`` skipped the transform) and :attr:`last_params` the parameters of
    the applied transform. For the 3-class CutPaste/scar pretext task use
    ``RandSyntheticAnomaly(weights={"normal": 1, "cutpaste": 1, "scar": 1})``.

    Args:
        weights: mapping kind -> non-negative weight (kinds with weight 0 are never chosen). Default:
            ``{"cutpaste": 1, "scar": 1, "ellipsoid": 1}``.
        transforms: optional mapping kind -> configured random transform (e.g. ``{"scar": RandScar(sheet_prob=0)}``);
            missing kinds use the default-constructed transform.
        prob: probability of applying any anomaly.

    Raises:
        ValueError: on unknown kinds, negative or all-zero weights, or transforms of the wrong kind.
    """

    _defaults: dict[str, type] = {
        "cutpaste": RandCutPaste,
        "scar": RandScar,
        "foreign": RandForeignPatchBlend,
        "ellipsoid": RandEllipsoidLesion,
    }

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        transforms: Mapping[str, _RandAnomalyBase] | None = None,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob=_check_prob(prob, "prob"))
        weights = dict(weights) if weights is not None else {"cutpaste": 1.0, "scar": 1.0, "ellipsoid": 1.0}
        transforms = dict(transforms or {})
        for k in list(weights) + list(transforms):
            if k not in PRETEXT_CLASSES:
                raise ValueError(f"unknown anomaly kind {k!r}, expected one of {PRETEXT_CLASSES}.")
        if "normal" in transforms:
            raise ValueError("'normal' takes no transform.")
        w = {k: float(v) for k, v in weights.items()}
        if any(not np.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}.")
        self.kinds = tuple(k for k, v in w.items() if v > 0)
        total = sum(w[k] for k in self.kinds)
        self.probs = np.asarray([w[k] / total for k in self.kinds])
        self.transforms: dict[str, _RandAnomalyBase] = {}
        for k in self.kinds:
            if k == "normal":
                continue
            t = transforms.get(k, None) or self._defaults[k]()
            if not isinstance(t, self._defaults[k]):
                raise ValueError(f"transform for {k!r} must be a {self._defaults[k].__name__}, got {type(t)}.")
            t.prob = 1.0
            self.transforms[k] = t
        self.last_kind: str = "normal"

    @property
    def last_class(self) -> int:
        """Class index of the last choice (see :func:`pretext_class_index`)."""
        return pretext_class_index(self.last_kind)

    @property
    def last_params(self) -> dict[str, Any] | None:
        """Parameters of the last applied anomaly (``None`` for ``"normal"``)."""
        t = self.transforms.get(self.last_kind)
        return None if t is None else t.last_params

    def get_params(self) -> dict[str, Any] | None:
        return None if self.last_params is None else dict(self.last_params)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for k in sorted(self.transforms):
            self.transforms[k].set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(  # type: ignore[override]
        self,
        img: NdarrayOrTensor,
        restrict_mask: NdarrayOrTensor | None = None,
        foreign: NdarrayOrTensor | None = None,
    ) -> None:
        """Choose the kind and sample its parameters."""
        super().randomize(None)
        self.last_kind = "normal"
        if not self._do_transform:
            return
        kind = str(self.kinds[int(self.R.choice(len(self.kinds), p=self.probs))])
        self.last_kind = kind
        if kind == "foreign":
            self.transforms[kind].randomize(img, foreign, restrict_mask)  # type: ignore[call-arg]
        elif kind != "normal":
            self.transforms[kind].randomize(img, restrict_mask)

    def __call__(  # type: ignore[override]
        self,
        img: NdarrayOrTensor,
        restrict_mask: NdarrayOrTensor | None = None,
        foreign: NdarrayOrTensor | None = None,
        randomize: bool = True,
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Return ``(image, change_mask)``; ``randomize=False`` reuses the last choice and parameters."""
        if randomize:
            self.randomize(img, restrict_mask, foreign)
        t = self.transforms.get(self.last_kind)
        if t is None:
            _as_numpy(img)
            return img, _empty_mask(img)
        if self.last_kind == "foreign":
            return t(img, foreign=foreign, randomize=False)  # type: ignore[call-arg]
        return t(img, randomize=False)
