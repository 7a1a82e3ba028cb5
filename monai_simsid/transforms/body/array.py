"""Body mask and body-normalised region coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = ["BodyMask", "body_bbox", "compute_body_mask", "region_index", "sample_window_starts"]


def _spacing_from(img: NdarrayOrTensor, spacing: Sequence[float] | None) -> np.ndarray:
    if spacing is not None:
        return np.asarray(spacing, dtype=float)
    affine = getattr(img, "affine", None)
    if affine is None:
        return np.ones(img.ndim - 1)
    a = np.asarray(affine, dtype=float)
    return np.sqrt((a[:-1, :-1] ** 2).sum(0))


def compute_body_mask(
    image: np.ndarray,
    spacing: Sequence[float],
    threshold: float = -500.0,
    opening_mm: float = 3.0,
    axial_axis: int = 2,
    outside: float | None = -950.0,
) -> np.ndarray:
    """Body mask of a 3D CT array: threshold, in-plane opening, largest component, holes filled per axial slice.

    The in-plane opening detaches the scanner table and clothing; per-slice hole filling closes the lungs and the
    airways even where the trachea leaves the field of view.

    A field of view cropped to the chest (a small reconstruction diameter, or a crop) cuts through the lungs, which
    then open onto the image border and are no hole of the slice. So in a slice where the body reaches the border,
    the holes are filled again with the border treated as closed wherever it is not outside air: border pixels whose
    in-plane smoothed intensity (sigma 2 mm) is above ``outside`` (lung is about -850 HU) close the slice, while the
    air around an ordinary scan (about -1000 HU, or the padding value) keeps it open. A scan whose body does not
    reach the border is unchanged.

    Args:
        image: spatial array (no channel), in the intensity units of ``threshold``.
        spacing: voxel size in mm per axis.
        threshold: intensity above which a voxel is tissue.
        opening_mm: radius of the in-plane opening in mm (0 disables it).
        axial_axis: the axis perpendicular to axial slices.
        outside: intensity below which a border pixel is outside air (``None``: the border never closes a slice, so
            lungs cut by the field of view stay outside the body).

    Returns:
        bool array of the same shape.
    """
    fg = image > threshold
    if not fg.any():
        return fg
    radius = [0 if ax == axial_axis else max(0, int(round(opening_mm / float(spacing[ax])))) for ax in range(image.ndim)]
    if opening_mm > 0 and max(radius) > 0:
        # open in-plane to cut thin bridges (table, clothing), keep the sizeable pieces, then restore the thin
        # walls near them: a thin chest wall must not be lost on a small or coarse volume
        grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
        struct = sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius)) <= 1.0
        opened = ndimage.binary_opening(fg, structure=struct)
        labels, n = ndimage.label(opened)
        if n > 0:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            keep = np.nonzero(sizes >= 0.1 * sizes.max())[0]
            core = np.isin(labels, keep)
            grow = ndimage.binary_dilation(core, structure=struct, iterations=2)
            fg = fg & grow
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(sizes.argmax())
    moved = np.moveaxis(fg, axial_axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    if outside is not None:
        image_moved = np.moveaxis(image, axial_axis, 0)
        sigma = [2.0 / float(spacing[ax]) for ax in range(image.ndim) if ax != axial_axis]
        for z, sl in enumerate(filled):
            edge = np.zeros(sl.shape, dtype=bool)
            edge[[0, -1], :] = True
            edge[:, [0, -1]] = True
            if not (sl & edge).any():
                continue  # the body does not reach the border: nothing is cut
            smooth = ndimage.gaussian_filter(np.asarray(image_moved[z], dtype=np.float32), sigma=sigma, mode="nearest")
            filled[z] = ndimage.binary_fill_holes(sl | (edge & (smooth > outside)))
    return np.moveaxis(filled, 0, axial_axis)


def body_bbox(body: NdarrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) voxel indices (end exclusive) of a spatial mask's bounding box; the whole array if empty."""
    arr = body.detach().cpu().numpy() if isinstance(body, torch.Tensor) else np.asarray(body)
    arr = arr if arr.dtype == bool else arr.astype(bool)
    # one projection per axis (any over the other axes) instead of np.nonzero over every voxel: the same box,
    # several times faster on a whole scan
    start, end = np.zeros(arr.ndim, dtype=int), np.asarray(arr.shape, dtype=int)
    for axis in range(arr.ndim):
        hit = np.flatnonzero(arr.any(axis=tuple(a for a in range(arr.ndim) if a != axis)))
        if hit.size == 0:  # empty mask: the whole array
            return np.zeros(arr.ndim, dtype=int), np.asarray(arr.shape, dtype=int)
        start[axis], end[axis] = hit[0], hit[-1] + 1
    return start, end


def region_index(
    window_start: Sequence[int] | np.ndarray,
    window_size: Sequence[int],
    bbox_start: Sequence[int],
    bbox_end: Sequence[int],
    region_grid: Sequence[int],
) -> int:
    """Index of the body region a window's centre lies in.

    The body bounding box is divided into ``region_grid`` cells (a body-normalised frame, so the same anatomy lands in
    the same cell across patients of different sizes). Centres outside the box are clamped to the nearest cell.
    The index is row-major over ``region_grid``; a grid of all ones always gives 0.
    """
    grid = np.asarray(region_grid, dtype=int)
    centre = np.asarray(window_start, dtype=float) + np.asarray(window_size, dtype=float) / 2.0
    lo = np.asarray(bbox_start, dtype=float)
    extent = np.maximum(np.asarray(bbox_end, dtype=float) - lo, 1.0)
    cell = np.clip(np.floor((centre - lo) / extent * grid), 0, grid - 1).astype(int)
    return int(np.ravel_multi_index(tuple(cell), tuple(grid)))


class BodyMask(Transform):
    """Compute a body mask from a channel-first CT image (see :func:`compute_body_mask`).

    Args:
        threshold: intensity above which a voxel is tissue, in the image's units (HU by default).
        opening_mm: in-plane opening radius in mm.
        spacing: voxel spacing; read from the MetaTensor affine when None.
        axial_axis: spatial axis perpendicular to axial slices (2 after RAS orientation).
        mode: ``"threshold"`` (the body of a whole scan) or ``"whole"`` (every voxel: small crops inside the lung
            such as nodule VOIs, where no body outline exists).
        outside: intensity of outside air at the image border, for a field of view that cuts the lungs (see
            :func:`compute_body_mask`).
    """

    def __init__(
        self,
        threshold: float = -500.0,
        opening_mm: float = 3.0,
        spacing: Sequence[float] | None = None,
        axial_axis: int = 2,
        mode: str = "threshold",
        outside: float | None = -950.0,
    ) -> None:
        if opening_mm < 0:
            raise ValueError(f"opening_mm must be >= 0, got {opening_mm}.")
        if mode not in ("threshold", "whole"):
            raise ValueError(f"mode must be 'threshold' or 'whole', got {mode!r}.")
        self.mode = mode
        self.outside = outside
        self.threshold = threshold
        self.opening_mm = opening_mm
        self.spacing = spacing
        self.axial_axis = axial_axis

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        spacing = _spacing_from(img, self.spacing)
        if self.mode == "whole":
            return convert_to_dst_type(np.ones_like(arr[:1], dtype=np.float32), img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]
        masks = [
            compute_body_mask(c, spacing, self.threshold, self.opening_mm, self.axial_axis, self.outside) for c in arr[:1]
        ]
        out = np.stack(masks).astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


def sample_window_starts(
    body: np.ndarray,
    roi_size: Sequence[int],
    num_samples: int,
    rng: np.random.Generator,
    exclude: np.ndarray | None = None,
    max_tries: int = 64,
) -> np.ndarray:
    """Start corners of ``num_samples`` windows whose centres are drawn uniformly from the body voxels.

    The array must be at least ``roi_size`` on every axis; windows are shifted to stay inside it. With ``exclude``
    (a mask of voxels no window may hold, e.g. a lesion in a normal scan), the centres are drawn uniformly from the
    body voxels whose window holds none of them: by rejection, and where ``max_tries`` rounds of draws do not find
    enough, from every such voxel, found exactly.

    Returns:
        ``(num_samples, ndim)`` int array.

    Raises:
        ValueError: a window larger than the array, or an ``exclude`` mask that leaves no clear window.
    """
    shape = np.asarray(body.shape)
    roi = np.asarray(roi_size, dtype=int)
    if len(roi) != body.ndim:
        raise ValueError(f"roi_size {tuple(roi)} does not match a {body.ndim}D mask.")
    if np.any(shape < roi):
        raise ValueError(f"array shape {tuple(shape)} is smaller than the window {tuple(roi)}; pad it first.")
    idx = np.flatnonzero(body.reshape(-1) > 0)

    def draw(n: int) -> np.ndarray:
        if idx.size == 0:
            centres = rng.integers(0, shape, size=(n, body.ndim))
        else:
            centres = np.stack(np.unravel_index(rng.choice(idx, size=n), body.shape), axis=-1)
        return np.clip(centres - roi // 2, 0, shape - roi).astype(int)

    points = None if exclude is None else np.argwhere(np.asarray(exclude) > 0)
    if points is None or points.size == 0:
        return draw(num_samples)
    if tuple(np.asarray(exclude).shape) != tuple(body.shape):
        raise ValueError(f"exclude mask {tuple(np.asarray(exclude).shape)} and body {tuple(body.shape)} differ in shape.")
    kept: list[np.ndarray] = []
    for _ in range(max_tries):
        starts = draw(max(num_samples, 16))
        inside = (points[None] >= starts[:, None]) & (points[None] < starts[:, None] + roi)
        kept.extend(starts[~inside.all(-1).any(-1)])
        if len(kept) >= num_samples:
            return np.stack(kept[:num_samples])
    # clear windows are rare: find every body voxel whose window is clear (a summed-area table), and draw from those
    counts = np.pad(np.asarray(exclude) > 0, [(1, 0)] * body.ndim).astype(np.int32)
    for axis in range(body.ndim):
        counts = counts.cumsum(axis)
    hi = [np.arange(n - r + 1) + r for n, r in zip(shape, roi)]  # window ends, one per start
    total = np.zeros([len(h) for h in hi], dtype=np.int64)
    for corner in np.ndindex(*(2,) * body.ndim):
        ix = np.ix_(*[h if c else h - r for h, c, r in zip(hi, corner, roi)])
        total += (-1) ** (body.ndim - sum(corner)) * counts[ix]
    centre_starts = np.ix_(*[np.clip(np.arange(n) - r // 2, 0, n - r) for n, r in zip(shape, roi)])
    clear = (total == 0)[centre_starts] & (body > 0)
    idx = np.flatnonzero(clear.reshape(-1))
    if idx.size == 0:
        raise ValueError(
            f"the exclusion mask ({points.shape[0]} voxels, grown by its margin) leaves no {tuple(int(r) for r in roi)} training window "
            "clear of it in this scan: make the mask smaller or leave the scan out."
        )
    centres = np.stack(np.unravel_index(rng.choice(idx, size=num_samples), body.shape), axis=-1)
    return np.clip(centres - roi // 2, 0, shape - roi).astype(int)
