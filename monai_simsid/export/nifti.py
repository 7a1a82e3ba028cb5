"""NIfTI output with the exact geometry of the input scan."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_simsid.utils.atomic import atomic_path

__all__ = ["as_spatial_array", "check_affine", "save_nifti"]


def as_spatial_array(array, ndim: int = 3, name: str = "array") -> np.ndarray:
    """A numpy spatial array from an array or tensor; a leading channel of size 1 is dropped."""
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}D spatial array (X, Y, Z), got shape {arr.shape}")
    return arr


def check_affine(affine) -> np.ndarray:
    """A float64 4x4 affine, validated (finite, last row 0 0 0 1, invertible)."""
    aff = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    aff = aff.astype(np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise ValueError("affine must be finite")
    if not np.allclose(aff[3], [0, 0, 0, 1]):
        raise ValueError(f"affine's last row must be 0 0 0 1, got {aff[3]}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return aff


def save_nifti(array, affine, path: str | os.PathLike, dtype=None) -> Path:
    """Write a spatial array as NIfTI-1 with ``affine`` as its voxel-to-RAS (scanner) transform, atomically.

    The sform holds the affine exactly (code 1, scanner); the qform is set from the same affine with code 1 (it is
    the closest rigid-plus-zoom approximation when the affine has shears). Readers use the sform, so the file
    overlays the input scan.

    Args:
        array: ``(X, Y, Z)`` array or tensor (a leading channel of size 1 is dropped).
        affine: 4x4 voxel-to-RAS affine in mm.
        path: output file (``.nii.gz`` or ``.nii``).
        dtype: output data type (default: the array's, bool becomes uint8).

    Returns:
        the path written.
    """
    arr = as_spatial_array(array)
    aff = check_affine(affine)
    name = str(path).lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI path must end with .nii or .nii.gz, got {path}")
    if dtype is None:
        dtype = np.uint8 if arr.dtype == np.bool_ else arr.dtype
    arr = np.asarray(arr, dtype=dtype)
    img = nib.Nifti1Image(arr, aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    img.header.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
