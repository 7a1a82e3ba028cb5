"""Utilities."""

from __future__ import annotations

from .enums import AnomalyKeys, StrEnum
from .errors import InputError, find_input_error
from .geometry import spacing_from_affine

__all__ = ["AnomalyKeys", "InputError", "StrEnum", "find_input_error", "spacing_from_affine"]
