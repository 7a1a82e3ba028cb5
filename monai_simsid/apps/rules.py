"""Reference anomaly rules that need no training, and the benchmark's lung region.

These rules are the yardstick every learned model of the project is compared with (``tools/benchmark.py``):

- :func:`lung_region_mask`: the lung region as defined by the benchmark (metrics are restricted to it);
- :func:`crop_lung_region_mask`: the body-independent variant used on small VOIs that lie inside the lung;
- :func:`intensity_rule_map`: "dense tissue inside the lung is suspicious", a clipped HU ramp;
- :class:`LocalZScoreRule`: z-score of the local mean HU against lung statistics of normal scans.

All arrays are spatial ``(X, Y, Z)`` numpy arrays in Hounsfield units with ``Z`` the axial axis; spacings are in mm.
Morphology in mm uses Euclidean distance transforms (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``), which is exact in mm for anisotropic voxels and fast for large radii.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai_simsid.transforms.body.array import compute_body_mask
from monai_simsid.transforms.intensity.array import HUWindows

__all__ = [
    "LUNG_REGION_DILATION_MM",
    "LocalZScoreRule",
    "crop_lung_region_mask",
    "intensity_rule_map",
    "lung_region_mask",
    "lung_window_constant_map",
]


def _check_volume(image: Any, name: str = "image_hu") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (X, Y, Z) array, got shape {arr.shape}.")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr


def _check_spacing(spacing: Sequence[float] | float, ndim: int = 3) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=float).reshape(-1), (ndim,)).copy()
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {ndim} positive values (mm), got {spacing}.")
    return sp


def _check_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} shape {m.shape} differs from the image shape {shape}.")
    return m.astype(bool) if m.dtype != bool else m


#: the lung region is the closed lung envelope grown by this much (mm): the pleura and the border of a lesion
LUNG_REGION_DILATION_MM = 5.0


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask grown by ``margin`` voxels per axis, clipped to the array."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(0, int(idx[0]) - int(margin[ax])), min(mask.shape[ax], int(idx[-1]) + 1 + int(margin[ax]))))
    return tuple(out)


def _dilate_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Euclidean dilation by ``radius_mm``: voxels whose centre is within the radius of a mask voxel."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def _erode_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Euclidean erosion by ``radius_mm`` (the array border is not treated as background)."""
    if radius_mm <= 0 or mask.all() or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm


def _close_then_dilate(mask: np.ndarray, closing_mm: float, dilation_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Closing by ``closing_mm`` then dilation by ``dilation_mm``, computed on the mask's bounding box."""
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    margin = np.ceil((max(closing_mm, 0.0) + max(dilation_mm, 0.0)) / spacing).astype(int) + 2
    box = _bbox(mask, margin)
    sub = mask[box]
    sub = _erode_mm(_dilate_mm(sub, closing_mm, spacing), closing_mm, spacing) | sub
    out[box] = _dilate_mm(sub, dilation_mm, spacing)
    return out


def lung_region_mask(
    image_hu: Any,
    spacing: Sequence[float],
    body: Any = None,
    threshold: float = -400.0,
    skin_mm: float = 5.0,
    closing_mm: float = 20.0,
    dilation_mm: float = LUNG_REGION_DILATION_MM,
) -> np.ndarray:
    """Lung region of a chest CT, as defined by the project's benchmark.

    ``HU < threshold`` inside the body eroded by ``skin_mm`` (so the air outside the patient and between skin
    folds is excluded), closed by ``closing_mm`` (vessels, airway walls and nodules, including a juxtapleural
    tumour touching the chest wall, fall inside), then dilated by ``dilation_mm`` (the pleura and the border of
    a lesion). The body is :func:`~monai_simsid.transforms.body.array.compute_body_mask` (HU > -500, opened
    in-plane by 3 mm, largest component, holes filled per axial slice) unless given; in a slice where the body
    reaches the image border (a field of view cropped to the chest, lungs open to the border), the holes are filled
    again with the border closed wherever it is not outside air (smoothed HU > -950), so the lungs stay inside.

    Args:
        image_hu: CT ``(X, Y, Z)`` in HU, ``Z`` axial.
        spacing: voxel size in mm per axis.
        body: optional precomputed body mask of the same shape.
        threshold: HU below which a voxel is air/lung.
        skin_mm: thickness of the skin layer removed from the body before thresholding (>= 0).
        closing_mm: closing radius in mm (>= 0).
        dilation_mm: final dilation radius in mm (>= 0).

    Returns:
        bool array of the image's shape.

    Raises:
        ValueError: on a non-3D image, bad spacing, a mismatching body mask or negative radii.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    for name, v in (("skin_mm", skin_mm), ("closing_mm", closing_mm), ("dilation_mm", dilation_mm)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite value >= 0, got {v}.")
    if body is None:
        body = compute_body_mask(img, sp)
    body = _check_mask(body, img.shape, "body")
    out = np.zeros(img.shape, dtype=bool)
    if not body.any():
        return out
    box = _bbox(body, [1] * body.ndim)  # everything below happens inside the body's bounding box
    inner = _erode_mm(body[box], skin_mm, sp)
    air = (img[box] < threshold) & inner
    if not air.any():
        return out
    out[box] = air
    return _close_then_dilate(out, closing_mm, dilation_mm, sp)  # works on the air's bounding box + radii


def crop_lung_region_mask(
    image_hu: Any,
    spacing: Sequence[float],
    threshold: float = -400.0,
    closing_mm: float = 20.0,
    dilation_mm: float = 5.0,
) -> np.ndarray:
    """Body-independent lung region of a small VOI lying inside the lung (e.g. an LIDC nodule crop).

    ``HU < threshold`` closed by ``closing_mm`` then dilated by ``dilation_mm``, without the body and skin step (a
    crop holds no body outline). In a VOI of a few centimetres this covers nearly the whole crop; a crop without
    any voxel below ``threshold`` gets the whole crop.

    Args:
        image_hu: VOI ``(X, Y, Z)`` in HU.
        spacing: voxel size in mm per axis.
        threshold: HU below which a voxel is air/lung.
        closing_mm: closing radius in mm (>= 0).
        dilation_mm: dilation radius in mm (>= 0).

    Returns:
        bool array of the image's shape.

    Raises:
        ValueError: on a non-3D image, bad spacing or negative radii.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    for name, v in (("closing_mm", closing_mm), ("dilation_mm", dilation_mm)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite value >= 0, got {v}.")
    air = img < threshold
    if not air.any():
        return np.ones(img.shape, dtype=bool)
    return _close_then_dilate(air, closing_mm, dilation_mm, sp)


def intensity_rule_map(
    image_hu: Any, lung_mask: Any, spacing: Sequence[float], sigma_mm: float = 1.0
) -> np.ndarray:
    """Intensity rule: ``clip((HU + 700) / 600, 0, 1)`` inside the lung region, lightly smoothed, 0 outside.

    Lung parenchyma (about -850 HU) scores 0, ground glass (about -500 HU) about 0.33, soft tissue (>= -100 HU)
    1. The ramp is smoothed with a Gaussian of ``sigma_mm`` (per-axis sigma ``sigma_mm / spacing``) before masking.

    Args:
        image_hu: CT ``(X, Y, Z)`` in HU.
        lung_mask: lung region (see :func:`lung_region_mask`), same shape.
        spacing: voxel size in mm per axis.
        sigma_mm: Gaussian smoothing sigma in mm (0 disables smoothing).

    Returns:
        float32 map in [0, 1] of the image's shape.

    Raises:
        ValueError: on mismatching shapes, bad spacing or a negative sigma.
    """
    img = _check_volume(image_hu)
    sp = _check_spacing(spacing)
    lung = _check_mask(lung_mask, img.shape, "lung_mask")
    if not np.isfinite(sigma_mm) or sigma_mm < 0:
        raise ValueError(f"sigma_mm must be a finite value >= 0, got {sigma_mm}.")
    out = np.zeros(img.shape, dtype=np.float32)
    if not lung.any():
        return out
    margin = np.ceil(4.0 * sigma_mm / sp).astype(int) + 1
    box = _bbox(lung, margin)
    ramp = np.clip((img[box].astype(np.float32) + 700.0) / 600.0, 0.0, 1.0)
    if sigma_mm > 0:
        ramp = ndimage.gaussian_filter(ramp, sigma=sigma_mm / sp, mode="nearest")
    out[box] = np.where(lung[box], np.clip(ramp, 0.0, 1.0), 0.0)
    return out


def _local_mean(image_hu: np.ndarray, spacing: np.ndarray, window_mm: float) -> np.ndarray:
    size = [max(1, int(round(window_mm / s))) for s in spacing]
    return ndimage.uniform_filter(image_hu.astype(np.float32), size=size, mode="nearest")


class LocalZScoreRule:
    """Z-score of the local mean HU against the lung statistics of normal scans.

    :meth:`fit` estimates the mean ``mu`` and standard deviation ``sigma`` of the local mean HU (a box mean over
    about ``window_mm`` per axis) over the lung-region voxels of the training normals, pooled; calling the rule gives
    ``|local mean HU - mu| / sigma`` inside the lung region and 0 outside.

    Args:
        mu: mean of the local mean HU over normal lung voxels (set by :meth:`fit`).
        sigma: its standard deviation (> 0).
        window_mm: side of the box mean in mm (> 0).

    Example::

        rule = LocalZScoreRule().fit(normal_images, normal_lung_masks, spacings)
        score = rule(image_hu, lung_region_mask(image_hu, spacing), spacing)
    """

    def __init__(self, mu: float | None = None, sigma: float | None = None, window_mm: float = 5.0) -> None:
        if not np.isfinite(window_mm) or window_mm <= 0:
            raise ValueError(f"window_mm must be > 0, got {window_mm}.")
        if sigma is not None and (not np.isfinite(sigma) or sigma <= 0):
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        if mu is not None and not np.isfinite(mu):
            raise ValueError(f"mu must be finite, got {mu}.")
        self.mu = None if mu is None else float(mu)
        self.sigma = None if sigma is None else float(sigma)
        self.window_mm = float(window_mm)

    @property
    def is_fitted(self) -> bool:
        """Whether ``mu`` and ``sigma`` are set."""
        return self.mu is not None and self.sigma is not None

    def fit(
        self,
        normal_images_hu: Sequence[Any],
        normal_lung_masks: Sequence[Any],
        spacings: Sequence[Sequence[float]],
        window_mm: float | None = None,
    ) -> LocalZScoreRule:
        """Estimate ``mu`` and ``sigma`` over the lung voxels of normal scans (pooled, float64 accumulation).

        Args:
            normal_images_hu: normal CT volumes ``(X, Y, Z)`` in HU.
            normal_lung_masks: their lung regions.
            spacings: their voxel sizes in mm.
            window_mm: box size in mm; default: the rule's ``window_mm``.

        Returns:
            ``self``.

        Raises:
            ValueError: on empty or mismatching inputs, or when the masks hold fewer than 2 voxels.
        """
        if window_mm is not None:
            if not np.isfinite(window_mm) or window_mm <= 0:
                raise ValueError(f"window_mm must be > 0, got {window_mm}.")
            self.window_mm = float(window_mm)
        if not (len(normal_images_hu) == len(normal_lung_masks) == len(spacings)) or len(normal_images_hu) == 0:
            raise ValueError(
                "normal_images_hu, normal_lung_masks and spacings must be non-empty and of the same length, got "
                f"{len(normal_images_hu)}, {len(normal_lung_masks)} and {len(spacings)}."
            )
        n, s1, s2 = 0, 0.0, 0.0
        for img, lung, sp in zip(normal_images_hu, normal_lung_masks, spacings):
            img = _check_volume(img)
            lung = _check_mask(lung, img.shape, "normal lung mask")
            v = _local_mean(img, _check_spacing(sp), self.window_mm)[lung].astype(np.float64)
            n += v.size
            s1 += float(v.sum())
            s2 += float(np.square(v).sum())
        if n < 2:
            raise ValueError(f"the normal lung masks hold {n} voxels; at least 2 are needed.")
        mu = s1 / n
        var = max(s2 / n - mu * mu, 0.0) * n / (n - 1)
        self.mu, self.sigma = mu, max(float(np.sqrt(var)), 1e-6)
        return self

    def __call__(self, image_hu: Any, lung_mask: Any, spacing: Sequence[float]) -> np.ndarray:
        """``|local mean HU - mu| / sigma`` inside ``lung_mask``, 0 outside (float32, the image's shape).

        Raises:
            RuntimeError: if the rule is not fitted.
            ValueError: on mismatching shapes or bad spacing.
        """
        if not self.is_fitted:
            raise RuntimeError("LocalZScoreRule is not fitted: call fit() or from_dict() first.")
        img = _check_volume(image_hu)
        sp = _check_spacing(spacing)
        lung = _check_mask(lung_mask, img.shape, "lung_mask")
        out = np.zeros(img.shape, dtype=np.float32)
        if not lung.any():
            return out
        margin = np.ceil(self.window_mm / sp).astype(int) + 1
        box = _bbox(lung, margin)
        z = np.abs(_local_mean(img[box], sp, self.window_mm) - np.float32(self.mu)) / np.float32(self.sigma)
        out[box] = np.where(lung[box], z, 0.0)
        return out

    def state_dict(self) -> dict[str, float | None]:
        """JSON-serialisable state: ``mu``, ``sigma`` and ``window_mm``."""
        return {"mu": self.mu, "sigma": self.sigma, "window_mm": self.window_mm}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LocalZScoreRule:
        """Rebuild a rule from :meth:`state_dict`.

        Raises:
            ValueError: when a key is missing or a value is invalid.
        """
        missing = [k for k in ("mu", "sigma") if k not in state]
        if missing:
            raise ValueError(f"state is missing the keys {missing}.")
        return cls(mu=state["mu"], sigma=state["sigma"], window_mm=float(state.get("window_mm", 5.0)))


def lung_window_constant_map(
    image_hu: Any, lung_mask: Any, centre_hu: float = -850.0, window: Sequence[float] = (-1000.0, -400.0)
) -> np.ndarray:
    """The lung-window error map of a model that reconstructs one constant: ``|x - c|`` inside the lung region.

    ``x`` is the image in the lung window scaled to [-1, 1] (as SimSID-3D's first input channel) and ``c`` is
    ``centre_hu`` on the same scale (the default, -850 HU, is typical parenchyma). A control for learned maps over the
    lung window: a model whose map does not beat it has learned nothing that a constant would not give.

    Args:
        image_hu: CT ``(X, Y, Z)`` in HU.
        lung_mask: lung region, same shape.
        centre_hu: the constant reconstruction, in HU.
        window: ``(low, high)`` HU of the lung window.

    Returns:
        float32 map in [0, 2] of the image's shape, 0 outside the lung region.

    Raises:
        ValueError: on mismatching shapes, a window without low < high, or a non-finite ``centre_hu``.
    """
    img = _check_volume(image_hu)
    lung = _check_mask(lung_mask, img.shape, "lung_mask")
    if not np.isfinite(centre_hu):
        raise ValueError(f"centre_hu must be finite, got {centre_hu}.")
    scale = HUWindows([window])  # the model's own lung-window channel; validates the window
    x = scale(torch.from_numpy(img)[None])[0].numpy()
    c = float(scale(torch.tensor([[centre_hu]], dtype=torch.float32))[0, 0])
    out = np.abs(x - np.float32(c)).astype(np.float32)
    out[~lung] = 0.0
    return out
