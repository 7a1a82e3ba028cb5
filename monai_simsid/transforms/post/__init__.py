"""Post-processing of anomaly maps: smoothing, thresholding, connected components and findings."""

from __future__ import annotations

from .array import AnomalyPostprocess, extract_findings, postprocess_anomaly_map, spacing_from_affine
from .dictionary import AnomalyPostprocessd, AnomalyPostprocessD, AnomalyPostprocessDict

__all__ = [
    "AnomalyPostprocess",
    "AnomalyPostprocessd",
    "AnomalyPostprocessD",
    "AnomalyPostprocessDict",
    "extract_findings",
    "postprocess_anomaly_map",
    "spacing_from_affine",
]
