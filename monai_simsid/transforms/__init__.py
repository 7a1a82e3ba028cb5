"""Transforms: loading, body mask and regions, synthetic anomalies."""

from __future__ import annotations

from .body import BodyMask, BodyMaskd, body_bbox, compute_body_mask, region_index
from .io import LoadCT, LoadCTd

__all__ = ["BodyMask", "BodyMaskd", "LoadCT", "LoadCTd", "body_bbox", "compute_body_mask", "region_index"]
