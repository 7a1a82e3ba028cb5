"""Body mask and body-normalised region transforms."""

from __future__ import annotations

from .array import BodyMask, body_bbox, compute_body_mask, region_index
from .dictionary import BodyMaskd, BodyMaskD, BodyMaskDict

__all__ = ["BodyMask", "BodyMaskd", "BodyMaskD", "BodyMaskDict", "body_bbox", "compute_body_mask", "region_index"]
