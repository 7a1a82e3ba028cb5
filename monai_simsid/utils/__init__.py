"""Utilities."""

from __future__ import annotations

from .enums import AnomalyKeys, StrEnum

__all__ = ["AnomalyKeys", "StrEnum"]
