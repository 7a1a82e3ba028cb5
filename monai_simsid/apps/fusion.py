"""Fusion of a model's anomaly map with the normative descriptor memory, both fitted on normal scans only.

A reconstruction map and the descriptor memory (:class:`~monai_simsid.apps.descriptor_knn.DescriptorKNN`) fail in
different places. On real chest CT the model's map is bright on the pleural rim and on vessels that it reconstructs
poorly; the descriptor is bright on dense tissue that is unusual for its depth in the lung envelope, whatever a
network makes of it. :class:`DescriptorFusion` takes a weighted mean of the two, each in units of its own normal
threshold:

- the model term is ``2 * sigmoid((z - t) / s)``, with ``z`` the (normalised) model map and ``t``, ``s`` its voxel
  threshold and scale on the normal scans (:func:`~monai_simsid.apps.calibration.compute_calibration`): 1 at the
  threshold, bounded by 2, so no single bright structure of the model dominates;
- the descriptor term is the kNN distance divided by its 99.9th percentile over the normal scans' lung regions: 1 at
  that percentile, unbounded, so a mass far from every normal descriptor stands out.

The fused map is ``w * model + (1 - w) * descriptor`` with the model's weight ``w`` 0.25 by default (0.5, the plain
mean, until simsid_ct 0.14.0). The model term is bright on normal vessels and on the pleural rim, up to its bound of
2, so with equal weights it outranked nodules whose descriptor term was only a little above 1; a quarter is the
weight chosen before it was measured, and it raised the voxel ranking on every real-CT set (``docs/benchmarks.md``,
"The model term weighted a quarter"). The descriptor memory's normal bank holds lung-region voxels only
(:func:`~monai_simsid.apps.rules.lung_region_mask`), so outside the lung region the descriptor term is its median over
the normal lung regions: no evidence either way. The fused map of a normal scan then has the same baseline inside
and outside the lungs, and outside them it ranks voxels as the model does. Nothing is tuned on lesions.

Everything runs on the model grid, from HU read back from the widest input window
(:func:`~monai_simsid.transforms.intensity.array.hu_from_windows`), with the same sub-sampled lung-envelope depth as
:class:`~monai_simsid.apps.normative.LungDepthNormativeMap`. The lung region is read off that depth (the envelope
grown by 5 mm, as :func:`~monai_simsid.apps.rules.lung_region_mask` grows it), and the bank is searched on every
second voxel per axis of a 1.5 mm grid (a search grid of about 3 mm, ``search_mm``) with the distances interpolated in
between; both are about five times cheaper than a full-resolution region and search, and the units are measured the
same way. A scan with a lung envelope uses the memory with the depth feature; an input without a body frame (a crop
inside the lung) uses the same bank without it, over the whole input. A crop is small, so it is searched on every
voxel of its own grid (:meth:`DescriptorFusion.crop_term`; small nodules are a few voxels wide, fewer still on the
1.5 mm model grid), the model term is resampled to that grid and the two are fused there; its unit comes from a
full-resolution search of a random sample of the normal lung-region voxels. The crop memory may hold fewer of the
Hessian shape widths (``crop_shape_scales_mm``: a crop a few centimetres across cannot support a wide second
derivative). Everything comes from normal scans only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_simsid.apps.descriptor_knn import DescriptorKNN, check_search_mm, search_step
from monai_simsid.apps.rules import LUNG_REGION_DILATION_MM, lung_region_mask
from monai_simsid.transforms.intensity.array import hu_from_windows

__all__ = ["REGIONS", "DescriptorFusion", "NoLungRegionError"]

logger = logging.getLogger(__name__)

#: percentile of the normal descriptor distances that is the descriptor term's unit
UNIT_PERCENTILE = 99.9
#: how the lung region of a scan is found: ``"depth"`` reads it off the (sub-sampled) lung-envelope depth, ``"mask"``
#: runs :func:`~monai_simsid.apps.rules.lung_region_mask` at full resolution (simsid_ct 0.7.0)
REGIONS = ("depth", "mask")
#: lung-region voxels per calibration scan (a seeded random sample) on which the crop unit is measured
CROP_UNIT_VOXELS = 200_000
#: the model term's weight in the fused map (simsid_ct 0.14.0 on)
DEFAULT_MODEL_WEIGHT = 0.25
#: the weight of a fusion stored without one (before simsid_ct 0.14.0): the plain mean its thresholds were set with
LEGACY_MODEL_WEIGHT = 0.5


class NoLungRegionError(ValueError):
    """The normal scans have no lung region, so the descriptor memory has nothing to learn from (not chest CT)."""


def _unit(values: Sequence[np.ndarray]) -> float:
    v = np.concatenate([np.asarray(x, dtype=np.float32).reshape(-1) for x in values]) if values else np.zeros(0)
    unit = float(np.percentile(v, UNIT_PERCENTILE)) if v.size else 0.0
    if not np.isfinite(unit) or unit <= 0:
        raise ValueError("the normal scans give no positive descriptor distance: cannot set the descriptor unit.")
    return unit


def _sample(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` voxels of ``mask``, drawn uniformly without replacement."""
    idx = np.flatnonzero(mask)
    out = np.zeros(mask.shape, dtype=bool)
    out.flat[idx if idx.size <= n else rng.choice(idx, n, replace=False)] = True
    return out


def _crop_memory(knn: DescriptorKNN, shape_scales_mm: Sequence[float] | None) -> DescriptorKNN:
    """The memory for inputs without a lung envelope: ``knn`` without its depth feature, with only the shape widths
    ``shape_scales_mm`` (``None``: all of them)."""
    crop = knn.without_context()
    return crop if shape_scales_mm is None else crop.with_shape_scales(shape_scales_mm)


def _check_weight(model_weight: float) -> float:
    w = float(model_weight)
    if not 0.0 <= w <= 1.0:  # also rejects NaN
        raise ValueError(f"model_weight must be in [0, 1], got {model_weight}.")
    return w


def _check_region(region: str) -> str:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}.")
    return region


def _lung_region(hu: np.ndarray, spacing: Sequence[float], depth: np.ndarray, region: str) -> np.ndarray:
    """The lung region of a model-space scan: the lung envelope grown by 5 mm, read off its signed ``depth`` (mm) or
    recomputed at full resolution."""
    if region == "mask":
        return lung_region_mask(hu, spacing)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != hu.shape:
        raise ValueError(f"depth {depth.shape} and image {hu.shape} differ in shape.")
    return depth >= -LUNG_REGION_DILATION_MM


class DescriptorFusion:
    """Weighted mean of a model's map and the descriptor memory's distance, each in units of its normal threshold.

    Args:
        knn: a fitted memory with the ``"lung_depth"`` context (see :meth:`fit`).
        unit: the 99.9th percentile of its distances over the normal lung regions.
        unit_crop: the same for the bank without the depth feature (inputs without a lung envelope), searched on every
            voxel of a random sample of the normal lung regions.
        model_threshold, model_scale: the model map's voxel threshold and scale on the normal scans.
        hu_windows: the ``[[low, high], ...]`` HU windows of the model's input channels.
        outside: the descriptor term outside the lung region: its median over the normal lung regions.
        search_mm: a scan with a lung envelope is searched on a grid of about this spacing
            (:func:`~monai_simsid.apps.descriptor_knn.search_step`), the distances interpolated in between (``None``:
            on every voxel); ``unit`` comes from the same search. A crop is always searched on every voxel.
        region: how the lung region is found (one of :data:`REGIONS`).
        crop_shape_scales_mm: the shape widths of the crop memory, a subset of ``knn``'s (``None``: all of them). A
            crop is a few centimetres across (the LIDC crops: median 31 x 31 x 10 mm), so a wide second derivative
            there mostly describes the edge values repeated beyond it.
        model_weight: the model term's weight ``w`` in the fused map ``w * model + (1 - w) * descriptor``, in
            ``[0, 1]``; 0.25 by default (0.5 is the plain mean of simsid_ct 0.7.0-0.13.0).

    Raises:
        ValueError: a memory without the depth context, non-positive units or scale, a bad ``search_mm`` or
            ``region``, crop widths that ``knn`` does not have, or a weight outside ``[0, 1]``.
    """

    kind = "descriptor_mean"

    def __init__(
        self,
        knn: DescriptorKNN,
        unit: float,
        unit_crop: float,
        model_threshold: float,
        model_scale: float,
        hu_windows: Sequence[Sequence[float]],
        outside: float = 0.0,
        search_mm: float | None = 3.0,
        region: str = "depth",
        crop_shape_scales_mm: Sequence[float] | None = None,
        model_weight: float = DEFAULT_MODEL_WEIGHT,
    ) -> None:
        if not isinstance(knn, DescriptorKNN) or not knn.is_fitted or knn.context != "lung_depth":
            raise ValueError("knn must be a fitted DescriptorKNN with the 'lung_depth' context.")
        if not all(np.isfinite(v) and v > 0 for v in (unit, unit_crop, model_scale)) or not np.isfinite(model_threshold):
            raise ValueError(
                f"unit, unit_crop and model_scale must be positive and model_threshold finite, got {unit}, "
                f"{unit_crop}, {model_scale} and {model_threshold}."
            )
        if not np.isfinite(outside) or outside < 0:
            raise ValueError(f"outside must be a finite value >= 0, got {outside}.")
        self.model_weight = _check_weight(model_weight)
        self.search_mm = check_search_mm(search_mm)
        self.region = _check_region(region)
        self.outside = float(outside)
        self.knn = knn
        self.crop_shape_scales_mm = None if crop_shape_scales_mm is None else tuple(float(s) for s in crop_shape_scales_mm)
        self.crop_knn = _crop_memory(knn, self.crop_shape_scales_mm)
        self.unit, self.unit_crop = float(unit), float(unit_crop)
        self.model_threshold, self.model_scale = float(model_threshold), float(model_scale)
        self.hu_windows = [[float(lo), float(hi)] for lo, hi in hu_windows]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        images: Sequence[Any],
        hu_windows: Sequence[Sequence[float]],
        spacings: Sequence[Sequence[float]],
        depths: Sequence[np.ndarray],
        model_threshold: float,
        model_scale: float,
        in_bank: Sequence[bool] | None = None,
        calibrate: Sequence[bool] | None = None,
        search_mm: float | None = 3.0,
        region: str = "depth",
        crop_shape_scales_mm: Sequence[float] | None = None,
        excludes: Sequence[np.ndarray | None] | None = None,
        model_weight: float = DEFAULT_MODEL_WEIGHT,
        **knn_args: Any,
    ) -> tuple[DescriptorFusion, list[tuple[np.ndarray, np.ndarray]]]:
        """Fit the memory on normal model-space images and set both units from normal scans.

        The bank holds the lung-region voxels of the ``in_bank`` scans (e.g. the training normals); the units come
        from the ``calibrate`` scans (e.g. the validation normals). A scan that is in both is scored against the
        bank of the *other* bank scans (:meth:`~monai_simsid.apps.descriptor_knn.DescriptorKNN.leave_out`): its own
        voxels would sit next to it and make the units, and so every threshold, optimistic. With a single bank scan
        that is also the calibration scan there is no other, and a warning says the units are optimistic.

        Args:
            images: normal images ``(C, X, Y, Z)``, one channel per window of ``hu_windows``.
            hu_windows: the windows of the channels.
            spacings: their voxel sizes in mm.
            depths: their lung-envelope depths ``(X, Y, Z)`` (see
                :func:`~monai_simsid.apps.normative.lung_depth_from_windows`).
            model_threshold, model_scale: see the class.
            in_bank, calibrate: per image, whether its voxels fill the bank and whether it sets the units (default:
                every image does both).
            search_mm, region, crop_shape_scales_mm, model_weight: see the class.
            excludes: per image, ``None`` or a bool ``(X, Y, Z)`` region to leave out (see
                :mod:`monai_simsid.data.exclusion`): its voxels fill no bank row and set no unit, and the lung region
                returned with its term does not hold them.
            knn_args: for :class:`~monai_simsid.apps.descriptor_knn.DescriptorKNN` (``k``, ``bank_size``, ``seed``).

        Returns:
            the fusion, and each ``calibrate`` image's ``(descriptor term, lung region)`` (see :meth:`descriptor_term`,
            with the bank its units were measured with), so that the normal maps can be fused without a second search.

        Raises:
            NoLungRegionError: no bank scan has a lung region.
            ValueError: mismatching inputs, or no bank or calibration scan.
        """
        n = len(images)
        in_bank = [True] * n if in_bank is None else [bool(b) for b in in_bank]
        calibrate = [True] * n if calibrate is None else [bool(c) for c in calibrate]
        if not n or not (n == len(spacings) == len(depths) == len(in_bank) == len(calibrate)):
            raise ValueError(
                f"need as many images, spacings, depths and flags (at least one), got {n}, {len(spacings)}, "
                f"{len(depths)}, {len(in_bank)} and {len(calibrate)}."
            )
        if not any(in_bank) or not any(calibrate):
            raise ValueError("need at least one bank scan and one calibration scan.")
        _check_region(region)
        _check_weight(model_weight)
        hus = [hu_from_windows(img, hu_windows)[0].astype(np.float32) for img in images]
        regions = [_lung_region(hu, sp, d, region) for hu, sp, d in zip(hus, spacings, depths)]
        if excludes is not None:
            if len(excludes) != n:
                raise ValueError(f"need one exclusion (or None) per image, got {len(excludes)} for {n} images.")
            regions = [r if e is None else r & ~np.asarray(e, dtype=bool) for r, e in zip(regions, excludes)]
        bank_scans = [i for i in range(n) if in_bank[i] and regions[i].any()]
        if not bank_scans:
            raise NoLungRegionError("the normal scans have no lung region: the descriptor fusion needs chest CT.")
        knn = DescriptorKNN(context="lung_depth", **knn_args).fit_scans(
            (hus[i], regions[i], spacings[i], depths[i]) for i in bank_scans
        )
        if not any(regions[i].any() for i in range(n) if calibrate[i]):
            raise NoLungRegionError("the calibration scans have no lung region: the descriptor fusion needs chest CT.")
        memories = {}
        for i in (i for i in range(n) if calibrate[i]):
            if i in bank_scans and len(bank_scans) > 1:
                memories[i] = knn.leave_out(bank_scans.index(i))
            else:
                if i in bank_scans:
                    logger.warning(
                        "descriptor fusion: one normal scan fills the bank and sets the units; its own voxels are in "
                        "the bank, so the thresholds are optimistic (give more normal scans)."
                    )
                memories[i] = knn
        steps = {i: search_step(spacings[i], search_mm) for i in memories}
        dist = {i: m(hus[i], regions[i], spacings[i], depth=depths[i], step=steps[i]) for i, m in memories.items()}
        inside = np.concatenate([dist[i][regions[i]] for i in memories])
        rng = np.random.default_rng(0)
        samples = {i: _sample(regions[i], CROP_UNIT_VOXELS, rng) for i in memories}
        crop = [
            _crop_memory(m, crop_shape_scales_mm)(hus[i], samples[i], spacings[i])[samples[i]] for i, m in memories.items()
        ]
        unit = _unit([inside])
        fusion = cls(
            knn, unit, _unit(crop), model_threshold, model_scale, hu_windows, float(np.median(inside)) / unit, search_mm,
            region, crop_shape_scales_mm, model_weight,
        )
        return fusion, [(dist[i] / np.float32(unit), regions[i]) for i in memories]

    # ------------------------------------------------------------------ maps
    def descriptor_term(
        self, image: Any, spacing: Sequence[float], depth: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(term, region)`` of a model-space image ``(C, X, Y, Z)``: the descriptor distance in units of its normal
        99.9th percentile (0 outside ``region``) and the region it is defined on.

        With the lung-envelope ``depth`` (a whole scan) the region is the lung region; without it (an input without a
        body frame, e.g. a crop inside the lung) it is the whole input, scored by the bank without the depth feature.
        """
        hu = hu_from_windows(image, self.hu_windows)[0].astype(np.float32)
        if depth is None:
            return self.crop_term(hu, spacing)
        region = _lung_region(hu, spacing, depth, self.region)
        step = search_step(spacing, self.search_mm)
        return self.knn(hu, region, spacing, depth=depth, step=step) / np.float32(self.unit), region

    def crop_term(self, image_hu: Any, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """``(term, region)`` of an input without a body frame (e.g. a nodule crop), given in HU ``(X, Y, Z)`` on any
        grid: the distance to the bank without the depth feature, on every voxel, in units of its normal 99.9th
        percentile; the region is the whole input.

        The predictor calls it on the input's own grid: a nodule of a few millimetres spans only a few voxels of the
        1.5 mm model grid, and the descriptors are defined in mm, so they need no resampling (see the class).
        """
        hu = np.asarray(image_hu, dtype=np.float32)
        region = np.ones(hu.shape, dtype=bool)
        return self.crop_knn(hu, region, spacing) / np.float32(self.unit_crop), region

    def model_term(self, model_map: torch.Tensor) -> torch.Tensor:
        """The model map in units of its normal threshold: ``2 * sigmoid((map - threshold) / scale)``."""
        return 2.0 * torch.sigmoid((torch.as_tensor(model_map).float() - self.model_threshold) / self.model_scale)

    def __call__(self, model_map: torch.Tensor, term: np.ndarray, region: np.ndarray) -> torch.Tensor:
        """The fused map ``(*S)`` or ``(1, *S)``: the weighted mean of both terms (:attr:`model_weight`), with the
        descriptor term's normal median (:attr:`outside`) outside ``region``."""
        return self.fuse(self.model_term(model_map), term, region)

    def fuse(self, model_term: torch.Tensor, term: np.ndarray, region: np.ndarray) -> torch.Tensor:
        """:meth:`__call__` with the model term given (:meth:`model_term`, e.g. resampled to another grid)."""
        m = torch.as_tensor(model_term).float()
        d = torch.as_tensor(np.asarray(term, dtype=np.float32), device=m.device)
        r = torch.as_tensor(np.asarray(region, dtype=bool), device=m.device)
        if tuple(d.shape) != tuple(m.shape[-d.ndim :]) or d.shape != r.shape:
            raise ValueError(f"descriptor term {tuple(d.shape)}, region {tuple(r.shape)} and map {tuple(m.shape)} differ in shape.")
        d = torch.where(r, d, torch.tensor(self.outside, dtype=d.dtype, device=d.device))
        return self.model_weight * m + (1.0 - self.model_weight) * d

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """Stored as ``calibration["fusion"]`` in the checkpoint. The bank and its scale are torch tensors, so that
        ``torch.load(..., weights_only=True)`` (e.g. MONAI's ``ckpt_export``) still reads the checkpoint."""
        knn = self.knn.state_dict()
        knn.update(bank=torch.from_numpy(knn["bank"]), scale=torch.from_numpy(knn["scale"]))
        return {
            "kind": self.kind,
            "unit": self.unit,
            "unit_crop": self.unit_crop,
            "unit_percentile": UNIT_PERCENTILE,
            "outside": self.outside,
            "search_mm": self.search_mm,
            "region": self.region,
            "crop_shape_scales_mm": None if self.crop_shape_scales_mm is None else list(self.crop_shape_scales_mm),
            "model_threshold": self.model_threshold,
            "model_scale": self.model_scale,
            "model_weight": self.model_weight,
            "hu_windows": self.hu_windows,
            "knn": knn,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DescriptorFusion:
        """Rebuild from :meth:`to_dict`.

        A fusion stored without ``search_mm`` and ``region`` (simsid_ct 0.7.0) keeps the full-resolution search and region
        its units were measured with; one stored without ``crop_shape_scales_mm`` (before simsid_ct 0.11.0) scores
        crops with all the memory's shape widths, as its crop unit was measured; one stored without
        ``model_weight`` (before simsid_ct 0.14.0) takes the plain mean, as its thresholds were set.

        Raises:
            ValueError: another kind, or a missing entry.
        """
        if data.get("kind") != cls.kind:
            raise ValueError(f"unknown fusion kind {data.get('kind')!r}; expected {cls.kind!r}.")
        missing = [
            k for k in ("unit", "unit_crop", "model_threshold", "model_scale", "hu_windows", "outside", "knn") if k not in data
        ]
        if missing:
            raise ValueError(f"the stored fusion is missing {missing}.")
        return cls(
            DescriptorKNN.from_dict(data["knn"]), data["unit"], data["unit_crop"], data["model_threshold"],
            data["model_scale"], data["hu_windows"], data["outside"], data.get("search_mm"), data.get("region", "mask"),
            data.get("crop_shape_scales_mm"), data.get("model_weight", LEGACY_MODEL_WEIGHT),
        )
