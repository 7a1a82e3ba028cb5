"""Transforms: slice thickness, loading, body mask and regions, HU windows, synthetic anomalies, post-processing (array + dictionary forms)."""

from __future__ import annotations

from .acquisition import *  # noqa: F401,F403
from .acquisition import __all__ as _acquisition_all
from .anomaly import *  # noqa: F401,F403
from .anomaly import __all__ as _anomaly_all
from .anomaly.batch import BatchAnomalyCorruption
from .anomaly.pretext import CutPastePretextd
from .body import *  # noqa: F401,F403
from .body import __all__ as _body_all
from .intensity import *  # noqa: F401,F403
from .intensity import __all__ as _intensity_all
from .io import *  # noqa: F401,F403
from .io import __all__ as _io_all
from .post import *  # noqa: F401,F403
from .post import __all__ as _post_all

__all__ = [*_acquisition_all, *_anomaly_all, *_body_all, *_intensity_all, *_io_all, *_post_all, "BatchAnomalyCorruption", "CutPastePretextd"]
