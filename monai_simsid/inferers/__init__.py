"""Inferers."""

from __future__ import annotations

from .anomaly import AnomalyInferenceResult, AnomalyInferer

__all__ = ["AnomalyInferenceResult", "AnomalyInferer"]
