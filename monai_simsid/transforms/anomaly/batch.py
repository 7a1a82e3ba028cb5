"""Batched synthetic-anomaly corruption of training windows (for restoration / anomaly-head supervision).

:class:`BatchAnomalyCorruption` corrupts a ``(B, C, *S)`` batch of normal windows with the synthetic anomalies of
:mod:`monai_simsid.transforms.anomaly` (ellipsoid lesions, foreign-patch blending with another window of the batch,
cut-paste), the recipe of the MOOD 2022 winners. Unlike the ``Rand*`` transforms, whose boxes always lie fully inside
the image, every anomaly centre is drawn **uniformly over the whole window, rim included**, and boxes are clipped to
the window: otherwise a network trained to find them learns their position (never near the rim) instead of their look.

Randomness comes only from ``numpy.random.default_rng((base_seed, seed))``, so a call is reproducible for a
``(base_seed, seed)`` pair (the trainer passes the engine iteration as ``seed``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_simsid.transforms.anomaly.array import CutPaste, EllipsoidLesion, ForeignPatchBlend
from monai_simsid.transforms.intensity.array import HUWindows, check_hu_windows, hu_from_windows

__all__ = ["BatchAnomalyCorruption", "corrupt_batch"]

_KINDS = ("ellipsoid", "foreign", "cutpaste", "tissue")


def _range(v: Sequence[float], name: str, lo: float = 0.0, hi: float | None = None, lo_open: bool = False):
    a, b = float(v[0]), float(v[1])
    if not (np.isfinite(a) and np.isfinite(b)) or a > b or a < lo or (lo_open and a <= lo) or (hi is not None and b > hi):
        raise ValueError(f"{name} must be a finite (low, high) pair with low <= high within the allowed range, got {v!r}.")
    return a, b


class BatchAnomalyCorruption:
    """Corrupt a random subset of a batch of windows with synthetic anomalies.

    Each window stays clean with probability ``clean_fraction``; otherwise it receives ``1..max_anomalies``
    anomalies, each of a kind drawn with ``weights``:

    * ``"ellipsoid"``: :class:`~monai_simsid.transforms.anomaly.EllipsoidLesion` (relative mode) with semi-axes
      ``radius_range`` (fraction of each window side, aspect <= ``max_aspect``), roughness ``roughness_range``, and an
      intensity offset of ``u * span`` (``u`` in ``intensity_range``) that is positive (bright / dense) with
      probability ``bright_prob`` and negative otherwise;
    * ``"foreign"``: :class:`~monai_simsid.transforms.anomaly.ForeignPatchBlend` of a box of the next window of the
      batch (``(b + 1) % B``; the window itself, elsewhere and flipped, when ``B == 1``), alpha in ``alpha_range``;
    * ``"cutpaste"``: :class:`~monai_simsid.transforms.anomaly.CutPaste` of a box of the same window, randomly
      flipped, with a contrast factor in ``cutpaste_scale_range`` and a signed brightness shift of
      ``u * span`` (``u`` in ``cutpaste_shift_range``);
    * ``"tissue"``: a lesion of a given density, made in HU so that every HU-window channel sees the same tissue. The
      window is taken back to HU through its widest window (``hu_windows``, the windows of
      :class:`~monai_simsid.transforms.HUWindows` that made the channels), an irregular ellipsoid (the ellipsoid
      settings above) is blended towards a density drawn from ``tissue_hu_range`` (absolute mode), and every channel
      is windowed again from the result. A dense mass in lung thus saturates the lung window and is mid-grey in the
      soft-tissue window, as a real one is, where an additive offset would brighten each channel alike.

    Box sides are ``box_size_range`` fractions of the window sides. ``span`` is ``value_range[1] - value_range[0]``
    when ``value_range`` is given, else the intensity range of the whole batch. Every centre is uniform over the
    window (continuous in ``[0, s - 1]`` for ellipsoids, integer for boxes) and boxes are clipped at the rim.

    After the anomalies are applied, voxels that changed by at most ``min_change`` (absolute, any channel) are reset
    to their clean value, and results are clipped to ``clip`` when given. The returned mask marks *exactly* the voxels
    that differ from the clean input: ``mask == any(out != x, channel)``.

    Args:
        clean_fraction: probability that a window is left unchanged.
        max_anomalies: largest number of anomalies per corrupted window (>= 1).
        weights: mapping kind -> non-negative weight over ``("ellipsoid", "foreign", "cutpaste", "tissue")``.
        radius_range, max_aspect, roughness_range, edge_width_range, intensity_range, bright_prob: ellipsoids.
        box_size_range, alpha_range, cutpaste_scale_range, cutpaste_shift_range: box anomalies.
        hu_windows: the ``[[low, high], ...]`` HU windows of the channels (needed by ``"tissue"``).
        tissue_hu_range: ``(low, high)`` HU of the ``"tissue"`` lesions (default: ground glass to solid tissue).
        value_range: fixed ``(min, max)`` of the image intensities used for ``span`` (None: from the batch).
        min_change: changes of at most this magnitude are undone (so the mask only marks visible changes).
        clip: optional ``(min, max)`` clipping of the corrupted voxels.
        seed: base seed; ``__call__(x, seed)`` uses ``default_rng((seed_base, seed))``.

    Example::

        corrupt = BatchAnomalyCorruption(seed=0)
        x_bad, mask, info = corrupt(x, seed=engine.state.iteration)   # mask: (B, 1, *S) float32 in {0, 1}
    """

    def __init__(
        self,
        clean_fraction: float = 0.5,
        max_anomalies: int = 2,
        weights: Mapping[str, float] | None = None,
        radius_range: Sequence[float] = (0.03, 0.25),
        max_aspect: float = 2.0,
        roughness_range: Sequence[float] = (0.0, 0.5),
        edge_width_range: Sequence[float] = (0.5, 2.0),
        intensity_range: Sequence[float] = (0.15, 0.6),
        bright_prob: float = 0.75,
        box_size_range: Sequence[float] = (0.06, 0.4),
        alpha_range: Sequence[float] = (0.5, 1.0),
        cutpaste_scale_range: Sequence[float] = (0.8, 1.25),
        cutpaste_shift_range: Sequence[float] = (0.05, 0.3),
        hu_windows: Sequence[Sequence[float]] | None = None,
        tissue_hu_range: Sequence[float] = (-600.0, 100.0),
        value_range: Sequence[float] | None = None,
        min_change: float = 1e-3,
        clip: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= clean_fraction <= 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction}.")
        if int(max_anomalies) < 1:
            raise ValueError(f"max_anomalies must be >= 1, got {max_anomalies}.")
        w = {"ellipsoid": 0.6, "foreign": 0.2, "cutpaste": 0.2} if weights is None else dict(weights)
        bad = set(w) - set(_KINDS)
        if bad or any(float(v) < 0 for v in w.values()) or sum(float(v) for v in w.values()) <= 0:
            raise ValueError(f"weights must map kinds of {_KINDS} to non-negative weights with a positive sum, got {w}.")
        total = sum(float(v) for v in w.values())
        self.kinds = tuple(k for k in _KINDS if float(w.get(k, 0.0)) > 0)
        self.probs = np.asarray([float(w[k]) / total for k in self.kinds])
        self.clean_fraction = float(clean_fraction)
        self.max_anomalies = int(max_anomalies)
        self.radius_range = _range(radius_range, "radius_range", lo_open=True)
        if not np.isfinite(max_aspect) or max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}.")
        self.max_aspect = float(max_aspect)
        self.roughness_range = _range(roughness_range, "roughness_range")
        if self.roughness_range[1] >= 1:
            raise ValueError(f"roughness_range must lie in [0, 1), got {roughness_range!r}.")
        self.edge_width_range = _range(edge_width_range, "edge_width_range", lo_open=True)
        self.intensity_range = _range(intensity_range, "intensity_range")
        if not 0.0 <= bright_prob <= 1.0:
            raise ValueError(f"bright_prob must be in [0, 1], got {bright_prob}.")
        self.bright_prob = float(bright_prob)
        self.box_size_range = _range(box_size_range, "box_size_range", hi=1.0, lo_open=True)
        self.alpha_range = _range(alpha_range, "alpha_range", hi=1.0, lo_open=True)
        self.cutpaste_scale_range = _range(cutpaste_scale_range, "cutpaste_scale_range", lo_open=True)
        self.cutpaste_shift_range = _range(cutpaste_shift_range, "cutpaste_shift_range")
        self.hu_windows = None if hu_windows is None else check_hu_windows(hu_windows)
        if "tissue" in self.kinds and self.hu_windows is None:
            raise ValueError("the 'tissue' anomalies need hu_windows, the HU windows of the image channels.")
        self.tissue_hu_range = _range(tissue_hu_range, "tissue_hu_range", lo=-np.inf)
        self.value_range = None if value_range is None else _range(value_range, "value_range", lo=-np.inf)
        if self.value_range is not None and self.value_range[1] <= self.value_range[0]:
            raise ValueError(f"value_range must have max > min, got {value_range!r}.")
        if min_change < 0:
            raise ValueError(f"min_change must be >= 0, got {min_change}.")
        self.min_change = float(min_change)
        self.clip = None if clip is None else _range(clip, "clip", lo=-np.inf)
        self.seed = int(seed)

    # ------------------------------------------------------------------ sampling helpers
    def _fractions(self, rng: np.random.Generator, nd: int, frac_range: tuple[float, float]) -> np.ndarray:
        base = rng.uniform(*frac_range)
        half = 0.5 * np.log(self.max_aspect)
        return np.clip(base * np.exp(rng.uniform(-half, half, size=nd)), *frac_range)

    @staticmethod
    def _box_around(center: Sequence[int], sizes: Sequence[int], shape: Sequence[int]) -> list[list[int]]:
        """Box of ``sizes`` centred on ``center``, clipped to the window (so it may be smaller at the rim)."""
        out = []
        for c, z, s in zip(center, sizes, shape):
            a = int(c) - int(z) // 2
            out.append([max(0, a), min(int(s), a + int(z))])
        return out

    def _box_sizes(self, rng: np.random.Generator, shape: Sequence[int]) -> list[int]:
        fr = self._fractions(rng, len(shape), self.box_size_range)
        return [int(min(s, max(1, round(f * s)))) for f, s in zip(fr, shape)]

    def _ellipsoid_params(
        self, rng: np.random.Generator, shape: Sequence[int], intensity: Callable[[], float], mode: str
    ) -> dict[str, Any]:
        """Parameters of an :class:`EllipsoidLesion` centred uniformly over the window; ``intensity()`` draws its
        intensity (after the centre and the radii)."""
        center = [float(rng.uniform(0.0, s - 1)) for s in shape]
        radii = [float(max(1.0, f * s)) for f, s in zip(self._fractions(rng, len(shape), self.radius_range), shape)]
        return {
            "center": center,
            "radii": radii,
            "intensity": intensity(),
            "roughness": float(rng.uniform(*self.roughness_range)),
            "edge_seed": int(rng.integers(2**31 - 1)),
            "edge_width": float(min(rng.uniform(*self.edge_width_range), max(0.5, 0.5 * min(radii)))),
            "intensity_mode": mode,
        }

    # ------------------------------------------------------------------ one anomaly
    def _apply_one(
        self, kind: str, img: np.ndarray, foreign: np.ndarray, rng: np.random.Generator, span: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        shape = img.shape[1:]
        nd = len(shape)
        if kind == "ellipsoid":

            def offset() -> float:
                sign = 1.0 if rng.random() < self.bright_prob else -1.0
                return sign * float(rng.uniform(*self.intensity_range)) * span

            params = self._ellipsoid_params(rng, shape, offset, "relative")
            out, _ = EllipsoidLesion(**params)(img)
            return out, {"kind": kind, **params}
        if kind == "tissue":
            return self._apply_tissue(img, rng)
        center = [int(rng.integers(0, s)) for s in shape]
        dst = self._box_around(center, self._box_sizes(rng, shape), shape)
        sizes = [b - a for a, b in dst]
        if kind == "foreign":
            fshape = foreign.shape[1:]
            starts = [int(rng.integers(0, f - z + 1)) for f, z in zip(fshape, sizes)]
            src = [[a, a + z] for a, z in zip(starts, sizes)]
            params = {"src_box": src, "dst_box": dst, "alpha": float(rng.uniform(*self.alpha_range))}
            out, _ = ForeignPatchBlend(**params)(img, foreign)
        else:
            starts = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, sizes)]
            src = [[a, a + z] for a, z in zip(starts, sizes)]
            sign = 1.0 if rng.random() < 0.5 else -1.0
            params = {
                "src_box": src,
                "dst_box": dst,
                "flip_axes": [a for a in range(nd) if rng.random() < 0.5],
                "intensity_scale": float(rng.uniform(*self.cutpaste_scale_range)),
                "intensity_shift": sign * float(rng.uniform(*self.cutpaste_shift_range)) * span,
            }
            out, _ = CutPaste(**params)(img)
        return out, {"kind": kind, "center": [float(c) for c in center], **params}

    def _apply_tissue(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """A ``"tissue"`` lesion: blended in HU, then windowed into every channel."""
        shape = img.shape[1:]
        hu = hu_from_windows(img, self.hu_windows)
        params = self._ellipsoid_params(rng, shape, lambda: float(rng.uniform(*self.tissue_hu_range)), "absolute")
        lesion = EllipsoidLesion(**params)
        inside = lesion.weights(shape) > 0
        new_hu, _ = lesion(hu)
        windowed = HUWindows(self.hu_windows)(torch.from_numpy(new_hu)).numpy().reshape(img.shape)
        return np.where(inside[None], windowed, img).astype(img.dtype), {"kind": "tissue", **params}

    # ------------------------------------------------------------------ batch
    def __call__(
        self, x: torch.Tensor, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[dict[str, Any]]]]:
        """Corrupt ``x`` ``(B, C, *S)``.

        Returns:
            ``(x_corrupt, mask, info)``: the corrupted batch (same dtype/device as ``x``), the ``(B, 1, *S)`` float
            change mask (1 exactly where ``x_corrupt != x`` in any channel) and, per window, the list of applied
            anomalies (dicts with ``"kind"``, ``"center"`` and the deterministic transform's parameters).
        """
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise ValueError(f"x must be a (B, C, *S) tensor with 2 or 3 spatial dims, got {getattr(x, 'shape', x)}.")
        rng = np.random.default_rng((self.seed, int(seed)))
        x_np = x.detach().cpu().float().numpy()
        bsz = x_np.shape[0]
        if self.value_range is not None:
            span = self.value_range[1] - self.value_range[0]
        else:
            span = float(x_np.max() - x_np.min()) if x_np.size else 1.0
            span = span if np.isfinite(span) and span > 1e-6 else 1.0
        out = x_np.copy()
        info: list[list[dict[str, Any]]] = []
        for b in range(bsz):
            applied: list[dict[str, Any]] = []
            if rng.random() >= self.clean_fraction:
                n = int(rng.integers(1, self.max_anomalies + 1))
                img = x_np[b]
                if bsz > 1:
                    foreign = x_np[(b + 1) % bsz]
                else:
                    foreign = np.flip(x_np[b], axis=tuple(range(1, x_np.ndim - 1))).copy()
                for _ in range(n):
                    kind = str(rng.choice(self.kinds, p=self.probs))
                    img, params = self._apply_one(kind, img, foreign, rng, span)
                    applied.append(params)
                out[b] = np.asarray(img, dtype=np.float32)
            info.append(applied)
        if self.clip is not None:  # clip only what the anomalies touched
            out = np.where(out != x_np, np.clip(out, *self.clip), x_np)
        out = np.where(np.abs(out - x_np) <= self.min_change, x_np, out)
        mask = np.any(out != x_np, axis=1, keepdims=True)
        mask_t = torch.from_numpy(mask).to(x.device)
        # untouched voxels keep the exact input values (whatever the input dtype)
        x_out = torch.where(mask_t, torch.from_numpy(out).to(device=x.device, dtype=x.dtype), x)
        return x_out, mask_t.to(torch.float32), info


def corrupt_batch(x: torch.Tensor, seed: int = 0, **kwargs: Any):
    """Functional shortcut: ``BatchAnomalyCorruption(**kwargs)(x, seed)``."""
    return BatchAnomalyCorruption(**kwargs)(x, seed)
