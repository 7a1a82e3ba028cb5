"""Audit of the normal scans: where each one looks least like the others.

"Normal" training scans are rarely certified lesion-free. A lesion in one of them teaches the model that such tissue
is normal, and a leave-one-out evaluation that holds it out counts a correct detection as a false positive. When the
descriptor fusion is calibrated (:class:`~monai_simsid.apps.fusion.DescriptorFusion`), every calibration scan that
is not alone in the bank is scored against the memory of the *other* normal scans. :func:`audit_normal_terms` reads
those leave-one-out terms: per scan, the peak of the term averaged over about 5 mm (a compact region, not one
noisy voxel) and where it lies in world coordinates, ranked from the least to the most normal-looking scan, so a user
can look at the top region before trusting the set. It flags nothing by itself: with a few normal scans there is no
normal spread of these peaks to compare against, and a scan from another scanner can stand out as a whole.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_simsid.transforms.post.array import spacing_from_affine
from monai_simsid.utils.atomic import atomic_path

__all__ = ["AUDIT_SMOOTH_MM", "audit_normal_terms", "report_audit"]

logger = logging.getLogger(__name__)

#: width (mm) of the cube over which the leave-one-out term is averaged before its peak is taken
AUDIT_SMOOTH_MM = 5.0


def audit_normal_terms(
    terms: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
    affines: Sequence[Any],
    sources: Sequence[str],
    leave_out: Sequence[bool],
    smooth_mm: float = AUDIT_SMOOTH_MM,
) -> list[dict[str, Any]]:
    """Per normal scan, the most anomalous compact region of its descriptor term, most anomalous scan first.

    The term is averaged over a cube of about ``smooth_mm`` (an odd number of voxels per axis, the nearest to it) inside
    the region (zero outside), and the peak of that mean is the scan's audit value.

    Args:
        terms: each scan's descriptor term ``(X, Y, Z)`` in units of the normal 99.9th percentile (1 at it), as
            :meth:`~monai_simsid.apps.fusion.DescriptorFusion.fit` returns them.
        regions: the lung regions they are defined on (bool, same shapes).
        affines: the ``(4, 4)`` voxel-to-world (RAS) matrices of the terms' grid.
        sources: a name per scan (e.g. its file).
        leave_out: per scan, whether its term came from a memory without it (``False``: it was scored against a bank
            holding its own voxels, so its peak is optimistic).
        smooth_mm: the averaging cube's width in mm.

    Returns:
        one dict per scan with a lung region: ``source``, ``leave_out``, ``peak`` (the averaged term's maximum in the
        region), ``p99_9`` (the scan's own 99.9th percentile of the term in the region), ``model_voxel`` (the peak
        on the terms' grid), ``peak_ras_mm`` and ``peak_lps_mm``; sorted by ``peak``, highest first.

    Raises:
        ValueError: mismatching lengths or shapes, or a non-positive ``smooth_mm``.
    """
    n = len(terms)
    if not (n == len(regions) == len(affines) == len(sources) == len(leave_out)):
        raise ValueError(
            f"need one region, affine, source and leave_out flag per term, got {n}, {len(regions)}, {len(affines)}, "
            f"{len(sources)} and {len(leave_out)}."
        )
    if not np.isfinite(smooth_mm) or smooth_mm <= 0:
        raise ValueError(f"smooth_mm must be positive, got {smooth_mm}.")
    out = []
    for term, region, affine, source, held in zip(terms, regions, affines, sources, leave_out):
        t = np.asarray(term, dtype=np.float32)
        r = np.asarray(region, dtype=bool)
        a = np.asarray(affine, dtype=np.float64)
        if t.ndim != 3 or t.shape != r.shape or a.shape != (4, 4):
            raise ValueError(f"{source}: term {t.shape}, region {r.shape} and affine {a.shape} do not match.")
        if not r.any():
            continue
        spacing = spacing_from_affine(a)
        size = [max(1, int(round(smooth_mm / s))) | 1 for s in spacing]  # odd: centred on the voxel
        smooth = ndimage.uniform_filter(np.where(r, t, 0.0).astype(np.float32), size=size, mode="constant")
        voxel = np.unravel_index(int(np.argmax(np.where(r, smooth, -np.inf))), t.shape)
        ras = (a @ np.r_[np.asarray(voxel, dtype=np.float64), 1.0])[:3]
        out.append({
            "source": str(source),
            "leave_out": bool(held),
            "peak": float(smooth[voxel]),
            "p99_9": float(np.percentile(t[r], 99.9)),
            "model_voxel": [int(v) for v in voxel],
            "peak_ras_mm": [round(float(v), 2) for v in ras],
            "peak_lps_mm": [round(float(-ras[0]), 2), round(float(-ras[1]), 2), round(float(ras[2]), 2)],
        })
    return sorted(out, key=lambda e: -e["peak"])


def report_audit(audit: Sequence[dict[str, Any]], path: str | os.PathLike, unit: str) -> Path:
    """Log an audit (:func:`audit_normal_terms`), one line per scan, and write it atomically as JSON to ``path`` (its
    folder is created): ``{"smooth_mm", "unit", "scans"}``, with ``unit`` saying what the peaks are measured in."""
    for e in audit:
        own = "" if e["leave_out"] else " (scored with its own voxels in the bank)"
        logger.info(
            "normal-set audit: %s peaks at %.2f units (its 99.9th percentile %.2f) at RAS %s mm%s",
            e["source"], e["peak"], e["p99_9"], e["peak_ras_mm"], own,
        )
    if audit:
        logger.info("normal-set audit: look at the first region above: a lesion in a 'normal' scan is learnt as normal.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"smooth_mm": AUDIT_SMOOTH_MM, "unit": unit, "scans": list(audit)}, indent=2))
    return path
