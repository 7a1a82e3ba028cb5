"""Geometry helpers that depend on nothing else in the package (safe to import from any module)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["spacing_from_affine"]


def spacing_from_affine(affine: Any) -> np.ndarray:
    """Voxel size in mm per axis: the norms of the direction columns of a square ``(N+1)x(N+1)`` affine.

    Args:
        affine: a voxel-to-world affine (NumPy array, tensor or nested sequence).

    Raises:
        ValueError: when the affine is not a square matrix of size 2 or more.
    """
    if isinstance(affine, torch.Tensor):
        a = affine.detach().cpu().numpy().astype(float)
    else:
        a = np.asarray(affine, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"affine must be a square (N+1)x(N+1) matrix, got shape {a.shape}")
    return np.sqrt((a[:-1, :-1] ** 2).sum(0))
