"""Ignite handlers: metric handlers, calibration and resume for MONAI workflows."""

from __future__ import annotations

from .calibration import CalibrationHandler, collect_normal_statistics
from .checkpoint import AtomicCheckpointSaver
from .metrics import SampleAP, SampleAUROC, VoxelAP, VoxelAUROC
from .pretext import DensityFitHandler, RegeneratePretextHandler
from .resume import EpochSeedHandler, ResumeHandler

__all__ = [
    "AtomicCheckpointSaver",
    "CalibrationHandler",
    "DensityFitHandler",
    "EpochSeedHandler",
    "RegeneratePretextHandler",
    "ResumeHandler",
    "SampleAP",
    "SampleAUROC",
    "VoxelAP",
    "VoxelAUROC",
    "collect_normal_statistics",
]
