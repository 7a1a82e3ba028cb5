"""Synthetic chest-CT phantoms: the embedded default data of monai-simsid.

The generator draws a torso in millimetre coordinates (body wall with skin, fat and muscle, two lungs with a
diaphragm dome and branching vessel trees, heart, mediastinum with great vessels, trachea, spine, ribs, sternum
and upper abdomen), then renders it on a voxel grid, blurs it slightly (partial volume) and adds correlated
noise. Because the anatomy lives in millimetres, another ``spacing`` gives roughly the same anatomy at another
resolution. The torso is a scaled-down chest (about 120-130 mm wide) so that it fills the default field of view
of 96 voxels at 1.5 mm.

Arrays are indexed ``[x, y, z]`` in RAS+ orientation: ``x`` increases towards the patient's right, ``y`` from
posterior to anterior and ``z`` from inferior to superior; the affine is ``diag(spacing)`` with the origin at
the first voxel.

:func:`insert_lesions` adds lung nodules (solid and ground-glass), masses and a few non-lung lesions (bone,
soft tissue, lymph node) with irregular blended shapes, and :func:`write_synthetic_dataset` writes a
reproducible NIfTI dataset with a Decathlon-style ``datalist.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from scipy import ndimage

from monai_simsid.data.lesions import irregular_ellipsoid

__all__ = [
    "LESION_KINDS",
    "PhantomCase",
    "generate_chest_ct",
    "insert_lesions",
    "save_montage",
    "write_synthetic_dataset",
]

#: lesion kinds understood by :func:`insert_lesions`, with their default sampling probabilities.
LESION_KINDS: dict[str, float] = {
    "solid_nodule": 0.40,
    "ggo_nodule": 0.25,
    "mass": 0.15,
    "bone_lytic": 0.05,
    "bone_sclerotic": 0.05,
    "soft_tissue": 0.05,
    "lymph_node": 0.05,
}
_LUNG_KINDS = ("solid_nodule", "ggo_nodule", "mass")

_AIR = -1000.0
_HU_MIN, _HU_MAX = -1024.0, 3071.0

SizeLike = Union[int, Sequence[int]]
SpacingLike = Union[float, Sequence[float]]


@dataclass
class PhantomCase:
    """One synthetic chest CT.

    Attributes:
        image: float32 HU volume indexed ``[x, y, z]``.
        body: uint8 body mask (1 inside the patient).
        lungs: uint8 lung mask (1 in either lung, vessels included).
        affine: 4x4 voxel-to-RAS affine, ``diag(spacing)``.
        spacing: voxel size in millimetres along ``x, y, z``.
        structures: extra uint8 masks by name (``"bone"``, ``"spine"``, ``"heart"``, ``"liver"``,
            ``"mediastinum"``), used to place non-lung lesions.
    """

    image: np.ndarray
    body: np.ndarray
    lungs: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    structures: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers


def _as_size(size: SizeLike) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)):
        out = (int(size),) * 3
    else:
        out = tuple(int(s) for s in size)
    if len(out) != 3 or min(out) < 16:
        raise ValueError(f"size must be an int or 3 ints, each >= 16, got {size!r}.")
    return out  # type: ignore[return-value]


def _as_spacing(spacing: SpacingLike) -> tuple[float, float, float]:
    if isinstance(spacing, (int, float, np.integer, np.floating)):
        out = (float(spacing),) * 3
    else:
        out = tuple(float(s) for s in spacing)
    if len(out) != 3 or not all(np.isfinite(out)) or min(out) <= 0:
        raise ValueError(f"spacing must be a positive float or 3 positive floats, got {spacing!r}.")
    return out  # type: ignore[return-value]


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    return np.diag([spacing[0], spacing[1], spacing[2], 1.0]).astype(np.float64)


class _Grid:
    """Millimetre coordinates of a voxel grid centred on the origin (broadcastable 3D views)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        self.h = float(min(spacing))
        self.axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing)]
        self.x = self.axes[0][:, None, None]
        self.y = self.axes[1][None, :, None]
        self.z = self.axes[2][None, None, :]

    def index(self, p: Sequence[float]) -> np.ndarray:
        """Voxel index (float) of a point in millimetres."""
        return np.array([p[i] / self.spacing[i] + (self.shape[i] - 1) / 2.0 for i in range(3)])

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        sl = []
        for i in range(3):
            a = int(np.floor(lo[i] / self.spacing[i] + (self.shape[i] - 1) / 2.0))
            b = int(np.ceil(hi[i] / self.spacing[i] + (self.shape[i] - 1) / 2.0)) + 1
            a, b = max(a, 0), min(b, self.shape[i])
            if b <= a:
                return None
            sl.append(slice(a, b))
        return tuple(sl)


def _tube(grid: _Grid, out: np.ndarray, p0, p1, r0: float, r1: float | None = None) -> None:
    """Rasterise a tapered cylinder (capsule) from ``p0`` to ``p1`` as partial-volume coverage into ``out`` (max)."""
    r1 = r0 if r1 is None else r1
    p0 = np.asarray(p0, dtype=np.float32)
    p1 = np.asarray(p1, dtype=np.float32)
    pad = max(r0, r1) + grid.h
    sl = grid.box(np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad)
    if sl is None:
        return
    px = grid.axes[0][sl[0]][:, None, None] - p0[0]
    py = grid.axes[1][sl[1]][None, :, None] - p0[1]
    pz = grid.axes[2][sl[2]][None, None, :] - p0[2]
    v = p1 - p0
    vv = float(v @ v)
    if vv > 1e-12:
        t = np.clip((px * v[0] + py * v[1] + pz * v[2]) / vv, 0.0, 1.0)
    else:
        t = np.zeros(np.broadcast_shapes(px.shape, py.shape, pz.shape), dtype=np.float32)
    d = np.sqrt((px - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (pz - t * v[2]) ** 2)
    r = r0 + (r1 - r0) * t
    # coverage of the voxel; thinner-than-voxel tubes are dimmed in proportion to their diameter
    cov = (np.clip((r - d) / grid.h + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * r / grid.h)).astype(np.float32)
    np.maximum(out[sl], cov, out=out[sl])


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise correlated with a Gaussian kernel of ``sigma`` voxels."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0:
        n = ndimage.gaussian_filter(n, sigma=sigma, mode="wrap")
        n /= float(n.std()) + 1e-8
    return n


def _rotate(d: np.ndarray, rng: np.random.Generator, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate unit vector ``d`` by ``angle`` (radians) in a random plane; also return the plane normal."""
    a = rng.standard_normal(3)
    a -= (a @ d) * d
    a /= np.linalg.norm(a) + 1e-12
    return np.cos(angle) * d + np.sin(angle) * a, a


# ------------------------------------------------------------------------------------------- generator


def generate_chest_ct(
    size: SizeLike = 96,
    spacing: SpacingLike = 1.5,
    seed: int = 0,
    noise_std: float = 15.0,
) -> PhantomCase:
    """Generate one synthetic chest CT phantom.

    The anatomy (body size and shape, lung and heart size and position, diaphragm height, vessel trees, rib
    positions...) is drawn from ``seed``; the same seed gives a bit-identical volume.

    Args:
        size: grid size in voxels, an int (cube) or ``(X, Y, Z)``; each >= 16.
        spacing: voxel size in millimetres, a float or ``(sx, sy, sz)``.
        seed: random seed (non-negative int).
        noise_std: standard deviation of the added CT noise in HU (>= 0).

    Returns:
        a :class:`PhantomCase` with the float32 HU image and its masks.

    Raises:
        ValueError: if an argument is invalid.
    """
    shape = _as_size(size)
    sp = _as_spacing(spacing)
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
    rng = np.random.default_rng(int(seed))
    g = _Grid(shape, sp)
    x, y, z = g.x, g.y, g.z
    u = rng.uniform

    # ---------------------------------------------------------------- random anatomy parameters (mm)
    a0, b0 = u(56, 64), u(40, 47)  # body half-width / half-depth
    yc = u(-3, 3)  # body centre (y)
    post_flat = u(0.85, 0.95)  # posterior half-depth factor
    p_exp = u(2.2, 2.8)  # superellipse exponent of the cross-section
    wz = u(0.03, 0.07)
    phz = u(0, 2 * np.pi)
    skin_t, fat_t, musc_t = u(1.2, 1.8), u(3.0, 7.0), u(3.5, 6.0)
    rib_t = u(2.5, 3.5)
    dome_r = u(-40, -30)
    dome_l = dome_r - u(3, 8)
    apex = u(46, 56)
    lung_taper = u(70, 90)
    heart_r = np.array([u(24, 28), u(17, 21), u(17, 21)])
    heart_xy = (-u(7, 12), yc + u(5, 10))
    heart_rot = np.deg2rad(u(25, 40))
    vert_period = u(11, 13)
    vert_phase = u(0, vert_period)
    rib_period = u(10.5, 12.5)
    rib_phase = u(0, rib_period)
    rib_drop = u(30, 40)
    fat_var = rng.standard_normal(4)

    # ---------------------------------------------------------------- body outline
    zn = z / 72.0
    a_z = a0 * (1.0 + wz * np.sin(2.0 * zn + phz) + 0.04 * zn).astype(np.float32)
    b_z = b0 * (1.0 + 0.5 * wz * np.cos(1.7 * zn + phz)).astype(np.float32)
    yr = y - yc
    b_eff = np.where(yr < 0, b_z * post_flat, b_z)
    rho = ((np.abs(x) / a_z) ** p_exp + (np.abs(yr) / b_eff) ** p_exp) ** (1.0 / p_exp)
    body = rho < 1.0
    depth = ndimage.distance_transform_edt(body, sampling=(sp[0], sp[1], 1e4)).astype(np.float32)

    theta = np.arctan2(yr / b_eff, x / a_z)  # elliptic angle: +pi/2 anterior, -pi/2 posterior
    fat_local = fat_t * (1.0 + 0.25 * fat_var[0] * np.cos(theta) + 0.2 * np.sin(theta) + 0.15 * fat_var[1] * np.sin(2 * theta))
    fat_local = np.maximum(fat_local, 1.5)
    wall_out = skin_t + fat_local  # fat/muscle boundary
    wall_in = wall_out + musc_t  # muscle/rib boundary

    img = np.full(shape, _AIR, dtype=np.float32)
    img[body] = 45.0
    img[body & (depth < wall_out)] = -100.0
    img[body & (depth < skin_t)] = 20.0

    # ---------------------------------------------------------------- spine (y positions)
    y_back = yc - b0 * post_flat
    y_vb = (y_back + u(20, 24) + 2.0 * (z / 72.0) ** 2).astype(np.float32)  # vertebral body centre, slight curve
    vb_rx, vb_ry = u(9.5, 11.5), u(8.0, 9.5)
    y_vb_front = y_vb + vb_ry

    # inner trunk: everything deeper than the wall except the paraspinal muscle block
    para = ((x / 24.0) ** 2 + ((y - (y_vb - 6.0)) / 15.0) ** 2 < 1.0) | ((np.abs(x) < 24.0) & (y < y_vb - 6.0))
    trunk = body & (depth > wall_in + rib_t + 1.0) & ~para
    dist_out = ndimage.distance_transform_edt(~trunk, sampling=(sp[0], sp[1], 1e4)).astype(np.float32)

    # ---------------------------------------------------------------- diaphragm and abdomen
    cx_l = 0.45 * a0
    ax_d, ay_d = 0.55 * a0, 0.8 * b0
    ydm = yc - 4.0
    yy = (y - ydm) / ay_d
    post_extra = 14.0 * np.maximum(-yy, 0.0) ** 2
    dome_R = dome_r - np.where(x > cx_l, 90.0, 35.0) * ((x - cx_l) / ax_d) ** 2 - 6.0 * yy**2 - post_extra
    dome_L = dome_l - np.where(x < -cx_l, 90.0, 35.0) * ((x + cx_l) / ax_d) ** 2 - 6.0 * yy**2 - post_extra
    zd = np.maximum(dome_R, dome_L)  # (X, Y, 1)
    thorax = trunk & (z > zd)
    abdomen = trunk & (z <= zd)
    img[thorax] = -85.0  # mediastinal / extrapleural fat by default
    img[abdomen] = 38.0
    liver = abdomen & (x > -12.0 + 6.0 * np.sin(0.05 * y)) & (z > zd - 70.0)
    img[liver] = 58.0
    spleen = abdomen & ((((x + 0.75 * a0) / 14.0) ** 2 + ((y - (yc - 0.35 * b0)) / 18.0) ** 2 + ((z - (dome_l - 20)) / 25.0) ** 2) < 1.0)
    img[spleen] = 48.0
    stomach_c = np.array([-0.35 * a0, yc + 0.15 * b0, dome_l - 18.0])
    st_r = np.array([18.0, 14.0, 16.0])
    stomach = abdomen & (
        ((x - stomach_c[0]) / st_r[0]) ** 2 + ((y - stomach_c[1]) / st_r[1]) ** 2 + ((z - stomach_c[2]) / st_r[2]) ** 2 < 1.0
    )
    img[stomach] = 15.0
    gas = stomach & (z > stomach_c[2] + st_r[2] * u(0.35, 0.6)) & (z > zd - 12.0)
    img[gas] = -1000.0
    # stomach wall
    stomach_in = abdomen & (
        ((x - stomach_c[0]) / (st_r[0] - 2.5)) ** 2 + ((y - stomach_c[1]) / (st_r[1] - 2.5)) ** 2 + ((z - stomach_c[2]) / (st_r[2] - 2.5)) ** 2 >= 1.0
    )
    img[stomach & stomach_in] = 42.0
    # intra-abdominal fat patches
    abd_fat = abdomen & ~liver & ~spleen & ~stomach & (_smooth_noise(rng, shape, 3.0 / g.h) > 0.3)
    img[abd_fat] = -90.0

    # ---------------------------------------------------------------- heart and mediastinum
    hc, hs = np.cos(heart_rot), np.sin(heart_rot)
    zhc = float(max(dome_r, dome_l) - 4.0) + heart_r[2] * 0.75
    hx, hy = x - heart_xy[0], y - heart_xy[1]
    hu_ = hc * hx - hs * hy  # long axis towards anterior-left
    hv_ = hs * hx + hc * hy
    rho_h = np.sqrt((hu_ / heart_r[0]) ** 2 + (hv_ / heart_r[1]) ** 2 + ((z - zhc) / heart_r[2]) ** 2)
    heart = thorax & (rho_h < 1.0)
    img[heart] = 40.0
    heart_zone = rho_h < 1.0 + 3.0 / float(heart_r.min())  # pericardial fat margin

    vessels_big = np.zeros(shape, dtype=np.float32)  # great vessels, oesophagus (soft tissue)
    air_big = np.zeros(shape, dtype=np.float32)  # trachea and main bronchi lumen
    wall_big = np.zeros(shape, dtype=np.float32)  # airway walls
    z_top = float(g.axes[2][-1]) + 10.0
    z_bot = float(g.axes[2][0]) - 10.0
    heart_top = zhc + heart_r[2]
    z_arch = heart_top + u(16, 24)
    yv0 = float(np.interp(0.0, g.axes[2], y_vb[0, 0, :]))  # vertebral centre at z = 0
    y_tr = yv0 + vb_ry + u(12, 15)
    # aorta: ascending, arch, descending
    asc0 = (heart_xy[0] + 9.0, heart_xy[1] + 2.0, zhc + 5.0)
    asc1 = (4.0, heart_xy[1] + 1.0, z_arch)
    arch1 = (-5.0, y_tr + 2.0, z_arch + 4.0)
    desc0 = (-12.0, yv0 + vb_ry + 3.0, z_arch - 2.0)
    desc1 = (-9.0, yv0 + vb_ry + 1.0, z_bot)
    r_asc, r_desc = u(6.0, 7.5), u(5.0, 6.0)
    _tube(g, vessels_big, asc0, asc1, r_asc)
    _tube(g, vessels_big, asc1, arch1, r_asc, r_desc + 0.5)
    _tube(g, vessels_big, arch1, desc0, r_desc + 0.5, r_desc)
    _tube(g, vessels_big, desc0, desc1, r_desc)
    # supra-aortic branches and superior vena cava
    _tube(g, vessels_big, (2.0, y_tr + 6.0, z_arch + 4.0), (7.0, y_tr + 8.0, z_top), 3.5, 3.0)
    _tube(g, vessels_big, (-4.0, y_tr + 3.0, z_arch + 6.0), (-8.0, y_tr + 3.0, z_top), 3.0, 2.6)
    _tube(g, vessels_big, (-8.0, y_tr + 1.0, z_arch + 4.0), (-14.0, y_tr, z_top), 3.0, 2.8)
    svc_x = u(12.0, 15.0)
    _tube(g, vessels_big, (svc_x, heart_xy[1] - 2.0, zhc + 6.0), (svc_x - 2.0, y_tr + 7.0, z_top), 4.5, 4.0)
    # oesophagus behind the trachea, slightly left
    _tube(g, vessels_big, (-2.0, y_tr - 8.0, z_top), (-4.0, yv0 + vb_ry + 4.0, dome_l - 4.0), 3.5)
    # pulmonary trunk and arteries to the hila
    z_hil = heart_top + u(2, 7)
    y_hil = yc + u(-6, -1)
    hil_x = u(14, 18)
    pt0 = (heart_xy[0] - 2.0, heart_xy[1] + 10.0, zhc + 8.0)
    pt1 = (-7.0, y_hil + 8.0, z_hil + 4.0)
    _tube(g, vessels_big, pt0, pt1, 6.0, 5.0)
    hila = {+1: np.array([hil_x, y_hil, z_hil]), -1: np.array([-hil_x - 1.0, y_hil, z_hil + 3.0])}
    _tube(g, vessels_big, pt1, hila[+1] + (0, 2, -1), 4.0, 3.5)
    _tube(g, vessels_big, pt1, hila[-1] + (0, 2, 0), 4.0, 3.5)
    # trachea and main bronchi
    z_car = z_hil + u(14, 20)
    r_tr = u(5.0, 6.0)
    _tube(g, air_big, (0.0, y_tr, z_top), (0.0, y_tr, z_car), r_tr)
    _tube(g, wall_big, (0.0, y_tr, z_top), (0.0, y_tr, z_car), r_tr + 1.2)
    for s in (+1, -1):
        tgt = hila[s] + (-s * 1.0, -4.0, 1.0)
        _tube(g, air_big, (0.0, y_tr, z_car), tgt, 3.2, 2.6)
        _tube(g, wall_big, (0.0, y_tr, z_car), tgt, 4.3, 3.7)

    med_half = 5.0 + 3.0 * np.clip((z - heart_top) / 30.0, 0.0, 1.0)
    mediastinum = thorax & (
        (np.abs(x - 0.5 * heart_xy[0] * np.clip((heart_top - z) / 20.0, 0.0, 1.0)) < med_half)
        | heart_zone
        | (vessels_big > 0.05)
        | (wall_big > 0.05)
    )

    # ---------------------------------------------------------------- lungs
    lungs = np.zeros(shape, dtype=bool)
    taper = np.sqrt(np.clip((apex - z) / lung_taper, 0.0, 1.0))
    for s in (+1, -1):
        cxs = s * (0.42 * a0)
        rx = 0.8 * a0 * taper + 1e-3
        ry = 1.3 * b0 * taper + 1e-3
        shape_s = ((x - cxs) / rx) ** 2 + ((y - (yc - 6.0)) / ry) ** 2 < 1.0
        lungs |= shape_s & (s * x > 0)
    lungs &= thorax & (z > zd + 2.0) & ~mediastinum & (dist_out == 0)
    lungs &= depth > wall_in + rib_t + 2.0
    # remove tiny disconnected islands (keep the largest component per side)
    lab, n = ndimage.label(lungs)
    if n > 2:
        sizes = ndimage.sum_labels(lungs, lab, index=np.arange(1, n + 1))
        keep = np.argsort(sizes)[::-1][:2] + 1
        lungs = np.isin(lab, keep)
    lung_grad = np.clip(-(y - yc) / b0, -1.0, 1.0)
    img[lungs] = np.broadcast_to(-858.0 + 38.0 * lung_grad, shape)[lungs]

    # ---------------------------------------------------------------- lung vessel trees
    lung_vox = lungs
    vtree = np.zeros(shape, dtype=np.float32)
    btree = np.zeros(shape, dtype=np.float32)

    def in_lung(p: np.ndarray) -> bool:
        i = np.rint(g.index(p)).astype(int)
        if np.any(i < 0) or np.any(i >= np.array(shape)):
            return False
        return bool(lung_vox[i[0], i[1], i[2]])

    max_seg = 3000
    nseg = 0
    for s in (+1, -1):
        roots = [
            (np.array([0.45 * s, 0.15, 1.0]), u(2.8, 3.4), u(14, 18)),
            (np.array([1.0 * s, 0.45, -0.1]), u(2.4, 3.0), u(12, 16)),
            (np.array([0.55 * s, -0.2, -1.0]), u(3.0, 3.6), u(14, 18)),
            (np.array([0.5 * s, -0.9, -0.5]), u(2.6, 3.2), u(12, 16)),
        ]
        stack = []
        for d, r, L in roots:
            d = d / np.linalg.norm(d)
            stack.append((hila[s].astype(float), d, r, L, 0))
        while stack and nseg < max_seg:
            p, d, r, L, level = stack.pop()
            ok = level == 0
            d0 = d
            for k in range(5 if level > 0 else 1):
                d = d0 + rng.normal(0, 0.12 + 0.15 * k, 3)
                d /= np.linalg.norm(d)
                Lk = L * (1.0, 0.75, 0.6, 0.45, 0.35)[k]
                q = p + d * Lk
                if ok or (in_lung(q) and in_lung(p + 0.5 * d * Lk)):
                    ok, L = True, Lk
                    break
            if not ok:
                continue
            r_end = r * u(0.93, 0.98)
            _tube(g, vtree, p, q, r, r_end)
            if level < 3 and r > 1.4:
                # companion bronchus
                off = np.cross(d, [0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.cross(d, [1.0, 0.0, 0.0])
                off = off / (np.linalg.norm(off) + 1e-12) * (r + 0.8 * r)
                _tube(g, btree, p + off, q + off, 0.7 * r, 0.7 * r_end)
            nseg += 1
            if r_end < 0.6 or level >= 9:
                continue
            a1, a2 = np.deg2rad(u(12, 30)), np.deg2rad(u(25, 50))
            d1, n1 = _rotate(d, rng, a1)
            d2 = np.cos(a2) * d - np.sin(a2) * n1
            d2 /= np.linalg.norm(d2)
            Lc = max(L * u(0.78, 0.9), 3.0)
            stack.append((q, d1, r_end * u(0.86, 0.94), Lc, level + 1))
            stack.append((q, d2, r_end * u(0.7, 0.82), Lc * u(0.8, 1.0), level + 1))

    vt = np.where(lungs | mediastinum, vtree, 0.0).astype(np.float32)
    img += vt * (40.0 - img)
    bt = np.where(lungs, btree, 0.0).astype(np.float32)
    bwall = np.clip(bt * 2.0, 0.0, 1.0) - bt  # thin wall around the lumen
    img += bwall * 0.5 * (20.0 - img)
    img += bt * (-960.0 - img)

    # great vessels, oesophagus and airways (after lungs so hilar vessels overlay)
    vb = np.where(thorax | abdomen, vessels_big, 0.0)
    img += vb * (42.0 - img)
    wb = np.where(thorax, wall_big, 0.0)
    img += wb * (25.0 - img)
    ab = np.where(thorax | (body & (z > apex - 10)), air_big, 0.0)
    img += ab * (-990.0 - img)

    # ---------------------------------------------------------------- spine
    zph = np.mod(z - vert_phase, vert_period)
    disc = zph < 2.2
    rho_vb = np.sqrt((x / vb_rx) ** 2 + ((y - y_vb) / vb_ry) ** 2)
    vbody = body & (rho_vb < 1.0)
    img[vbody] = 80.0  # disc
    bone_vb = vbody & ~disc
    cortical = bone_vb & (rho_vb > 1.0 - 1.6 / vb_rx)
    img[bone_vb] = 230.0 + 30.0 * rng.standard_normal(int(bone_vb.sum()), dtype=np.float32)
    img[cortical] = 700.0
    y_can = y_vb - vb_ry - 5.5
    rho_can = np.sqrt(x**2 + (y - y_can) ** 2)
    canal = body & (rho_can < 5.5) & (y > y_vb - vb_ry - 12.0)
    arch_seg = (zph > 2.0) & (zph < 0.6 * vert_period)
    neural_arch = body & arch_seg & (rho_can >= 5.5) & (rho_can < 8.5) & (y < y_vb - vb_ry + 1.0)
    spinous = body & arch_seg & (np.abs(x) < 2.2) & (y < y_can - 6.0) & (y > y_back + skin_t + fat_t + 4.0)
    transverse = body & arch_seg & (np.abs(y - (y_can + 1.0)) < 1.8) & (np.abs(x) < 15.0) & (np.abs(x) > 6.0)
    post_el = neural_arch | spinous | transverse
    img[post_el] = 520.0
    img[canal] = 25.0
    spine = vbody | post_el

    # ---------------------------------------------------------------- ribs, costal cartilage, sternum
    band = body & (dist_out > 0.4) & (dist_out < 0.4 + rib_t) & (z > zd - 45.0)
    ang = np.sin(theta)  # -1 posterior ... +1 anterior
    rib_z = z + rib_drop * (ang + 1.0) / 2.0 - rib_phase
    rphase = np.mod(rib_z, rib_period)
    rib_on = np.abs(rphase - rib_period / 2.0) < u(1.6, 2.1)
    ribs = band & rib_on & (np.abs(x) > 9.0) & (z < apex + 6.0)
    cart = ribs & (ang > 0.55) & (np.abs(x) < 0.45 * a0)
    img[ribs & ~cart] = 620.0
    img[cart] = 130.0
    stern_z0 = float(max(dome_r, dome_l)) + u(-2, 6)
    sternum = body & (np.abs(x) < u(7, 9)) & (y > yc) & (dist_out > 0.3) & (dist_out < u(5.0, 6.5)) & (z > stern_z0) & (z < apex + 5.0)
    stern_cort = sternum & ((dist_out < 1.6) | (dist_out > 4.6) | (np.abs(x) > 6.0))
    img[sternum] = 260.0
    img[stern_cort] = 480.0
    bone = spine | (ribs & ~cart) | sternum

    # ---------------------------------------------------------------- partial volume and noise
    img = ndimage.gaussian_filter(img, sigma=[0.55 * g.h / s for s in sp], mode="nearest")
    if noise_std > 0:
        img += noise_std * _smooth_noise(rng, shape, 0.6)
    np.clip(img, _HU_MIN, _HU_MAX, out=img)

    structures = {
        "bone": bone.astype(np.uint8),
        "spine": spine.astype(np.uint8),
        "heart": heart.astype(np.uint8),
        "liver": liver.astype(np.uint8),
        "mediastinum": (mediastinum & ~heart & (vessels_big < 0.5) & (air_big < 0.5) & (img < -30)).astype(np.uint8),
    }
    return PhantomCase(
        image=img.astype(np.float32, copy=False),
        body=body.astype(np.uint8),
        lungs=(lungs | (lungs & (vt > 0))).astype(np.uint8),
        affine=_affine(sp),
        spacing=sp,
        structures=structures,
    )


# -------------------------------------------------------------------------------------------- lesions

_LESION_HU = {
    "solid_nodule": (20.0, 45.0),
    "ggo_nodule": (-600.0, -420.0),
    "mass": (25.0, 45.0),
    "bone_lytic": (30.0, 70.0),
    "bone_sclerotic": (800.0, 1000.0),
    "soft_tissue": (0.0, 15.0),
    "lymph_node": (30.0, 45.0),
}
_LESION_TEXTURE = {
    "solid_nodule": 12.0,
    "ggo_nodule": 35.0,
    "mass": 20.0,
    "bone_lytic": 20.0,
    "bone_sclerotic": 60.0,
    "soft_tissue": 8.0,
    "lymph_node": 8.0,
}


def _pick_center(rng: np.random.Generator, dist: np.ndarray, need: float) -> tuple[np.ndarray, float] | None:
    """Random voxel whose distance-to-boundary is at least ``need`` (mm), relaxing ``need`` when impossible.

    Returns the voxel index and the distance actually available there, or ``None`` if ``dist`` is all zero.
    """
    dmax = float(dist.max())
    if dmax <= 0:
        return None
    need = min(need, 0.8 * dmax)
    cand = np.flatnonzero(dist.ravel() >= max(need, 1e-6))
    idx = int(cand[rng.integers(len(cand))])
    c = np.array(np.unravel_index(idx, dist.shape))
    return c, float(dist.ravel()[idx])


def _region_masks(
    image: np.ndarray, lungs: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float], structures: dict
) -> dict[str, np.ndarray]:
    """Target regions for the non-lung lesions, from the phantom's structures or from HU thresholds."""
    smooth = ndimage.gaussian_filter(image, sigma=1.0)
    lung_near = ndimage.distance_transform_edt(~lungs, sampling=spacing) < 15.0
    bone = structures.get("bone")
    bone = bone.astype(bool) if bone is not None else (smooth > 200.0) & body & ~lungs
    liver = structures.get("liver")
    soft = (smooth > 20.0) & (smooth < 80.0) & body & ~lungs & ~bone
    if liver is not None and liver.sum() > 0:
        soft = liver.astype(bool) & soft
    fat = structures.get("mediastinum")
    if fat is not None and fat.sum() > 0:
        fat = fat.astype(bool)
    else:
        fat = (smooth > -150.0) & (smooth < -40.0) & body & lung_near
    if not fat.any():
        fat = (smooth > -150.0) & (smooth < -40.0) & body
    return {"bone": bone, "soft": soft, "fat": fat}


def insert_lesions(
    case_or_image: PhantomCase | np.ndarray,
    lungs: np.ndarray | None = None,
    body: np.ndarray | None = None,
    spacing: SpacingLike | None = None,
    seed: int = 0,
    num_lesions: int | None = None,
    kinds: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Insert synthetic lesions into a chest CT.

    Lesion kinds (see :data:`LESION_KINDS`): ``solid_nodule`` (~ +30 HU) and ``ggo_nodule`` (~ -500 HU, vessels
    stay visible through it), 3-30 mm in diameter, inside a lung; ``mass`` (30-50 mm, may touch the pleura);
    ``bone_lytic`` (~ +50 HU hole) and ``bone_sclerotic`` (~ +900 HU) in the spine, sternum or a rib;
    ``soft_tissue`` (hypodense ~ 0-15 HU, in the liver when present, else in muscle); ``lymph_node`` (~ +40 HU
    in mediastinal fat). Shapes come from :func:`~monai_simsid.data.lesions.irregular_ellipsoid`; the new
    intensity is the background blended with the lesion HU (plus texture noise) by the soft mask. A non-lung
    kind without a suitable target region falls back to ``solid_nodule``.

    Args:
        case_or_image: a :class:`PhantomCase` (its masks, spacing and structures are used when the next
            arguments are ``None``) or a float HU array ``[x, y, z]``.
        lungs: lung mask (required with a plain array).
        body: body mask (required with a plain array).
        spacing: voxel size in mm (required with a plain array).
        seed: random seed; the output is deterministic for a given input and seed.
        num_lesions: number of lesions; default: one lesion per entry of ``kinds`` if given, else 1-3.
        kinds: explicit lesion kinds, one lesion per entry (``num_lesions`` must then be ``None`` or equal to
            ``len(kinds)``); default: drawn from :data:`LESION_KINDS` (mostly lung nodules and masses,
            about 20% non-lung lesions).

    Returns:
        ``(image, lesion_mask)``: the float32 image with lesions and a non-empty uint8 mask (1 = lesion, the
        soft mask > 0.5, restricted to the body).

    Raises:
        ValueError: on invalid arguments or when the lungs are empty.
    """
    structures: dict[str, np.ndarray] = {}
    if isinstance(case_or_image, PhantomCase):
        image = case_or_image.image
        lungs = case_or_image.lungs if lungs is None else lungs
        body = case_or_image.body if body is None else body
        spacing = case_or_image.spacing if spacing is None else spacing
        structures = case_or_image.structures
    else:
        image = np.asarray(case_or_image)
    if lungs is None or body is None or spacing is None:
        raise ValueError("lungs, body and spacing are required when a plain image is given.")
    if image.ndim != 3:
        raise ValueError(f"image must be 3D [x, y, z], got shape {image.shape}.")
    lungs = np.asarray(lungs).astype(bool)
    body = np.asarray(body).astype(bool)
    if lungs.shape != image.shape or body.shape != image.shape:
        raise ValueError(f"lungs {lungs.shape} and body {body.shape} must match image {image.shape}.")
    sp = _as_spacing(spacing)
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    lungs = lungs & body
    if not lungs.any():
        raise ValueError("the lung mask is empty: cannot place lesions.")
    if kinds is not None:
        kinds = [str(k) for k in kinds]
        bad = [k for k in kinds if k not in LESION_KINDS]
        if bad or not kinds:
            raise ValueError(f"unknown or empty kinds {bad or kinds}; choose from {sorted(LESION_KINDS)}.")
        if num_lesions is not None and num_lesions != len(kinds):
            raise ValueError(f"num_lesions ({num_lesions}) must equal len(kinds) ({len(kinds)}).")
    elif num_lesions is not None and num_lesions < 1:
        raise ValueError(f"num_lesions must be >= 1, got {num_lesions}.")

    rng = np.random.default_rng(int(seed))
    if kinds is None:
        n = int(num_lesions) if num_lesions is not None else int(rng.integers(1, 4))
        names = list(LESION_KINDS)
        prob = np.array([LESION_KINDS[k] for k in names])
        kinds = [names[i] for i in rng.choice(len(names), size=n, p=prob / prob.sum())]

    out = image.astype(np.float32, copy=True)
    mask = np.zeros(image.shape, dtype=bool)
    texture = _smooth_noise(rng, image.shape, 1.0)
    lung_dist = ndimage.distance_transform_edt(lungs, sampling=sp).astype(np.float32)
    regions: dict[str, np.ndarray] | None = None
    region_dist: dict[str, np.ndarray] = {}

    for kind in kinds:
        restrict = None
        if kind in _LUNG_KINDS:
            target = None
        else:
            if regions is None:
                regions = _region_masks(out, lungs, body, sp, structures)
            key = {"bone_lytic": "bone", "bone_sclerotic": "bone", "soft_tissue": "soft", "lymph_node": "fat"}[kind]
            if key not in region_dist:
                region_dist[key] = ndimage.distance_transform_edt(regions[key], sampling=sp).astype(np.float32)
            target = region_dist[key]
            if target.max() <= 0:
                kind, target = "solid_nodule", None
            else:
                restrict = np.clip(1.5 * ndimage.gaussian_filter(regions[key].astype(np.float32), sigma=0.7), 0.0, 1.0)
        if kind == "mass":
            radius = 0.5 * rng.uniform(30.0, 50.0)
            picked = _pick_center(rng, lung_dist, 0.4 * radius)
        elif kind in ("solid_nodule", "ggo_nodule"):
            radius = 0.5 * float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
            picked = _pick_center(rng, lung_dist, 0.9 * radius)
            if picked is not None:
                radius = min(radius, max(picked[1] / 0.9, 1.5))
        else:
            radius = {"bone_lytic": rng.uniform(3.0, 8.0), "bone_sclerotic": rng.uniform(3.0, 8.0)}.get(kind, rng.uniform(4.0, 10.0))
            picked = _pick_center(rng, target, 2.0 if kind.startswith("bone") else 0.8 * radius)
            if picked is not None and not kind.startswith("bone"):
                radius = min(radius, max(picked[1] / 0.8, 2.0))
        assert picked is not None  # lungs are non-empty and target regions were checked
        center_vox = picked[0]
        aspect = rng.uniform(0.8, 1.2, 3)
        radii = [max(radius * a / s, 0.75) for a, s in zip(aspect, sp)]
        center = center_vox + rng.uniform(-0.3, 0.3, 3)
        soft = irregular_ellipsoid(
            image.shape, center, radii, rng, roughness=float(rng.uniform(0.1, 0.35)), edge_width=float(rng.uniform(0.8, 1.6))
        )
        if restrict is not None:
            soft *= restrict
        soft *= body  # never paint outside the patient
        soft[soft < 0.02] = 0.0  # cut the far tail of the blended edge
        soft[tuple(center_vox)] = max(float(soft[tuple(center_vox)]), 1.0)
        lo, hi = _LESION_HU[kind]
        hu = float(rng.uniform(lo, hi)) + _LESION_TEXTURE[kind] * texture
        if kind == "ggo_nodule":
            hu = np.maximum(out, hu)  # vessels remain visible through ground glass
        out += soft * (hu - out)
        mask |= soft > 0.5

    mask &= body
    np.clip(out, _HU_MIN, _HU_MAX, out=out)
    return out.astype(np.float32, copy=False), mask.astype(np.uint8)


# -------------------------------------------------------------------------------------------- dataset


def _atomic_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_int16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_normal: int,
    num_abnormal: int,
    size: SizeLike = 96,
    spacing: SpacingLike = 1.5,
    seed: int = 0,
    num_val_normal: int | None = None,
) -> Path:
    """Write a reproducible synthetic chest-CT dataset as NIfTI files plus a Decathlon-style datalist.

    Layout (int16 HU images, uint8 masks, affine ``diag(spacing)`` RAS)::

        out_dir/normal/normal_000.nii.gz
        out_dir/abnormal/abnormal_000_ct.nii.gz
        out_dir/abnormal/abnormal_000_lesion.nii.gz
        out_dir/datalist.json

    Split rule: the last ``num_val_normal`` normal cases are held out of training (default:
    ``min(num_normal - 1, max(2, round(0.2 * num_normal)))``, at least 0); the first ``ceil(k / 2)`` of the
    ``k`` held-out normals go to ``"validation"`` and the rest to ``"test"``; likewise the first
    ``ceil(num_abnormal / 2)`` abnormal cases go to ``"validation"`` and the rest to ``"test"``. So validation
    and test each get at least one normal and one abnormal case when there are at least two of each.
    ``"training"`` holds the remaining normal cases, without ``"label"`` keys. Paths are relative to the JSON
    file. Every case draws its own seed from ``np.random.SeedSequence(seed)``, so the cases differ but the
    dataset is reproducible, and a case does not depend on the number of other cases. Files are written
    atomically (temporary name, then ``os.replace``).

    Args:
        out_dir: output folder (created if needed).
        num_normal: number of normal cases (>= 1).
        num_abnormal: number of cases with lesions (>= 0).
        size: grid size in voxels (int or 3 ints).
        spacing: voxel size in mm (float or 3 floats).
        seed: dataset seed (non-negative int).
        num_val_normal: number of held-out normal cases (0 <= k < num_normal), see the split rule.

    Returns:
        the path of ``datalist.json``.

    Raises:
        ValueError: on invalid counts or arguments.
    """
    if num_normal < 1:
        raise ValueError(f"num_normal must be >= 1 (training needs normal cases), got {num_normal}.")
    if num_abnormal < 0:
        raise ValueError(f"num_abnormal must be >= 0, got {num_abnormal}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    shape, sp = _as_size(size), _as_spacing(spacing)
    if num_val_normal is None:
        num_val_normal = max(0, min(num_normal - 1, max(2, int(round(0.2 * num_normal)))))
    if not 0 <= num_val_normal < num_normal:
        raise ValueError(f"num_val_normal must be in [0, num_normal), got {num_val_normal} for {num_normal} normals.")

    root = Path(out_dir)
    (root / "normal").mkdir(parents=True, exist_ok=True)
    (root / "abnormal").mkdir(parents=True, exist_ok=True)
    ss_normal, ss_abnormal = np.random.SeedSequence(int(seed)).spawn(2)
    normal_entries = []
    for i, child in enumerate(ss_normal.spawn(num_normal)):
        case = generate_chest_ct(shape, sp, seed=int(child.generate_state(1)[0]))
        rel = f"normal/normal_{i:03d}.nii.gz"
        _atomic_nifti(_to_int16(case.image), case.affine, root / rel)
        normal_entries.append({"image": rel})
    abnormal_entries = []
    for i, child in enumerate(ss_abnormal.spawn(num_abnormal)):
        s_case, s_lesion = (int(v) for v in child.generate_state(2))
        case = generate_chest_ct(shape, sp, seed=s_case)
        image, lesion = insert_lesions(case, seed=s_lesion)
        rel_ct, rel_lab = f"abnormal/abnormal_{i:03d}_ct.nii.gz", f"abnormal/abnormal_{i:03d}_lesion.nii.gz"
        _atomic_nifti(_to_int16(image), case.affine, root / rel_ct)
        _atomic_nifti(lesion.astype(np.uint8), case.affine, root / rel_lab)
        abnormal_entries.append({"image": rel_ct, "label": rel_lab})

    n_train = num_normal - num_val_normal
    held = normal_entries[n_train:]
    nv, na = (len(held) + 1) // 2, (len(abnormal_entries) + 1) // 2
    datalist = {
        "name": "monai-simsid synthetic chest CT",
        "description": "Synthetic chest CT phantoms; abnormal cases carry lesion masks.",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
        "spacing": list(sp),
        "seed": int(seed),
        "numTraining": n_train,
        "training": normal_entries[:n_train],
        "validation": held[:nv] + abnormal_entries[:na],
        "test": held[nv:] + abnormal_entries[na:],
    }
    path = root / "datalist.json"
    tmp = root / ".datalist.json.tmp"
    tmp.write_text(json.dumps(datalist, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------------- montage


def save_montage(
    path: str | os.PathLike,
    image: np.ndarray | Sequence[np.ndarray],
    lesion_mask: np.ndarray | Sequence[np.ndarray | None] | None = None,
    lungs: np.ndarray | Sequence[np.ndarray | None] | None = None,
    spacing: SpacingLike = 1.0,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save a PNG with three axial slices and one coronal slice per case (window -1000..500 HU).

    Axial slices are shown in radiological convention (patient right on the left, anterior up), the coronal
    slice with superior up. Lesion contours are drawn in red and lung contours (if given) in thin cyan. When a
    lesion mask is given, the middle axial slice and the coronal slice pass through the largest lesion.

    Args:
        path: output PNG path (parent folders are created).
        image: one HU volume ``[x, y, z]`` or a sequence of volumes (one row each).
        lesion_mask: matching lesion mask(s) or ``None``.
        lungs: matching lung mask(s) or ``None``.
        spacing: voxel size in mm (sets the aspect ratio).
        titles: optional row titles.

    Returns:
        the PNG path.

    Raises:
        ValueError: if the inputs are inconsistent.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images = [image] if isinstance(image, np.ndarray) else list(image)
    if not images:
        raise ValueError("need at least one image.")

    def _per_case(v, name):
        if v is None or isinstance(v, np.ndarray):
            return [v] * len(images) if v is None else [v]
        v = list(v)
        if len(v) != len(images):
            raise ValueError(f"{name} needs one entry per image ({len(images)}), got {len(v)}.")
        return v

    masks, lung_list = _per_case(lesion_mask, "lesion_mask"), _per_case(lungs, "lungs")
    if len(masks) != len(images) or len(lung_list) != len(images):
        raise ValueError("lesion_mask and lungs must match the number of images.")
    if titles is not None and len(titles) != len(images):
        raise ValueError("titles must match the number of images.")
    sp = _as_spacing(spacing)

    fig, axes = plt.subplots(len(images), 4, figsize=(13, 3.4 * len(images)), squeeze=False, facecolor="black")
    for row, (img, les, lu) in enumerate(zip(images, masks, lung_list)):
        img = np.asarray(img, dtype=np.float32)
        if img.ndim != 3:
            raise ValueError(f"images must be 3D, got shape {img.shape}.")
        X, Y, Z = img.shape
        zs = [int(0.3 * Z), int(0.5 * Z), int(0.72 * Z)]
        yc = int(0.45 * Y)
        if les is not None and np.any(les):
            lab, n = ndimage.label(np.asarray(les) > 0)
            big = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))))
            cx, cy, cz = (int(round(c)) for c in ndimage.center_of_mass(lab == big))
            others = sorted((int(f * Z) for f in (0.3, 0.5, 0.72)), key=lambda k: -abs(k - cz))[:2]
            zs, yc = [min(others), cz, max(others)], cy
        views = [(img[::-1, ::-1, k].T, None if les is None else les[::-1, ::-1, k].T, None if lu is None else lu[::-1, ::-1, k].T, sp[1] / sp[0], f"axial z={k}") for k in zs]
        views.append(
            (
                img[::-1, yc, ::-1].T,
                None if les is None else les[::-1, yc, ::-1].T,
                None if lu is None else lu[::-1, yc, ::-1].T,
                sp[2] / sp[0],
                f"coronal y={yc}",
            )
        )
        for col, (sl, m, l2, aspect, name) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", vmin=-1000, vmax=500, aspect=aspect, interpolation="bilinear")
            if l2 is not None and np.any(l2):
                ax.contour(l2.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.5)
            if m is not None and np.any(m):
                ax.contour(m.astype(np.float32), levels=[0.5], colors="red", linewidths=1.2)
            label = name if titles is None or col else f"{titles[row]}  |  {name}"
            ax.set_title(label, color="white", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor="black")
    plt.close(fig)
    return out
