"""Body mask and body-normalised region transforms."""

from __future__ import annotations

from .array import BodyMask, body_bbox, compute_body_mask, region_index, sample_window_starts
from .dictionary import BodyMaskd, BodyMaskD, BodyMaskDict, RandBodyWindowsd, RandBodyWindowsD, RandBodyWindowsDict

__all__ = [
    "BodyMask",
    "BodyMaskd",
    "BodyMaskD",
    "BodyMaskDict",
    "RandBodyWindowsd",
    "RandBodyWindowsD",
    "RandBodyWindowsDict",
    "sample_window_starts",
    "body_bbox", "compute_body_mask", "region_index"]
