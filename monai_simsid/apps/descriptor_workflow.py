"""The descriptor memory as a bundle model: a scan's lung region, fitting and calibrating the memory, its file.

:class:`~monai_simsid.apps.descriptor_knn.DescriptorKNN` needs no gradient training, only normal scans. This module
turns a datalist into a fitted and calibrated memory file and reads it back, for
``bundles/descriptor_knn_ct`` (``train.json`` calls :func:`fit_descriptor_memory`, ``inference.json``
:func:`load_descriptor_memory` and :class:`~monai_simsid.apps.descriptor_inference.DescriptorPredictor`):

- every scan is read in its own voxel grid and looked at in closest-RAS voxel order (a permutation and flips of the
  axes, no resampling: :func:`to_canonical`), because the lung region needs axis 2 axial; maps are turned back
  exactly afterwards (:func:`from_canonical`);
- the map is the kNN distance inside the lung region (:func:`~monai_simsid.apps.rules.lung_region_mask`, or
  :func:`~monai_simsid.apps.rules.crop_lung_region_mask` with ``region="crop"`` for small VOIs inside the lung), 0
  elsewhere;
- calibration uses the project's code on normal scans only
  (:func:`~monai_simsid.apps.calibration.compute_calibration`): the validation normals of the datalist, or its
  training normals when there are none (recorded in the file); the voxel threshold is the ``1 - voxel_fpr``
  quantile of the normal lung-region voxels, the scan score the package's ``topk`` score
  (:func:`~monai_simsid.inferers.scoring.scan_score`) over the lung region.

The memory file is the ``.npz`` of :meth:`DescriptorKNN.save <monai_simsid.apps.descriptor_knn.DescriptorKNN.save>`
(bank, feature scales and settings; no pickle), written atomically, whose JSON ``extra`` holds ``bundle``,
``version``, ``region``, ``calibration`` (the dict of :func:`compute_calibration` plus ``topk_fraction`` and
``score_method``), ``calibrated_on`` (``"validation"`` or ``"training"``), ``n_training`` and ``n_calibration``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import torch

from monai_simsid.apps.audit import audit_normal_terms, report_audit
from monai_simsid.apps.calibration import compute_calibration
from monai_simsid.apps.descriptor_knn import (
    CONTEXTS,
    DEFAULT_SCALES_MM,
    DEFAULT_SHAPE_SCALES_MM,
    HU_RANGE,
    DescriptorKNN,
    check_search_mm,
    search_step,
)
from monai_simsid.apps.rules import crop_lung_region_mask, lung_region_mask
from monai_simsid.data.datalist import load_datalist, split_sections
from monai_simsid.data.datasets import select_calibration_items
from monai_simsid.data.exclusion import EXCLUDE_KEY, grow_mask
from monai_simsid.inferers.scoring import scan_score
from monai_simsid.transforms.io.array import LoadCT, check_mask_matches
from monai_simsid.transforms.post.array import spacing_from_affine
from monai_simsid.utils.errors import InputError

__all__ = [
    "CALIBRATION_KEYS",
    "REGIONS",
    "ScanRegion",
    "descriptor_map",
    "fit_descriptor_memory",
    "from_canonical",
    "load_descriptor_memory",
    "load_scan_region",
    "region_scan_score",
    "resolve_context",
    "to_canonical",
]

logger = logging.getLogger(__name__)

REGIONS = ("scan", "crop")
#: what inference reads from a memory file's calibration
CALIBRATION_KEYS = ("source", "fpr", "voxel_fpr", "scan_threshold", "scan_std", "voxel_threshold", "voxel_scale")


def _check_region(region: str) -> str:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}.")
    return region


def resolve_context(region: str, context: str | None = "auto") -> str | None:
    """The descriptor context for ``region``: ``"auto"`` is ``"lung_depth"`` for whole scans and None for crops;
    ``"none"`` is None (a command line cannot pass None).

    Raises:
        ValueError: on an unknown region or context, or ``"lung_depth"`` with ``region="crop"`` (a VOI inside the lung
            has no lung envelope).
    """
    _check_region(region)
    if context == "auto":
        return "lung_depth" if region == "scan" else None
    if context == "none":
        return None
    if context not in CONTEXTS:
        raise ValueError(f"context must be 'auto' or one of {CONTEXTS}, got {context!r}.")
    if context == "lung_depth" and region == "crop":
        raise ValueError("context 'lung_depth' needs whole chest scans (region 'scan'): a crop has no lung envelope.")
    return context


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``array`` (in a file's voxel order) in closest-RAS voxel order: a view, axes permuted and flipped only."""
    return nib.orientations.apply_orientation(array, ornt)


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Turn a closest-RAS-order array back into the file's voxel order (exact inverse of :func:`to_canonical`)."""
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(ras, ornt)))


class ScanRegion(NamedTuple):
    """A CT and its lung region, in the file's own voxel grid.

    Attributes:
        image_hu: float32 ``(X, Y, Z)`` in HU, in the file's voxel order.
        affine: the file's 4x4 RAS affine.
        ornt: the orientation from the file's voxel order to closest RAS (for :func:`to_canonical`).
        spacing: voxel size in mm in closest-RAS order.
        region: bool ``(X, Y, Z)``, the lung region (the map's support), in the file's voxel order.
    """

    image_hu: np.ndarray
    affine: np.ndarray
    ornt: np.ndarray
    spacing: tuple
    region: np.ndarray


def load_scan_region(
    path: str | os.PathLike,
    region: str = "scan",
    loader: LoadCT | None = None,
    exclude: str | os.PathLike | None = None,
) -> ScanRegion:
    """Read a CT and find its lung region (computed in closest-RAS order, returned in the file's order).

    Args:
        path: a CT file or DICOM folder.
        region: ``"scan"`` (:func:`~monai_simsid.apps.rules.lung_region_mask`, a chest CT) or ``"crop"``
            (:func:`~monai_simsid.apps.rules.crop_lung_region_mask`, a small VOI inside the lung).
        loader: the CT reader (default ``LoadCT()``, which checks the intensities look like HU; without the
            check for bone with ``"crop"``: a VOI inside the lung need not hold any).
        exclude: a mask of a region to leave out (same shape and affine as the CT; see
            :mod:`monai_simsid.data.exclusion`): the returned region does not hold it, grown by its margin.

    Raises:
        InputError: naming ``path``, when it cannot be read, is not a 3D CT, its intensities do not look like HU,
            or (``"scan"``) it has no lung region; naming ``exclude``, when it does not match the CT.
        ValueError: on an unknown ``region``.
    """
    _check_region(region)
    image = (loader or LoadCT(require_bone=region == "scan"))(path)
    affine = np.asarray(image.affine, dtype=np.float64)
    image_hu = np.asarray(image[0], dtype=np.float32)
    ornt = nib.orientations.io_orientation(affine)
    zooms = spacing_from_affine(affine)
    spacing = tuple(float(zooms[int(ax)]) for ax in ornt[:, 0].argsort())
    canonical = to_canonical(image_hu, ornt)
    if region == "crop":
        lung = crop_lung_region_mask(canonical, spacing)
    else:
        lung = lung_region_mask(canonical, spacing)
        if not lung.any():
            raise InputError(path, "no lung region found (HU < -400 inside the body): is this a chest CT? "
                             "(for a small VOI inside the lung use region 'crop')")
    lung = from_canonical(lung, ornt)
    if exclude is not None:
        mask = LoadCT(is_label=True)(exclude)
        check_mask_matches(mask, image, exclude, EXCLUDE_KEY)
        lung &= ~grow_mask(np.asarray(mask[0]), zooms)
    return ScanRegion(image_hu, affine, ornt, spacing, lung)


def descriptor_map(knn: DescriptorKNN, scan: ScanRegion, search_mm: float | None = None) -> np.ndarray:
    """The raw kNN distance map of ``scan`` inside its region, 0 elsewhere (float32, the file's voxel order).

    ``search_mm``: search the memory on a grid of about this spacing and interpolate in between (see
    :func:`~monai_simsid.apps.descriptor_knn.search_step`); ``None`` searches every voxel.
    """
    raw = knn(
        to_canonical(scan.image_hu, scan.ornt), to_canonical(scan.region, scan.ornt), scan.spacing,
        step=search_step(scan.spacing, search_mm),
    )
    return from_canonical(raw, scan.ornt)


def region_scan_score(raw_map: np.ndarray, region: np.ndarray, topk_fraction: float = 0.001) -> float:
    """The package's ``topk`` scan score (:func:`~monai_simsid.inferers.scoring.scan_score`) inside ``region``."""
    return scan_score(torch.from_numpy(raw_map), None, torch.from_numpy(region), "topk", topk_fraction)


def _normals(datalist: str | os.PathLike, section: str) -> list[dict]:
    """The normal scans (no ``label``) of a datalist section, as ``{"image": path, "exclude": path or None}`` (empty
    if it is absent)."""
    return [
        {"image": e["image"], EXCLUDE_KEY: e.get(EXCLUDE_KEY)}
        for e in split_sections(load_datalist(datalist, section, missing_ok=True))[0]
    ]


def fit_descriptor_memory(
    datalist: str | os.PathLike,
    output_path: str | os.PathLike,
    bundle_name: str,
    bundle_version: str,
    region: str = "scan",
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    shape_scales_mm: Sequence[float] = DEFAULT_SHAPE_SCALES_MM,
    k: int = 10,
    bank_size: int = 120_000,
    seed: int = 0,
    context: str | None = "auto",
    fpr: float = 0.05,
    voxel_fpr: float = 0.001,
    topk_fraction: float = 0.001,
    max_voxels_per_scan: int = 500_000,
    check_ct: bool = True,
    search_mm: float | None = 3.0,
    hu_max: float = HU_RANGE[1],
) -> dict[str, Any]:
    """Fit the memory on a datalist's training normals, calibrate it on normal scans and write one file atomically.

    The bank is a uniform sample of the lung-region descriptors of the ``training`` normals (entries without a
    ``label``; an entry's ``exclude`` region, grown by its margin, is left out of the bank, the calibration and the
    audit: see :mod:`monai_simsid.data.exclusion`), read one scan at a time (:meth:`DescriptorKNN.fit_scans`). The calibration runs the fitted memory
    on the ``validation`` normals, or on the training normals when the datalist has none (optimistic thresholds;
    logged and recorded as ``calibrated_on``): scan threshold from their ``topk`` scan scores at ``fpr``, voxel
    threshold at ``voxel_fpr`` of their lung-region voxels (up to ``max_voxels_per_scan`` sampled per scan,
    seeded). No lesion label is read.

    Args:
        datalist: Decathlon-style datalist (``training`` and optional ``validation`` sections).
        output_path: the memory file to write (``.npz``; its folder is created).
        bundle_name, bundle_version: recorded in the file (inference checks the bundle name).
        region: ``"scan"`` or ``"crop"`` (see :func:`load_scan_region`).
        scales_mm, shape_scales_mm, k, bank_size, seed: the memory's settings (see :class:`DescriptorKNN`).
        context: the descriptor's context feature (see :func:`resolve_context`; ``"auto"``: the lung-envelope depth
            for whole scans, none for crops).
        fpr, voxel_fpr: false-positive rates of the scan and voxel thresholds on normal data.
        topk_fraction: fraction of lung-region voxels averaged by the scan score.
        max_voxels_per_scan: voxel samples per calibration scan.
        check_ct: check that the intensities look like HU.
        search_mm: whole scans are searched on a grid of about this spacing, the distances interpolated in between
            (:func:`descriptor_map`; ``None``: every voxel), at calibration and at inference (it is stored in the
            file). Crops are small and always searched on every voxel.
        hu_max: the ceiling of the HU clip of the descriptors (see :class:`DescriptorKNN`; stored in the file).

    Returns:
        the ``extra`` dict written to the file (calibration, source, counts).

    Raises:
        ValueError: on bad settings (before anything is read).
        InputError: naming the file, for a bad datalist, no normal training scan, or a bad scan.
    """
    knn = DescriptorKNN(
        scales_mm, k=k, bank_size=bank_size, seed=seed, context=resolve_context(region, context),
        shape_scales_mm=shape_scales_mm, hu_max=hu_max,
    )
    if not 0 < fpr < 1 or not 0 < voxel_fpr < 1:
        raise ValueError(f"fpr and voxel_fpr must be in (0, 1), got {fpr} and {voxel_fpr}.")
    if not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}.")
    if int(max_voxels_per_scan) < 1:
        raise ValueError(f"max_voxels_per_scan must be >= 1, got {max_voxels_per_scan}.")
    search_mm = check_search_mm(search_mm)
    search_mm = None if region == "crop" else search_mm  # a crop is small: searched on every voxel
    train = _normals(datalist, "training")
    if not train:
        raise InputError(datalist, "the 'training' section holds no normal scan (entries without a 'label')")
    val = _normals(datalist, "validation")
    calib, source = select_calibration_items(val, train)
    loader = LoadCT(check_ct=check_ct, require_bone=region == "scan")

    def training_scans():  # read one at a time: memory holds one scan and the bank, however many scans there are
        for e in train:
            scan = load_scan_region(e["image"], region, loader, e[EXCLUDE_KEY])
            yield to_canonical(scan.image_hu, scan.ornt), to_canonical(scan.region, scan.ornt), scan.spacing

    knn.fit_scans(training_scans())

    rng = np.random.default_rng(seed)
    scores, voxels, slices = [], [], []
    for e in calib:
        scan = load_scan_region(e["image"], region, loader, e[EXCLUDE_KEY])
        raw = descriptor_map(knn, scan, search_mm)
        scores.append(region_scan_score(raw, scan.region, topk_fraction))
        slices.append(float(max(scan.spacing)))
        vals = raw[scan.region]
        if vals.size > max_voxels_per_scan:
            vals = vals[rng.choice(vals.size, int(max_voxels_per_scan), replace=False)]
        voxels.append(vals)
    calibration = compute_calibration(scores, np.concatenate(voxels), fpr=fpr, voxel_fpr=voxel_fpr, source=source)
    # the normals' largest voxel sizes, so that a report can say when a scan's slices are much thicker
    calibration.update({"topk_fraction": float(topk_fraction), "score_method": "topk", "normal_slice_mm": slices})
    audit = _audit_training_scans(knn, train, region, loader, search_mm, calibration["voxel_threshold"], output_path)
    extra = {
        "bundle": bundle_name,
        "version": bundle_version,
        "region": region,
        "calibration": calibration,
        "calibrated_on": "validation" if val else "training",
        "n_training": len(train),
        "n_calibration": len(calib),
        "search_mm": search_mm,
        "normal_audit": audit,
    }
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    knn.save(output_path, **extra)
    logger.info("descriptor memory of %d training normal scan(s), calibrated on %s; wrote %s", len(train), source,
                output_path)
    return extra


def _audit_training_scans(
    knn: DescriptorKNN,
    train: Sequence[dict],
    region: str,
    loader: LoadCT,
    search_mm: float | None,
    unit: float,
    output_path: str | os.PathLike,
) -> list[dict[str, Any]] | None:
    """The normal-set audit of the training scans (:func:`~monai_simsid.apps.audit.audit_normal_terms`): each whole
    scan scored by the memory without its own bank rows, in units of the voxel threshold, written atomically as
    ``normal_audit.json`` beside the memory file. ``None`` for crops (no lung envelope to place a region in) or a
    single training scan (no other scan to compare it with)."""
    if region != "scan" or len(train) < 2 or not unit > 0:
        return None
    terms, regions, affines, names = [], [], [], []
    for i, e in enumerate(train):
        scan = load_scan_region(e["image"], region, loader, e[EXCLUDE_KEY])
        terms.append(descriptor_map(knn.leave_out(i), scan, search_mm) / np.float32(unit))
        regions.append(scan.region)
        affines.append(scan.affine)
        names.append(str(e["image"]))
    audit = audit_normal_terms(terms, regions, affines, names, [True] * len(train))
    unit_text = "descriptor distance / voxel threshold (1 = the normal threshold at voxel_fpr)"
    report_audit(audit, Path(output_path).with_name("normal_audit.json"), unit_text)
    return audit


def load_descriptor_memory(
    path: str | os.PathLike, bundle_name: str | None = None
) -> tuple[DescriptorKNN, dict[str, Any]]:
    """Read a memory file written by :func:`fit_descriptor_memory`: the fitted memory and its ``extra`` dict.

    Args:
        path: the ``.npz`` file.
        bundle_name: when given, the bundle that must have written it.

    Raises:
        InputError: naming ``path``, when it is missing, not a memory file, another bundle's, or uncalibrated.
    """
    knn, extra = DescriptorKNN.load(path)
    written_by = extra.get("bundle")
    if bundle_name is not None and written_by != bundle_name:
        who = f"bundle '{written_by}'" if written_by else "no bundle (e.g. the old tools/descriptor_knn.py)"
        raise InputError(path, f"descriptor memory was written by {who}, not '{bundle_name}'")
    cal = extra.get("calibration")
    if not isinstance(cal, Mapping) or any(key not in cal for key in CALIBRATION_KEYS):
        raise InputError(
            path, "descriptor memory holds no calibration; write it with bundles/descriptor_knn_ct/configs/train.json"
        )
    if extra.get("region", "scan") not in REGIONS:
        raise InputError(path, f"descriptor memory has an unknown region {extra.get('region')!r}")
    return knn, extra
