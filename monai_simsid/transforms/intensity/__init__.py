"""Intensity transforms: HU windows as channels."""

from __future__ import annotations

from .array import HUWindows, check_hu_windows, hu_from_windows
from .dictionary import HUWindowsd, HUWindowsD, HUWindowsDict

__all__ = ["HUWindows", "HUWindowsd", "HUWindowsD", "HUWindowsDict", "check_hu_windows", "hu_from_windows"]
