"""Ignite handlers: anomaly-detection metric handlers for MONAI workflows."""

from __future__ import annotations

from .metrics import SampleAP, SampleAUROC, VoxelAP, VoxelAUROC

__all__ = ["SampleAP", "SampleAUROC", "VoxelAP", "VoxelAUROC"]
