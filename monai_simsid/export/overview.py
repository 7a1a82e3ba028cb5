"""A one-page PNG overview of a case: axial, coronal and sagittal CT slices with the anomaly heat map."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from nibabel import orientations

from monai_simsid.export.nifti import as_spatial_array, check_affine
from monai_simsid.utils.atomic import atomic_path

__all__ = ["save_overview_png", "focus_from"]


def focus_from(score_map: np.ndarray, findings: Sequence[Mapping] | None = None) -> np.ndarray:
    """The voxel to centre the overview on: the top finding's peak (or centroid), else the map's maximum."""
    if findings:
        top = findings[0]
        v = top.get("peak_voxel", top.get("centroid_voxel"))
        if v is not None:
            return np.rint(np.asarray(v, dtype=float)).astype(int)
    return np.asarray(np.unravel_index(int(np.nanargmax(np.nan_to_num(score_map, nan=-np.inf))), score_map.shape))


def save_overview_png(
    image_hu,
    score_map,
    affine,
    path: str | os.PathLike,
    focus_voxel: Sequence[int] | None = None,
    findings: Sequence[Mapping] | None = None,
    case: str | None = None,
    score: float | None = None,
    label: str | None = None,
    window: tuple[float, float] = (-1000.0, 500.0),
    overlay_min: float = 0.3,
    cmap: str = "hot",
    dpi: int = 100,
) -> Path:
    """Write a PNG with axial, coronal and sagittal slices through the focus voxel, atomically.

    The volume is first flipped/permuted to the closest RAS axes (no resampling), then shown in radiological
    convention: axial and coronal with the patient's right on the image's left, sagittal with anterior on the left,
    superior up. Pixels are drawn at their physical size, so the aspect ratio is right for anisotropic voxels.
    For an oblique scan the panels are the scan's own slices, labelled by their closest anatomical direction.

    Args:
        image_hu: CT ``(X, Y, Z)`` in Hounsfield units, in the input's geometry.
        score_map: anomaly map ``(X, Y, Z)`` in [0, 1], same grid.
        affine: 4x4 voxel-to-RAS affine of that grid.
        path: output ``.png``.
        focus_voxel: voxel ``[x, y, z]`` to centre on; default: the top finding, else the map's maximum.
        findings: findings from :func:`monai_simsid.transforms.post.extract_findings` (sorted, top first).
        case, score, label: shown in the title.
        window: CT display window in HU (default: lung and soft tissue, -1000..500).
        overlay_min: scores below this are transparent.
        cmap: matplotlib colormap of the heat map.
        dpi: resolution of the PNG.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    img = as_spatial_array(image_hu, name="image_hu").astype(np.float32)
    smap = as_spatial_array(score_map, name="score_map").astype(np.float32)
    if img.shape != smap.shape:
        raise ValueError(f"image shape {img.shape} and score map shape {smap.shape} differ")
    aff = check_affine(affine)
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    if not 0.0 <= overlay_min < 1.0:
        raise ValueError(f"overlay_min must be in [0, 1), got {overlay_min}")
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"overview path must end with .png, got {path}")

    focus = focus_from(smap, findings) if focus_voxel is None else np.rint(np.asarray(focus_voxel, float)).astype(int)
    if focus.shape != (3,):
        raise ValueError(f"focus_voxel must be 3 indices, got {focus_voxel}")
    focus = np.clip(focus, 0, np.array(img.shape) - 1)
    focus_ras = (aff @ np.append(focus.astype(float), 1.0))[:3]

    # closest-RAS reorientation by flips and axis permutations only
    ornt = orientations.io_orientation(aff)
    can_img = orientations.apply_orientation(img, ornt)
    can_map = orientations.apply_orientation(smap, ornt)
    can_aff = aff @ orientations.inv_ornt_aff(ornt, img.shape)
    cf = np.rint(np.linalg.solve(can_aff, np.append(focus_ras, 1.0))[:3]).astype(int)
    cf = np.clip(cf, 0, np.array(can_img.shape) - 1)
    sp = np.sqrt((can_aff[:3, :3] ** 2).sum(0))
    nx, ny, nz = can_img.shape

    def ext(n0, s0, n1, s1):
        return [-0.5 * s0, (n0 - 0.5) * s0, -0.5 * s1, (n1 - 0.5) * s1]

    # (title, CT slice, map slice, extent, focus position in mm, labels left/right/top/bottom)
    panels = [
        ("Axial", can_img[:, :, cf[2]], can_map[:, :, cf[2]], ext(nx, sp[0], ny, sp[1]),
         (cf[0] * sp[0], cf[1] * sp[1]), ("R", "L", "A", "P")),
        ("Coronal", can_img[:, cf[1], :], can_map[:, cf[1], :], ext(nx, sp[0], nz, sp[2]),
         (cf[0] * sp[0], cf[2] * sp[2]), ("R", "L", "S", "I")),
        ("Sagittal", can_img[cf[0], :, :], can_map[cf[0], :, :], ext(ny, sp[1], nz, sp[2]),
         (cf[1] * sp[1], cf[2] * sp[2]), ("A", "P", "S", "I")),
    ]
    fig = Figure(figsize=(15, 5.8), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    mappable = None
    radius = 10.0
    if findings:
        radius = max(5.0, (3 * 1000.0 * float(findings[0].get("volume_ml", 0.0)) / (4 * np.pi)) ** (1 / 3) * 1.6)
    for ax, (title, ct, hm, extent, fpos, (left, right, top, bottom)) in zip(axes, panels):
        ax.set_facecolor("black")
        ax.imshow(ct.T, origin="lower", cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        heat = np.ma.masked_less(np.nan_to_num(hm.T, nan=0.0), overlay_min)
        mappable = ax.imshow(heat, origin="lower", cmap=cmap, vmin=overlay_min, vmax=1.0, alpha=0.6, extent=extent,
                             interpolation="nearest")
        ax.add_patch(Circle(fpos, radius, fill=False, edgecolor="cyan", linewidth=1.0))
        ax.set_aspect("equal")
        ax.invert_xaxis()  # radiological: patient right (axial/coronal) or anterior (sagittal) on the left
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(title, color="white", fontsize=12)
        style = dict(color="yellow", fontsize=14, fontweight="bold", transform=ax.transAxes)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)

    head = [case] if case else []
    if score is not None:
        head.append(f"score {float(score):.3f}" + (f" ({label})" if label else ""))
    elif label:
        head.append(label)
    head.append(f"max voxel score {float(np.nanmax(smap)):.2f}")
    n = len(findings) if findings is not None else None
    if n is not None:
        head.append(f"{n} finding{'s' if n != 1 else ''}")
    fig.suptitle("  |  ".join(head), color="white", fontsize=14)
    fig.text(
        0.5, 0.02,
        f"focus voxel [x y z] = {focus.tolist()}   RAS = ({focus_ras[0]:.1f}, {focus_ras[1]:.1f}, {focus_ras[2]:.1f}) mm"
        f"   LPS = ({-focus_ras[0]:.1f}, {-focus_ras[1]:.1f}, {focus_ras[2]:.1f}) mm   window {lo:g}..{hi:g} HU",
        color="white", ha="center", fontsize=10,
    )
    fig.subplots_adjust(left=0.01, right=0.92, bottom=0.07, top=0.88, wspace=0.03)
    if mappable is not None:
        cax = fig.add_axes([0.935, 0.15, 0.012, 0.65])
        cb = fig.colorbar(mappable, cax=cax)
        cb.set_label("anomaly score", color="white")
        cb.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return Path(path)
