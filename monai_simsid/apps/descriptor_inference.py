"""Whole-scan inference with the normative descriptor memory, through the shared output machinery.

:class:`DescriptorPredictor` is a :class:`~monai_simsid.apps.inference.CalibratedMapPredictor`: it gives the same
files, report, ``scores.csv``/``errors.csv``, worker prefetch and :func:`~monai_simsid.apps.inference.evaluate_cases`
metrics as the model bundles. Only the map differs: the kNN distance of each voxel's multi-scale descriptor to the
memory of normal lung voxels (:class:`~monai_simsid.apps.descriptor_knn.DescriptorKNN`), computed in the scan's own
voxel grid inside its lung region and calibrated with the normal-data statistics stored in the memory file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from monai_simsid.apps.calibration import calibrate_map
from monai_simsid.apps.descriptor_knn import HU_RANGE, DescriptorKNN
from monai_simsid.apps.descriptor_workflow import (
    REGIONS,
    ScanRegion,
    descriptor_map,
    load_scan_region,
    region_scan_score,
)
from monai_simsid.apps.inference import CalibratedMapPredictor, input_body_mask
from monai_simsid.data.datalist import case_name
from monai_simsid.transforms.io.array import LoadCT

__all__ = ["DescriptorCasePreparer", "DescriptorPredictor"]


class DescriptorCasePreparer:
    """Load one case and find its lung region: everything before the kNN search (cheap to pickle).

    Returns a dict of plain arrays: ``case``, ``image_hu`` (X, Y, Z), ``affine``, ``ornt`` and ``spacing`` (closest-RAS
    order, see :class:`~monai_simsid.apps.descriptor_workflow.ScanRegion`), ``region`` (the lung region, the map's
    support), ``body_in`` (the body mask united with the region; the whole VOI for ``region="crop"``; the voxels
    the evaluation's voxel metrics are taken over) and ``preprocess_s``, all on the input grid.

    Args:
        region: ``"scan"`` (chest CT) or ``"crop"`` (a small VOI inside the lung).
        check_ct: check that the intensities look like HU.

    Raises:
        ValueError: on an unknown ``region``.
    """

    def __init__(self, region: str = "scan", check_ct: bool = True) -> None:
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}.")
        self.region = region
        self.loader = LoadCT(check_ct=bool(check_ct), require_bone=region == "scan")

    def __call__(self, item: Mapping[str, Any]) -> dict:
        t0 = time.perf_counter()
        scan = load_scan_region(item["image"], self.region, self.loader)
        if self.region == "crop":
            body = np.ones(scan.region.shape, dtype=bool)
        else:
            body = input_body_mask(scan.image_hu, scan.affine) | scan.region
        t1 = time.perf_counter()
        return {"case": case_name(item["image"]), **scan._asdict(), "body_in": body, "preprocess_s": t1 - t0}


class DescriptorPredictor(CalibratedMapPredictor):
    """Calibrated anomaly maps, findings and reports from a fitted and calibrated descriptor memory.

    Per case the same files as :class:`~monai_simsid.apps.inference.AnomalyPredictor` (map in [0, 1] with 0.5 = the
    normal-data voxel threshold, the input's exact shape and affine, 0 outside the lung region; mask, Slicer
    segmentation, report, timings, overview), ``scores.csv`` and ``errors.csv``. The scan score is the ``topk`` score
    of the raw map over the lung region, calibrated so that 0.5 is the normal-data scan threshold.

    Args:
        knn: the fitted memory.
        calibration: its calibration (from normal scans, see
            :func:`~monai_simsid.apps.descriptor_workflow.fit_descriptor_memory`).
        bundle_name, bundle_version: written to every report.
        region: ``"scan"`` (chest CT) or ``"crop"`` (a small VOI inside the lung).
        check_ct: check that the intensities look like HU.
        memory_info: the memory file's other entries (``calibrated_on``, ``n_training``, ...), for the report, and
            its ``search_mm`` (the search grid its calibration used; absent: every voxel).
        output_settings: ``score_method`` (None or ``"topk"``, the only score the memory is calibrated for),
            ``sigma_mm``, ``min_volume_mm3``, ``write_png``, ``write_seg``, ``num_workers`` and
            ``multiprocessing_context``, as for :class:`~monai_simsid.apps.inference.AnomalyPredictor` (a worker
            loads the next scan and finds its lung region while the kNN search runs on the current one).

    Raises:
        ValueError: an unfitted memory, no calibration, another score method, or bad settings.
    """

    def __init__(
        self,
        knn: DescriptorKNN,
        calibration: Mapping[str, Any],
        bundle_name: str,
        bundle_version: str,
        region: str = "scan",
        check_ct: bool = True,
        memory_info: Mapping[str, Any] | None = None,
        **output_settings: Any,
    ) -> None:
        if not isinstance(knn, DescriptorKNN) or not knn.is_fitted:
            raise ValueError("knn must be a fitted DescriptorKNN.")
        if knn.context == "lung_depth" and region != "scan":
            raise ValueError(
                f"this memory describes voxels by their depth in the lung envelope (context 'lung_depth'), which needs "
                f"whole chest scans; region {region!r} cannot use it (fit a memory with region 'crop' for VOIs)."
            )
        settings = {
            "method": "descriptor_knn",
            "region": region,
            "grid": "input voxel grid (computed in closest-RAS voxel order)",
            "hu_clip": [HU_RANGE[0], knn.hu_max],
            "scales_mm": list(knn.scales_mm),
            "shape_scales_mm": list(knn.shape_scales_mm),
            "context": knn.context,
        }
        preparer = DescriptorCasePreparer(region, check_ct)
        super().__init__(preparer, calibration, bundle_name, bundle_version, settings, **output_settings)
        if self.score_method != "topk":
            raise ValueError(
                f"the descriptor memory is calibrated for the 'topk' scan score, not {self.score_method!r}."
            )
        self.knn = knn
        info = dict(memory_info or {})
        self.memory_info = {key: info[key] for key in ("calibrated_on", "n_training", "n_calibration") if key in info}
        # the search grid the calibration used (a memory written before it was stored searched every voxel)
        self.search_mm = info.get("search_mm")
        self.memory_info["search_mm"] = self.search_mm

    def raw_map(self, prepared: dict) -> np.ndarray:
        """The kNN distance map on the input grid, inside ``prepared["region"]`` (0 elsewhere)."""
        return descriptor_map(self.knn, ScanRegion(*(prepared[f] for f in ScanRegion._fields)), self.search_mm)

    def calibrated_input_map(self, prepared: dict) -> tuple[np.ndarray, float]:
        """The ``topk`` scan score of the raw map over the region, and the map calibrated to 0.5 = voxel threshold."""
        raw = prepared.pop("raw")
        raw_score = region_scan_score(raw, prepared["region"], self.calibration.get("topk_fraction", 0.001))
        return calibrate_map(torch.from_numpy(raw), self.calibration).numpy(), raw_score

    def report_extra(self) -> dict:
        """:meth:`CalibratedMapPredictor.report_extra` and the memory's settings."""
        extra = super().report_extra()
        extra["descriptor_memory"] = {"k": self.knn.k, "bank_size": int(self.knn.bank.shape[0]), **self.memory_info}
        return extra
