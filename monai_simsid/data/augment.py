"""Geometric augmentation of training windows (small rotations and scalings: pose and spacing jitter)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import Compose, RandAffined

__all__ = ["build_window_augmentation", "with_augmentation"]


def build_window_augmentation(
    keys: Sequence[str] = ("image",),
    spatial_dims: int = 3,
    prob: float = 0.0,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
) -> list:
    """Random transforms for sampled training windows; an empty list when ``prob`` is 0.

    Each window is, with probability ``prob``, rotated by up to ``rotate_deg`` degrees about every axis and scaled
    by up to ``1 +- scale`` per axis (which also jitters the effective voxel spacing), resampled trilinearly with
    border padding, so the window keeps its size and its body-region key. No flips: the memory is keyed by body
    position, and the body is not left-right symmetric (the heart). No intensity jitter: the HU windows are already
    applied, and a shift in HU moves each window's channel by a different amount.

    Args:
        keys: image keys of the window dicts.
        spatial_dims: 2 or 3.
        prob: probability that a window is transformed (0 disables augmentation).
        rotate_deg: maximum rotation about each axis, in degrees.
        scale: maximum relative scaling per axis.

    Raises:
        ValueError: on a probability outside [0, 1] or a negative range.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    if rotate_deg < 0 or not 0 <= scale < 1:
        raise ValueError(f"rotate_deg must be >= 0 and scale in [0, 1), got {rotate_deg} and {scale}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if prob == 0.0:
        return []
    rot = math.radians(rotate_deg)
    return [
        RandAffined(
            keys=list(keys),
            prob=prob,
            rotate_range=(rot,) * (1 if spatial_dims == 2 else 3),
            scale_range=(scale,) * spatial_dims,
            mode="bilinear",
            padding_mode="border",
        )
    ]


def with_augmentation(sampler, augmentation: Sequence) -> Compose:
    """``Compose([sampler, *augmentation])`` (the sampler returns a list of windows; each is augmented)."""
    return Compose([sampler, *augmentation])
