"""Per-case clinical export: NIfTI maps, 3D Slicer segmentations, JSON reports, scores table and PNG overview."""

from __future__ import annotations

from .nifti import save_nifti
from .overview import save_overview_png
from .report import ScoresTable, append_scores_csv, build_report, to_jsonable, write_report
from .slicer import ANOMALY_TERMINOLOGY, read_slicer_segmentation, save_slicer_segmentation

__all__ = [
    "ANOMALY_TERMINOLOGY",
    "ScoresTable",
    "append_scores_csv",
    "build_report",
    "read_slicer_segmentation",
    "save_nifti",
    "save_overview_png",
    "save_slicer_segmentation",
    "to_jsonable",
    "write_report",
]
