"""Post-processing of voxel anomaly maps: smoothing, thresholding, body restriction and connected components.

This is the "filtering and segmentation to minimise false positives" step: isolated hot voxels are removed by a
Gaussian filter of a physical width, and blobs smaller than a physical volume are dropped, so the result does not
depend on the voxel size of the scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from scipy import ndimage

from monai_simsid.utils.geometry import spacing_from_affine

__all__ = [
    "AnomalyPostprocess",
    "extract_findings",
    "postprocess_anomaly_map",
    "spacing_from_affine",
]

logger = logging.getLogger(__name__)

MAX_LABELS = 255  # uint8 label map


def _to_numpy(x: NdarrayOrTensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _spatial(x: NdarrayOrTensor, name: str, ndim: int = 3) -> np.ndarray:
    """A spatial array: a leading channel of size 1 is dropped."""
    arr = _to_numpy(x)
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}D spatial array (optionally with one channel), got shape {arr.shape}")
    return arr


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return sp


def postprocess_anomaly_map(
    score_map: np.ndarray,
    spacing: Sequence[float],
    sigma_mm: float | Sequence[float] = 1.0,
    threshold: float = 0.5,
    min_volume_mm3: float = 100.0,
    body_mask: np.ndarray | None = None,
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, threshold and split a spatial anomaly map into components of a minimum physical volume.

    Args:
        score_map: spatial float array of anomaly scores (no channel).
        spacing: voxel size in mm per axis.
        sigma_mm: standard deviation of the Gaussian filter in mm (scalar or per axis); 0 disables smoothing.
        threshold: score above which (``>=``) a smoothed voxel is anomalous.
        min_volume_mm3: components smaller than this physical volume are discarded.
        body_mask: optional spatial mask of the same shape; anomalies outside it are discarded.
        connectivity: neighbourhood of :func:`scipy.ndimage.generate_binary_structure` (1..ndim); ``None`` is the
            full neighbourhood (26-connectivity in 3D).

    Returns:
        ``(labels, smoothed)``: a uint8 label map whose components are numbered 1..K by decreasing peak score of
        ``score_map`` (ties: larger first), and the smoothed float32 map.
    """
    score = np.asarray(score_map, dtype=np.float32)
    ndim = score.ndim
    if ndim < 1:
        raise ValueError("score_map must have at least one dimension")
    sp = _check_spacing(spacing, ndim)
    sig = np.asarray(sigma_mm, dtype=float).ravel()
    if sig.size == 1:
        sig = np.repeat(sig, ndim)
    if sig.size != ndim or not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError(f"sigma_mm must be a non-negative number or {ndim} of them, got {sigma_mm}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not np.isfinite(min_volume_mm3) or min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3 must be a non-negative number, got {min_volume_mm3}")
    connectivity = ndim if connectivity is None else int(connectivity)
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be in 1..{ndim}, got {connectivity}")

    score = np.nan_to_num(score, nan=0.0, posinf=1.0, neginf=0.0)
    if np.any(sig > 0):
        smoothed = ndimage.gaussian_filter(score, sigma=tuple(sig / sp), mode="nearest").astype(np.float32)
    else:
        smoothed = score.copy()
    fg = smoothed >= threshold
    if body_mask is not None:
        body = np.asarray(body_mask)
        if body.shape != score.shape:
            raise ValueError(f"body_mask shape {body.shape} does not match the score map shape {score.shape}")
        fg &= body.astype(bool)

    labels = np.zeros(score.shape, np.uint8)
    comp, n = ndimage.label(fg, structure=ndimage.generate_binary_structure(ndim, connectivity))
    if n == 0:
        return labels, smoothed
    idx = np.arange(1, n + 1)
    # per-component size and peak over the foreground voxels only (ndimage.maximum would sort the whole volume:
    # about 11 s of a 512x512x300 scan's post-processing, for the same values)
    fg_labels, fg_scores = comp[fg], score[fg]
    counts = np.bincount(fg_labels, minlength=n + 1)[1:]
    volumes = counts * float(np.prod(sp))
    peaks_all = np.full(n + 1, -np.inf)
    np.maximum.at(peaks_all, fg_labels, fg_scores)
    peaks = peaks_all[1:]
    keep = volumes >= min_volume_mm3
    kept = idx[keep]
    if kept.size == 0:
        return labels, smoothed
    order = np.lexsort((-counts[keep], -peaks[keep]))  # peak descending, then size descending
    kept = kept[order]
    if kept.size > MAX_LABELS:
        logger.warning("%d anomalous components; keeping the %d with the highest peak", kept.size, MAX_LABELS)
        kept = kept[:MAX_LABELS]
    lut = np.zeros(n + 1, np.uint8)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.uint8)
    return lut[comp], smoothed


def extract_findings(
    score_map: NdarrayOrTensor,
    labels: NdarrayOrTensor,
    affine: NdarrayOrTensor | None = None,
    decimals: int = 3,
) -> list[dict]:
    """One finding per labelled component, sorted by peak score (descending).

    Args:
        score_map: spatial anomaly map (a leading channel of size 1 is allowed).
        labels: integer label map of the same shape (0 = background), e.g. from :class:`AnomalyPostprocess`.
        affine: 4x4 voxel-to-RAS affine (scanner mm); taken from ``score_map`` or ``labels`` when they are
            MetaTensors and it is ``None``.
        decimals: rounding of the millimetre and score values.

    Returns:
        a list of dicts with ``id`` (the label value), ``centroid_voxel``, ``centroid_ras_mm``, ``centroid_lps_mm``
        (LPS = RAS with x and y negated), ``peak_voxel``, ``peak_ras_mm``, ``peak_lps_mm``, ``volume_ml``,
        ``n_voxels``, ``peak_score``, ``mean_score`` and ``bbox_voxel`` (``[[x0, x1], [y0, y1], [z0, z1]]``,
        end exclusive). All values are plain Python numbers (JSON-serialisable).
    """
    if affine is None:
        affine = getattr(score_map, "affine", None)
        if affine is None:
            affine = getattr(labels, "affine", None)
    if affine is None:
        raise ValueError("extract_findings needs an affine (none given and the inputs are not MetaTensors)")
    aff = _to_numpy(affine).astype(float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    score = _spatial(score_map, "score_map")  # values become float64 per component (no full-volume copies)
    lab = _spatial(labels, "labels")
    if lab.shape != score.shape:
        raise ValueError(f"labels shape {lab.shape} does not match the score map shape {score.shape}")
    if not np.issubdtype(lab.dtype, np.integer) and not np.issubdtype(lab.dtype, np.bool_):
        if not np.all(np.mod(lab, 1) == 0):
            raise ValueError("labels must hold integer values")
    if not np.issubdtype(lab.dtype, np.integer):
        lab = lab.astype(np.int64)
    voxel_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0

    findings = []
    objects = ndimage.find_objects(lab)
    for i, sl in enumerate(objects):
        if sl is None:
            continue
        value = i + 1
        sub = lab[sl] == value
        pts = np.argwhere(sub) + np.array([s.start for s in sl])
        vals = np.asarray(score[sl][sub], dtype=np.float64)
        centroid = pts.mean(0)
        peak_i = int(np.argmax(vals))
        peak_vox = pts[peak_i]
        c_ras = (aff @ np.append(centroid, 1.0))[:3]
        p_ras = (aff @ np.append(peak_vox.astype(float), 1.0))[:3]
        flip = np.array([-1.0, -1.0, 1.0])
        findings.append(
            {
                "id": value,
                "centroid_voxel": [round(float(v), decimals) for v in centroid],
                "centroid_ras_mm": [round(float(v), decimals) for v in c_ras],
                "centroid_lps_mm": [round(float(v), decimals) for v in c_ras * flip],
                "peak_voxel": [int(v) for v in peak_vox],
                "peak_ras_mm": [round(float(v), decimals) for v in p_ras],
                "peak_lps_mm": [round(float(v), decimals) for v in p_ras * flip],
                "n_voxels": int(pts.shape[0]),
                "volume_ml": round(pts.shape[0] * voxel_ml, max(decimals, 4)),
                "peak_score": round(float(vals[peak_i]), decimals + 1),
                "mean_score": round(float(vals.mean()), decimals + 1),
                "bbox_voxel": [[int(s.start), int(s.stop)] for s in sl],
            }
        )
    findings.sort(key=lambda f: (-f["peak_score"], -f["n_voxels"], f["id"]))
    return findings


class AnomalyPostprocess(Transform):
    """Turn a channel-first anomaly map into a uint8 label map of anomalous components.

    Gaussian smoothing of ``sigma_mm`` millimetres, threshold, optional restriction to a body mask, connected
    components (full neighbourhood: 26-connectivity in 3D) of at least ``min_volume_mm3`` cubic millimetres,
    labelled 1..K by decreasing peak score. The voxel spacing comes from ``spacing`` if given, else from the
    MetaTensor's affine, else from the ``affine`` call argument.

    Args:
        sigma_mm: Gaussian standard deviation in mm (0 disables smoothing).
        threshold: decision threshold on the smoothed map (the calibrated maps use 0.5).
        min_volume_mm3: minimum physical volume of a kept component.
        spacing: voxel size in mm; overrides the affine.
        connectivity: see :func:`postprocess_anomaly_map`.

    Returns:
        a ``(1, *spatial)`` uint8 array of the input's type (a MetaTensor keeps the input's metadata).
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(
        self,
        sigma_mm: float | Sequence[float] = 1.0,
        threshold: float = 0.5,
        min_volume_mm3: float = 100.0,
        spacing: Sequence[float] | None = None,
        connectivity: int | None = None,
    ) -> None:
        if np.any(np.asarray(sigma_mm, dtype=float) < 0):
            raise ValueError(f"sigma_mm must be non-negative, got {sigma_mm}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if not np.isfinite(min_volume_mm3) or min_volume_mm3 < 0:
            raise ValueError(f"min_volume_mm3 must be non-negative, got {min_volume_mm3}")
        if spacing is not None and (np.any(np.asarray(spacing, dtype=float) <= 0)):
            raise ValueError(f"spacing must be positive, got {spacing}")
        if connectivity is not None and connectivity < 1:
            raise ValueError(f"connectivity must be >= 1, got {connectivity}")
        self.sigma_mm = sigma_mm
        self.threshold = float(threshold)
        self.min_volume_mm3 = float(min_volume_mm3)
        self.spacing = spacing
        self.connectivity = connectivity
        self.last_smoothed: np.ndarray | None = None

    def _spacing(self, img: NdarrayOrTensor, affine: NdarrayOrTensor | None, ndim: int) -> np.ndarray:
        if self.spacing is not None:
            return _check_spacing(self.spacing, ndim)
        if affine is None:
            affine = getattr(img, "affine", None)
        if affine is None:
            raise ValueError("AnomalyPostprocess needs the voxel spacing: pass `spacing`, an affine or a MetaTensor")
        return _check_spacing(spacing_from_affine(affine), ndim)

    def __call__(
        self,
        img: NdarrayOrTensor,
        body_mask: NdarrayOrTensor | None = None,
        affine: NdarrayOrTensor | None = None,
    ) -> NdarrayOrTensor:
        """Label the anomalous components of ``img`` (channel-first, one channel).

        Args:
            img: anomaly map ``(1, *spatial)``.
            body_mask: optional mask ``(1, *spatial)`` or ``(*spatial)``.
            affine: voxel-to-world affine, used for the spacing when ``img`` is not a MetaTensor.
        """
        arr = _to_numpy(img)
        if arr.ndim < 2 or arr.shape[0] != 1:
            raise ValueError(f"AnomalyPostprocess expects a channel-first map with one channel, got shape {arr.shape}")
        spatial = arr[0]
        sp = self._spacing(img, affine, spatial.ndim)
        body = None
        if body_mask is not None:
            body = _to_numpy(body_mask)
            if body.ndim == spatial.ndim + 1 and body.shape[0] == 1:
                body = body[0]
        labels, smoothed = postprocess_anomaly_map(
            spatial, sp, self.sigma_mm, self.threshold, self.min_volume_mm3, body, self.connectivity
        )
        self.last_smoothed = smoothed
        labels = labels[None]
        if isinstance(img, MetaTensor):
            out = MetaTensor(torch.as_tensor(labels), meta=dict(img.meta))
            out.applied_operations = list(img.applied_operations)
            return out
        if isinstance(img, torch.Tensor):
            return torch.as_tensor(labels, device=img.device)
        return labels
