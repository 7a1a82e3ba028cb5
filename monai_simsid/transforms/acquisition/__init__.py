"""Acquisition transforms: simulated slice thickness."""

from __future__ import annotations

from .array import FWHM_TO_SIGMA, SimulateSliceThickness, check_thickness, simulate_slice_thickness
from .dictionary import SimulateSliceThicknessd, SimulateSliceThicknessD, SimulateSliceThicknessDict

__all__ = [
    "FWHM_TO_SIGMA",
    "SimulateSliceThickness",
    "SimulateSliceThicknessd",
    "SimulateSliceThicknessD",
    "SimulateSliceThicknessDict",
    "check_thickness",
    "simulate_slice_thickness",
]
