"""monai-simsid: 3D CT anomaly detection (SimSID-3D and baselines) built on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
