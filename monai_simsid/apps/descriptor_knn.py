"""Normative multi-scale descriptor memory: kNN distance of each voxel's local appearance to normal scans.

Every voxel is described by its HU smoothed with Gaussians of several widths in mm (by default 1.5, 3, 5, 8 and
12 mm): a small vector that says how dense the voxel is and how far that density extends, which separates a compact
nodule (dense at every scale up to its size) from a vessel (dense only at the finest scales) and from parenchyma.
:class:`DescriptorKNN` stores a random sample of these descriptors from the lung regions of normal scans (a memory
bank, in the spirit of PatchCore, but of fixed physical descriptors rather than learned features, so it needs no
training and is stable across scanners) and scores a voxel by the mean distance to its ``k`` nearest normal
descriptors, each feature divided by its spread over the normal bank. Everything it stores comes from normal scans.

Smoothed HU cannot tell a small nodule from a vessel of the same width and density. By default the descriptor also
holds their shape (:func:`hessian_shape_descriptors`): at 1.5, 3 and 5 mm, the blob strength and the blob-or-tube
strength of the HU, read off the eigenvalues of its Hessian (a nodule curves down in three directions, a vessel in
two). ``shape_scales_mm=()`` leaves them out.

With ``context="lung_depth"`` (for whole chest scans) each descriptor also holds the voxel's signed distance to the
boundary of the closed lung envelope (:func:`lung_envelope_depth`): the same soft tissue is normal in the chest wall
and the mediastinum just outside the envelope, and abnormal deep inside it (a mass, including one touching the
pleura, which the envelope's closing takes in). A small VOI inside the lung (e.g. a nodule crop) has no envelope:
use ``context=None`` there.

Arrays are spatial ``(X, Y, Z)`` numpy arrays in Hounsfield units (axis 2 axial, as the lung region needs);
spacings in mm. Scales are in mm, so a scan with 5 mm slices and one with 1 mm slices are described alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree

from monai_simsid.apps.rules import _bbox, _check_mask, _check_spacing, _check_volume, lung_region_mask
from monai_simsid.utils.atomic import atomic_path
from monai_simsid.utils.errors import InputError

__all__ = [
    "CONTEXTS",
    "DescriptorKNN",
    "check_search_mm",
    "hessian_shape_descriptors",
    "lung_envelope_depth",
    "multiscale_descriptors",
    "search_step",
]

DEFAULT_SCALES_MM = (1.5, 3.0, 5.0, 8.0, 12.0)
#: Gaussian widths (mm) of the Hessian shape features; ``()`` leaves them out
DEFAULT_SHAPE_SCALES_MM = (1.5, 3.0, 5.0)
HU_RANGE = (-1000.0, 400.0)  # bone and metal above 400 HU would dominate every smoothed value
#: context features a descriptor may carry besides the smoothed HU
CONTEXTS = (None, "lung_depth")
#: the signed envelope depth is clipped to this range (mm): beyond 10 mm outside, the lung region ends (it adds 5 mm);
#: 30 mm inside is deep lung whatever lies deeper
DEPTH_RANGE_MM = (-10.0, 30.0)


def _check_hu_max(hu_max: float) -> float:
    value = float(hu_max)
    if not np.isfinite(value) or value <= -400.0:
        raise ValueError(f"hu_max must be a finite HU value above -400 (soft tissue must stay above it), got {hu_max}.")
    return value


def _check_scales(scales_mm: Sequence[float], name: str = "scales_mm", allow_empty: bool = False) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales_mm)
    if (not scales and not allow_empty) or not all(np.isfinite(s) and s > 0 for s in scales):
        what = "zero or more" if allow_empty else "one or more"
        raise ValueError(f"{name} must be {what} positive values (mm), got {scales_mm}.")
    return scales


def _gaussian_filters(image: np.ndarray, inner: np.ndarray, jobs: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """``[ndimage.gaussian_filter(image, mode="nearest", **job)[inner] for job in jobs]``, on as many threads as torch
    may use (``torch.get_num_threads()``, e.g. ``OMP_NUM_THREADS``). scipy's filters release the GIL and run one
    thread each, so the threads filter in parallel; the results are the same as one after the other."""

    def run(job: dict[str, Any]) -> np.ndarray:
        return ndimage.gaussian_filter(image, mode="nearest", **job)[inner]

    workers = min(len(jobs), max(1, torch.get_num_threads()))
    if workers <= 1:
        return [run(job) for job in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, jobs))


def multiscale_descriptors(
    image_hu: Any,
    spacing: Sequence[float],
    mask: Any = None,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    hu_max: float = HU_RANGE[1],
) -> np.ndarray:
    """Gaussian-smoothed HU at each scale, for the voxels of ``mask``.

    HU is clipped to ``[-1000, hu_max]`` first (400 by default). Smoothing runs on the mask's bounding box grown by three widths of the
    largest scale (edge values repeated beyond the array), so the result does not depend on what lies far away.

    Args:
        image_hu: CT ``(X, Y, Z)`` in HU.
        spacing: voxel size in mm per axis.
        mask: voxels to describe (default: all).
        scales_mm: Gaussian standard deviations in mm.
        hu_max: the ceiling of the HU clip (see :class:`DescriptorKNN`).

    Returns:
        float32 array ``(n_mask_voxels, len(scales_mm))`` in the mask's C order.

    Raises:
        ValueError: on a non-3D image, bad spacing, a mismatching mask or bad scales.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    scales = _check_scales(scales_mm)
    mask = np.ones(img.shape, dtype=bool) if mask is None else _check_mask(mask, img.shape, "mask")
    out = np.zeros((int(mask.sum()), len(scales)), dtype=np.float32)
    if not out.shape[0]:
        return out
    box = _bbox(mask, np.ceil(3.0 * max(scales) / sp).astype(int) + 1)
    sub = np.clip(img[box].astype(np.float32), HU_RANGE[0], _check_hu_max(hu_max))
    inner = mask[box]
    for i, smoothed in enumerate(_gaussian_filters(sub, inner, [{"sigma": s / sp} for s in scales])):
        out[:, i] = smoothed
    return out


def hessian_shape_descriptors(
    image_hu: Any,
    spacing: Sequence[float],
    mask: Any = None,
    scales_mm: Sequence[float] = DEFAULT_SHAPE_SCALES_MM,
    hu_max: float = HU_RANGE[1],
) -> np.ndarray:
    """Blob and tube strength of the HU at each scale, from the eigenvalues of its Hessian, for the voxels of ``mask``.

    At each Gaussian width ``s`` the Hessian of the smoothed HU (clipped to ``[-1000, hu_max]``, derivatives in mm) is
    scale-normalised by ``s**2`` and its eigenvalues sorted ``l1 <= l2 <= l3``. A bright structure curves down
    across itself: a compact blob (a nodule) in all three directions (``l3 < 0``), a tube (a vessel) in two
    (``l2 < 0``, ``l3`` near 0), a sheet (a fissure, the pleura) in one. The two features per scale are
    ``max(-l3, 0)`` (blob strength) and ``max(-l2, 0)`` (blob or tube), in HU. Smoothed HU alone cannot tell a
    small nodule from a vessel of the same width and density; these can. Along an axis whose voxels are coarser than
    ``s`` the width is one voxel instead, normalised by that width: second derivatives below the sampling are noise.

    Args:
        image_hu: CT ``(X, Y, Z)`` in HU.
        spacing: voxel size in mm per axis.
        mask: voxels to describe (default: all).
        scales_mm: Gaussian standard deviations in mm (may be empty: no features).

    Returns:
        float32 array ``(n_mask_voxels, 2 * len(scales_mm))``: per scale, blob then blob-or-tube strength, in the
        mask's C order.

    Raises:
        ValueError: on a non-3D image, bad spacing, a mismatching mask or bad scales.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    scales = _check_scales(scales_mm, "shape_scales_mm", allow_empty=True)
    mask = np.ones(img.shape, dtype=bool) if mask is None else _check_mask(mask, img.shape, "mask")
    n = int(mask.sum())
    out = np.zeros((n, 2 * len(scales)), dtype=np.float32)
    if not n or not scales:
        return out
    box = _bbox(mask, np.ceil(6.0 * max(scales) / sp).astype(int) + 1)
    sub = np.clip(img[box].astype(np.float32), HU_RANGE[0], _check_hu_max(hu_max))
    inner = mask[box]
    pairs = [(i, j) for i in range(3) for j in range(i, 3)]  # (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    hessian = np.empty((6, n), dtype=np.float32)
    for k, s in enumerate(scales):
        sigma = np.maximum(s / sp, 1.0)  # voxels; second derivatives finer than the sampling are noise
        width = sigma * sp  # the width in mm actually used per axis
        orders = [[int(i == a) + int(j == a) for a in range(3)] for i, j in pairs]
        # 6 widths, not scipy's 4: a derivative kernel cut at 4 widths does not sum to 0, and on the -850 HU of
        # the lung that left an offset that jumped when rounding moved the cut by one voxel
        jobs = [{"sigma": sigma, "order": order, "truncate": 6.0} for order in orders]
        for row, ((i, j), d) in enumerate(zip(pairs, _gaussian_filters(sub, inner, jobs))):
            hessian[row] = d * np.float32(width[i] * width[j] / (sp[i] * sp[j]))
        for start in range(0, n, 1_000_000):  # bound the float64 temporaries
            h = hessian[:, start : start + 1_000_000].astype(np.float64)
            middle, largest = _symmetric_eigenvalues(h[0], h[3], h[5], h[1], h[2], h[4])[1:]
            out[start : start + h.shape[1], 2 * k] = np.maximum(-largest, 0)
            out[start : start + h.shape[1], 2 * k + 1] = np.maximum(-middle, 0)
    return out


def _symmetric_eigenvalues(a11, a22, a33, a12, a13, a23) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending eigenvalues of many symmetric 3x3 matrices given by their six entries (arrays), in closed form
    (the trigonometric solution of the characteristic cubic): many times faster than ``np.linalg.eigvalsh`` on a
    stack of small matrices."""
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p = np.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * (a12 * a12 + a13 * a13 + a23 * a23)) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    r = np.where(p > 0, det / (2.0 * safe**3), 0.0)
    phi = np.arccos(np.clip(r, -1.0, 1.0)) / 3.0
    largest = q + 2.0 * p * np.cos(phi)
    smallest = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return smallest, 3.0 * q - largest - smallest, largest


def lung_envelope_depth(image_hu: Any, spacing: Sequence[float], mask: Any = None) -> np.ndarray:
    """Signed distance in mm of each ``mask`` voxel to the boundary of the closed lung envelope, clipped to
    ``DEPTH_RANGE_MM``: positive inside, negative outside.

    The envelope is :func:`~monai_simsid.apps.rules.lung_region_mask` without its final dilation (air inside the
    body, closed by 20 mm). The edge of the field of view counts as the envelope's boundary: where a scan cuts the
    lungs, what lies beyond is unknown, so a voxel near the cut is not called deep (a cropped field of view would
    otherwise put soft tissue at its edge deep inside the envelope). Distances are computed on the envelope's
    bounding box grown by the clip range (the same as on the whole array); a scan without an envelope gets the
    outside limit everywhere.

    Args:
        image_hu: chest CT ``(X, Y, Z)`` in HU, axis 2 axial.
        spacing: voxel size in mm per axis.
        mask: voxels to describe (default: all).

    Returns:
        float32 array ``(n_mask_voxels,)`` in the mask's C order.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    mask = np.ones(img.shape, dtype=bool) if mask is None else _check_mask(mask, img.shape, "mask")
    env = lung_region_mask(img, sp, dilation_mm=0.0)
    depth = np.full(img.shape, DEPTH_RANGE_MM[0], dtype=np.float32)
    if env.any():
        box = _bbox(env, np.ceil(-DEPTH_RANGE_MM[0] / sp).astype(int) + 2)
        inner = np.pad(env[box], 1)  # the field of view's edge is outside the envelope
        inside = ndimage.distance_transform_edt(inner, sampling=sp)
        signed = inside - ndimage.distance_transform_edt(~inner, sampling=sp)
        depth[box] = np.clip(signed[(slice(1, -1),) * img.ndim], *DEPTH_RANGE_MM)
    return depth[mask]


def check_search_mm(search_mm: float | str | None) -> float | None:
    """``search_mm`` as a float, or ``None`` (search every voxel; also given as ``"none"``, since a command line
    cannot pass None: MONAI's ``bundle run`` drops a None override).

    Raises:
        ValueError: when it is neither ``None``/``"none"`` nor a positive finite value.
    """
    if search_mm is None or (isinstance(search_mm, str) and search_mm.lower() == "none"):
        return None
    if isinstance(search_mm, bool) or not isinstance(search_mm, (int, float, np.number)) or not np.isfinite(search_mm) \
            or search_mm <= 0:
        raise ValueError(f"search_mm must be a positive value (mm) or None, got {search_mm!r}.")
    return float(search_mm)


def search_step(spacing: Sequence[float], search_mm: float | None) -> tuple[int, ...]:
    """Per-axis voxel step of a search grid of about ``search_mm`` (at least every voxel; ``None``: every voxel).

    Example: ``search_step((1.5, 1.5, 1.5), 3.0) == (2, 2, 2)``; ``search_step((0.7, 0.7, 5.0), 3.0) == (4, 4, 1)``.
    """
    sp = _check_spacing(spacing)
    search_mm = check_search_mm(search_mm)
    if search_mm is None:
        return (1,) * len(sp)
    return tuple(max(1, int(np.floor(search_mm / float(s) + 1e-6))) for s in sp)


def _descriptors(
    image_hu: Any,
    spacing: Sequence[float],
    mask: Any,
    scales_mm: Sequence[float],
    shape_scales_mm: Sequence[float],
    context: str | None,
    depth: Any = None,
    hu_max: float = HU_RANGE[1],
) -> np.ndarray:
    feats = multiscale_descriptors(image_hu, spacing, mask, scales_mm, hu_max)
    if shape_scales_mm:
        feats = np.concatenate([feats, hessian_shape_descriptors(image_hu, spacing, mask, shape_scales_mm, hu_max)], axis=1)
    if context == "lung_depth":
        if depth is None:
            values = lung_envelope_depth(image_hu, spacing, mask)
        else:
            depth = np.asarray(depth, dtype=np.float32)
            if depth.shape != np.shape(image_hu):
                raise ValueError(f"depth {depth.shape} and image {np.shape(image_hu)} differ in shape.")
            values = np.clip(depth[np.ones(depth.shape, bool) if mask is None else np.asarray(mask, bool)], *DEPTH_RANGE_MM)
        feats = np.concatenate([feats, values[:, None]], axis=1)
    return feats


class DescriptorKNN:
    """kNN distance of multi-scale HU descriptors to a memory bank of normal descriptors.

    Args:
        scales_mm: Gaussian widths of the descriptor (see :func:`multiscale_descriptors`).
        shape_scales_mm: Gaussian widths of its Hessian shape features (see :func:`hessian_shape_descriptors`);
            ``()``: none.
        k: neighbours averaged in the score (>= 1).
        bank_size: descriptors kept from the normal scans (a uniform random sample of their pooled mask voxels).
        seed: seed of that sample.
        context: ``None`` (smoothed HU only) or ``"lung_depth"`` (plus the signed depth in the lung envelope, see
            :func:`lung_envelope_depth`; for whole chest scans, not for crops inside the lung).
        hu_max: HU are clipped to ``[-1000, hu_max]`` before they are described. 400 (the default) keeps contrast
            and calcium denser than soft tissue; 130 (the calcium threshold) reads contrast-filled vessels, calcium
            and bone as dense soft tissue; 40 (about the density of blood without contrast; simsid_ct's ceiling since
            0.15.0) reads a vessel alike with contrast and without, so a memory of contrast-enhanced normal scans
            does not take the vessels of a scan without contrast for anomalies. So low a ceiling needs the shape
            features (``shape_scales_mm``): without them, the density above it is what tells a mass from a vessel.

    Example::

        knn = DescriptorKNN().fit(normal_images, normal_lung_masks, spacings)
        score = knn(image_hu, lung_region_mask(image_hu, spacing), spacing)
    """

    def __init__(
        self,
        scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
        k: int = 10,
        bank_size: int = 120_000,
        seed: int = 0,
        context: str | None = None,
        shape_scales_mm: Sequence[float] = DEFAULT_SHAPE_SCALES_MM,
        hu_max: float = HU_RANGE[1],
    ) -> None:
        self.scales_mm = _check_scales(scales_mm)
        self.hu_max = _check_hu_max(hu_max)
        self.shape_scales_mm = _check_scales(shape_scales_mm, "shape_scales_mm", allow_empty=True)
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
        self.context = context
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        if int(bank_size) < 1:
            raise ValueError(f"bank_size must be >= 1, got {bank_size}.")
        self.k, self.bank_size, self.seed = int(k), int(bank_size), int(seed)
        self.bank: np.ndarray | None = None  # (n, num_features) descriptors divided by ``scale``
        self.scale: np.ndarray | None = None  # per-feature standard deviation over the normal descriptors
        self._tree: cKDTree | None = None
        #: index (in fit order) of the scan each bank row came from; set by :meth:`fit_scans` (not stored)
        self.bank_sources: np.ndarray | None = None

    @property
    def num_features(self) -> int:
        """Descriptor length: one per scale, two per shape scale, plus one for the context (the last feature)."""
        return len(self.scales_mm) + 2 * len(self.shape_scales_mm) + (self.context is not None)

    @property
    def is_fitted(self) -> bool:
        """Whether the bank is set."""
        return self.bank is not None

    def fit(
        self, normal_images_hu: Sequence[Any], normal_masks: Sequence[Any], spacings: Sequence[Sequence[float]]
    ) -> DescriptorKNN:
        """Build the bank from the mask voxels of normal scans.

        Args:
            normal_images_hu: normal CT volumes ``(X, Y, Z)`` in HU.
            normal_masks: the region of each to sample (e.g. its lung region).
            spacings: their voxel sizes in mm.

        Returns:
            ``self``.

        Raises:
            ValueError: on empty or mismatching inputs, or masks with fewer than ``k`` voxels in all.
        """
        if not (len(normal_images_hu) == len(normal_masks) == len(spacings)) or len(normal_images_hu) == 0:
            raise ValueError(
                "normal_images_hu, normal_masks and spacings must be non-empty and of the same length, got "
                f"{len(normal_images_hu)}, {len(normal_masks)} and {len(spacings)}."
            )
        return self.fit_scans(zip(normal_images_hu, normal_masks, spacings))

    def fit_scans(self, scans: Iterable[tuple]) -> DescriptorKNN:
        """Build the bank from ``(image_hu, mask, spacing)`` normal scans read one at a time (e.g. a generator that
        loads them), so memory holds one scan and the bank, however many scans there are. A scan may come as
        ``(image_hu, mask, spacing, depth)`` with its precomputed lung-envelope depth (see :meth:`__call__`).

        The bank is a uniform random sample (without replacement) of ``bank_size`` of all the scans' mask voxels:
        every voxel gets a seeded uniform random key and the bank keeps the smallest keys seen so far.

        Raises:
            ValueError: when there is no scan, or the masks hold fewer than ``k`` voxels in all.
        """
        rng = np.random.default_rng(self.seed)
        bank = np.zeros((0, self.num_features), dtype=np.float32)
        keys = np.zeros(0)
        sources = np.zeros(0, dtype=np.int32)
        n_scans = n_voxels = 0
        for image, mask, spacing, *depth in scans:
            feats = _descriptors(image, spacing, mask, self.scales_mm, self.shape_scales_mm, self.context, *depth,
                                 hu_max=self.hu_max)
            bank, keys = np.concatenate([bank, feats]), np.concatenate([keys, rng.random(feats.shape[0])])
            sources = np.concatenate([sources, np.full(feats.shape[0], n_scans, dtype=np.int32)])
            n_scans, n_voxels = n_scans + 1, n_voxels + feats.shape[0]
            if keys.size > self.bank_size:
                keep = np.sort(np.argpartition(keys, self.bank_size - 1)[: self.bank_size])
                bank, keys, sources = bank[keep], keys[keep], sources[keep]
        if n_scans == 0:
            raise ValueError("no normal scan to fit on.")
        if n_voxels < self.k:
            raise ValueError(f"the normal masks hold {n_voxels} voxels; at least k={self.k} are needed.")
        scale = np.maximum(bank.astype(np.float64).std(axis=0), 1e-3)
        self._set(bank / scale, scale)
        self.bank_sources = sources
        return self

    def _set(self, bank: np.ndarray, scale: np.ndarray) -> None:
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float64)
        self._tree = cKDTree(self.bank)

    def __call__(
        self,
        image_hu: Any,
        mask: Any,
        spacing: Sequence[float],
        chunk: int = 1_000_000,
        depth: Any = None,
        step: int | Sequence[int] = 1,
    ) -> np.ndarray:
        """Mean distance to the ``k`` nearest normal descriptors inside ``mask``, 0 outside (float32, image shape).

        ``depth`` (image shape, mm): the signed lung-envelope depth when it is already known (e.g. computed on a
        sub-sampled grid, as :func:`~monai_simsid.apps.normative.lung_depth_from_windows` does); by default the
        ``"lung_depth"`` context computes it with :func:`lung_envelope_depth`. The same kind of depth must be used
        to fit and to score.

        ``step`` > 1 (one value, or one per axis) searches the bank only on every ``step``-th voxel per axis (those
        whose interpolation cell touches ``mask``; the descriptors themselves are smoothed at full resolution) and
        interpolates the distances trilinearly to the other voxels: the search dominates the cost, and ``step=2``
        makes it about eight times cheaper. The descriptors are smoothed over 1.5 mm and more, so on a grid of
        1.5 mm or finer the distance changes little from one voxel to the next (see :func:`search_step` for a step
        from a spacing). Units and thresholds must be measured with the same steps.

        Raises:
            RuntimeError: if not fitted.
            ValueError: on mismatching shapes, bad spacing or a bad ``step``.
        """
        if not self.is_fitted:
            raise RuntimeError("DescriptorKNN is not fitted: call fit() or from_dict() first.")
        img = _check_volume(image_hu)
        steps = (step,) * img.ndim if isinstance(step, (int, np.integer)) and not isinstance(step, bool) else tuple(step)
        if len(steps) != img.ndim or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in steps):
            raise ValueError(f"step must be a positive integer or one per axis, got {step!r}.")
        mask = _check_mask(mask, img.shape, "mask")
        if depth is not None and np.shape(depth) != img.shape:
            raise ValueError(f"depth {np.shape(depth)} and image {img.shape} differ in shape.")
        if all(s == 1 for s in steps) or not mask.any():
            out = np.zeros(img.shape, dtype=np.float32)
            feats = _descriptors(img, spacing, mask, self.scales_mm, self.shape_scales_mm, self.context, depth, self.hu_max)
            out[mask] = self._search(feats, chunk)
            return out
        steps = tuple(int(s) for s in steps)
        # pad at the end (edge values, as the smoothing does) so that the last voxel of each axis is a coarse node
        pad = [(0, (-(n - 1)) % s) for n, s in zip(img.shape, steps)]
        img_p = np.pad(img, pad, mode="edge")
        if depth is None and self.context == "lung_depth":  # the depth of the scan as it is, not of the padded one
            depth = lung_envelope_depth(img, spacing).reshape(img.shape)
        depth_p = None if depth is None else np.pad(np.asarray(depth, dtype=np.float32), pad, mode="edge")
        # a coarse node is needed when a mask voxel lies within step - 1 voxels of it on every axis (its cell)
        need = F.max_pool3d(
            torch.from_numpy(np.pad(mask, pad).astype(np.float32))[None, None],
            kernel_size=tuple(2 * s - 1 for s in steps), stride=steps, padding=tuple(s - 1 for s in steps),
        )[0, 0].numpy() > 0
        nodes = np.zeros(img_p.shape, dtype=bool)
        nodes[tuple(slice(None, None, s) for s in steps)] = need
        coarse = np.zeros(need.shape, dtype=np.float32)
        feats = _descriptors(img_p, spacing, nodes, self.scales_mm, self.shape_scales_mm, self.context, depth_p, self.hu_max)
        coarse[need] = self._search(feats, chunk)
        full = F.interpolate(torch.from_numpy(coarse)[None, None], size=img_p.shape, mode="trilinear", align_corners=True)
        full = full[0, 0].numpy()[tuple(slice(0, n) for n in img.shape)]
        return np.where(mask, full, np.float32(0)).astype(np.float32)

    def _search(self, feats: np.ndarray, chunk: int) -> np.ndarray:
        """Mean distance of each (unscaled) descriptor to its ``k`` nearest bank rows."""
        feats = feats / self.scale.astype(np.float32)
        scores = np.empty(feats.shape[0], dtype=np.float32)
        for start in range(0, feats.shape[0], chunk):
            dist, _ = self._tree.query(feats[start : start + chunk], k=self.k, workers=-1)
            scores[start : start + chunk] = np.asarray(dist, dtype=np.float64).reshape(len(dist), -1).mean(axis=1)
        return scores

    def leave_out(self, source: int) -> DescriptorKNN:
        """The same memory without the bank rows of the ``source``-th fitted scan (same per-feature scale).

        A scan's own voxels sit next to it in descriptor space, so its distances to a bank that holds them are
        optimistic; distances to the bank of the other scans are those of a scan the memory has not seen.

        Raises:
            RuntimeError: when the memory was not fitted by :meth:`fit_scans` in this process.
            ValueError: when fewer than ``k`` rows would remain.
        """
        if self.bank_sources is None:
            raise RuntimeError("leave_out needs the scan of each bank row: fit the memory with fit() or fit_scans().")
        keep = self.bank_sources != int(source)
        if int(keep.sum()) < self.k:
            raise ValueError(f"leaving out scan {source} keeps {int(keep.sum())} bank rows; at least k={self.k} are needed.")
        out = self._like(self.context)
        out._set(self.bank[keep], self.scale)
        out.bank_sources = self.bank_sources[keep]
        return out

    def without_context(self) -> DescriptorKNN:
        """The same fitted bank with the context feature dropped: a memory for voxels without a lung envelope (e.g.
        a crop inside the lung), drawn from the same normal voxels."""
        return self._columns(None, self.shape_scales_mm)

    def with_shape_scales(self, shape_scales_mm: Sequence[float]) -> DescriptorKNN:
        """The same fitted bank with only the shape features of ``shape_scales_mm`` (a subset of this memory's
        widths): the memory that fitting with those widths would give, from the same normal voxels, without
        describing them again.

        Raises:
            RuntimeError: if not fitted.
            ValueError: a width this memory does not have.
        """
        keep = _check_scales(shape_scales_mm, "shape_scales_mm", allow_empty=True)
        unknown = [s for s in keep if s not in self.shape_scales_mm]
        if unknown:
            raise ValueError(f"shape widths {unknown} are not among this memory's {list(self.shape_scales_mm)}.")
        return self._columns(self.context, keep)

    def _columns(self, context: str | None, shape_scales_mm: Sequence[float]) -> DescriptorKNN:
        """The same fitted bank restricted to the HU features, the shape features of ``shape_scales_mm`` (a subset of
        this memory's) and the context feature if ``context`` is kept: the same normal voxels, the same scale."""
        if not self.is_fitted:
            raise RuntimeError("DescriptorKNN is not fitted: call fit() or from_dict() first.")
        n_hu = len(self.scales_mm)
        columns = list(range(n_hu))
        for s in shape_scales_mm:
            k = self.shape_scales_mm.index(s)
            columns += [n_hu + 2 * k, n_hu + 2 * k + 1]
        if context is not None:
            columns.append(self.num_features - 1)  # the context is the last feature
        out = self._like(context, shape_scales_mm)
        out._set(self.bank[:, columns], self.scale[columns])
        out.bank_sources = self.bank_sources
        return out

    def _like(self, context: str | None, shape_scales_mm: Sequence[float] | None = None) -> DescriptorKNN:
        """An unfitted memory with these settings, ``context`` and ``shape_scales_mm`` (default: this memory's)."""
        return DescriptorKNN(
            self.scales_mm, k=self.k, bank_size=self.bank_size, seed=self.seed, context=context,
            shape_scales_mm=self.shape_scales_mm if shape_scales_mm is None else shape_scales_mm, hu_max=self.hu_max,
        )

    def state_dict(self) -> dict[str, Any]:
        """State: the settings, the per-feature ``scale`` and the (scaled) ``bank`` as numpy arrays."""
        return {
            "scales_mm": list(self.scales_mm),
            "shape_scales_mm": list(self.shape_scales_mm),
            "k": self.k,
            "bank_size": self.bank_size,
            "seed": self.seed,
            "context": self.context,
            "hu_max": self.hu_max,
            "scale": None if self.scale is None else self.scale.copy(),
            "bank": None if self.bank is None else self.bank.copy(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> DescriptorKNN:
        """Rebuild a fitted memory from :meth:`state_dict`. A state without ``shape_scales_mm`` (written before the
        shape features) has none; one without ``hu_max`` clipped at 400 HU.

        Raises:
            ValueError: when a key is missing, or the bank and scale do not match the scales.
        """
        missing = [key for key in ("scales_mm", "k", "scale", "bank") if state.get(key) is None]
        if missing:
            raise ValueError(f"state is missing the keys {missing}.")
        out = cls(
            state["scales_mm"], k=state["k"], bank_size=state.get("bank_size", 120_000), seed=state.get("seed", 0),
            context=state.get("context"), shape_scales_mm=state.get("shape_scales_mm") or (),
            hu_max=state.get("hu_max", HU_RANGE[1]),
        )
        bank, scale = np.asarray(state["bank"], dtype=np.float32), np.asarray(state["scale"], dtype=np.float64)
        n = out.num_features
        if bank.ndim != 2 or bank.shape[1] != n or scale.shape != (n,) or bank.shape[0] < out.k or np.any(scale <= 0):
            raise ValueError(f"bank {bank.shape} and scale {scale.shape} do not fit {n} features and k={out.k}.")
        out._set(bank, scale)
        return out

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the fitted memory (and JSON-serialisable ``extra`` items, e.g. a threshold) to ``.npz``, atomically."""
        if not self.is_fitted:
            raise RuntimeError("DescriptorKNN is not fitted: nothing to save.")
        state = self.state_dict()
        keys = ("scales_mm", "shape_scales_mm", "k", "bank_size", "seed", "context", "hu_max")
        meta = {k: state[k] for k in keys} | {"extra": extra}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary name
                np.savez_compressed(f, bank=state["bank"], scale=state["scale"], meta=np.array(json.dumps(meta)))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[DescriptorKNN, dict[str, Any]]:
        """Read a file written by :meth:`save`; returns the memory and its ``extra`` items.

        Raises:
            InputError: naming the file, when it is missing or not such a file.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "descriptor memory file does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                knn = cls.from_dict({**meta, "bank": z["bank"], "scale": z["scale"]})
        except (OSError, ValueError, KeyError) as err:
            raise InputError(path, f"not a descriptor memory written by DescriptorKNN.save ({err})") from None
        return knn, dict(meta.get("extra", {}))
