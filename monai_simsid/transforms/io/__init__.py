"""Loading transforms."""

from __future__ import annotations

from .array import LoadCT, check_ct_intensities, validate_ct
from .dictionary import LoadCTd, LoadCTD, LoadCTDict

__all__ = ["LoadCT", "LoadCTd", "LoadCTD", "LoadCTDict", "check_ct_intensities", "validate_ct"]
