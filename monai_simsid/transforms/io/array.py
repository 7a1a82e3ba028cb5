"""Loading CT volumes with input validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Transform

from monai_simsid.data.datalist import is_dicom_folder
from monai_simsid.utils.errors import InputError

__all__ = ["LoadCT", "check_ct_intensities", "check_dicom_series", "check_mask_matches", "validate_ct"]


def check_ct_intensities(
    img: np.ndarray | torch.Tensor, path: str | os.PathLike | None = None, require_bone: bool = True
) -> None:
    """Raise if the intensities are clearly not Hounsfield units.

    CT has air near -1000 HU and bone well above +100 HU. An image with ``max < 100`` or ``min > -500`` is likely
    MRI or already normalised. A small VOI inside the lung (e.g. a nodule crop) holds no bone: with
    ``require_bone=False`` only the air or lung below -500 HU is asked for.
    """
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    lo, hi = float(arr.min()), float(arr.max())
    if not require_bone:
        if lo > -500:
            raise InputError(path, f"intensities [{lo:.4g}, {hi:.4g}] do not look like a lung VOI in Hounsfield units "
                             "(no value below -500 HU); pass check_ct=False to bypass")
        return
    if hi < 100 or lo > -500:
        raise InputError(
            path,
            f"intensities [{lo:.4g}, {hi:.4g}] do not look like CT in Hounsfield units (expected air near -1000 "
            "and values above 100); likely MRI or already normalised. Pass check_ct=False to bypass this check",
        )


def validate_ct(
    img: MetaTensor | torch.Tensor, path: str | os.PathLike | None, check_ct: bool = True, require_bone: bool = True
) -> None:
    """Validate a channel-first 3D CT volume: one channel, 3 spatial dims with more than one voxel, finite values,
    and (``check_ct``) HU intensities (see :func:`check_ct_intensities`)."""
    if img.ndim != 4:
        raise InputError(path, f"expected a 3D volume, got an array of shape {tuple(img.shape)}")
    if img.shape[0] != 1:
        raise InputError(path, f"expected a single 3D volume, got a 4D series with {img.shape[0]} volumes")
    spatial = tuple(img.shape[1:])
    if min(spatial) < 2:
        raise InputError(path, f"expected a 3D volume, got a 2D image (shape {spatial})")
    if not torch.isfinite(torch.as_tensor(img)).all():
        n = int((~torch.isfinite(torch.as_tensor(img))).sum())
        raise InputError(path, f"contains {n} non-finite (NaN or Inf) voxels")
    if check_ct:
        check_ct_intensities(img, path, require_bone=require_bone)


def check_dicom_series(folder: str | os.PathLike) -> None:
    """Raise if a DICOM folder holds more than one series, or its slices are not evenly spaced (a missing slice).

    ITK would otherwise silently read the first series only, or stack slices across a gap as if they were evenly
    spaced (a wrong geometry). Only the file headers are read.
    """
    import SimpleITK as sitk

    p = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    if len(ids) > 1:
        raise InputError(p, f"folder holds {len(ids)} DICOM series mixed together; put one series per folder")
    if not ids:
        return
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), ids[0])
    if len(names) < 3:
        return
    positions, normal = [], None
    reader = sitk.ImageFileReader()
    for name in names:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            pos = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                ori = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(ori[:3], ori[3:6])
        except (RuntimeError, ValueError):
            return  # no usable geometry tags: leave it to the reader
        positions.append(float(np.dot(pos, normal)))
    gaps = np.diff(np.sort(positions))
    step = float(np.median(gaps))
    if step <= 0 or np.abs(gaps - step).max() > 0.05 * step + 1e-3:
        raise InputError(
            p,
            f"DICOM series has a missing or duplicate slice (slice gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
            f"over {len(names)} slices, expected a constant {step:.3g} mm)",
        )


def check_mask_matches(mask: MetaTensor, image: MetaTensor, path: str | os.PathLike, name: str = "label") -> None:
    """Raise an :class:`InputError` naming ``path`` unless the loaded ``mask`` has the loaded ``image``'s shape and
    affine (spacing, origin and direction, to 1e-3)."""
    if tuple(mask.shape) != tuple(image.shape):
        raise InputError(path, f"{name} mask shape {tuple(mask.shape[1:])} differs from image shape {tuple(image.shape[1:])}")
    if not torch.allclose(torch.as_tensor(mask.affine).double(), torch.as_tensor(image.affine).double(), atol=1e-3):
        raise InputError(path, f"{name} mask affine (spacing/origin/direction) differs from the image's")


class LoadCT(Transform):
    """Load a CT volume (NIfTI, NRRD, MHA/MHD, or a DICOM series folder) as a channel-first MetaTensor.

    NIfTI files go through nibabel (their affine is kept bit-exact); everything else, DICOM series included, through
    ITK. The affine is in RAS, as everywhere in MONAI. The volume is validated (see :func:`validate_ct`) and every
    problem is raised as one :class:`InputError` naming the file.

    Args:
        check_ct: check that intensities look like Hounsfield units.
        is_label: the file is a mask: no intensity checks, integer values kept.
        dtype: output dtype.
        require_bone: the HU check also asks for a value above 100 HU (False for a small VOI inside the lung).
    """

    def __init__(
        self, check_ct: bool = True, is_label: bool = False, dtype: torch.dtype = torch.float32, require_bone: bool = True
    ) -> None:
        self.check_ct = check_ct
        self.require_bone = require_bone
        self.is_label = is_label
        self.dtype = dtype
        self._nib = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=False, dtype=None)
        self._itk = None

    def _itk_loader(self) -> LoadImage:
        if self._itk is None:
            self._itk = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=False, dtype=None)
        return self._itk

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        p = Path(path)
        if not p.exists():
            raise InputError(p, "file does not exist")
        if p.is_dir():
            if not is_dicom_folder(p):
                raise InputError(p, "folder is not a DICOM series (no DICOM files inside)")
            check_dicom_series(p)
        elif p.stat().st_size == 0:
            raise InputError(p, "file is empty")
        loader = self._nib if p.name.lower().endswith((".nii", ".nii.gz")) else self._itk_loader()
        try:
            img = loader(str(p))
        except Exception as e:  # readers raise many types; report one clear line
            msg = str(e).strip().splitlines()
            detail = msg[-1] if msg else type(e).__name__
            raise InputError(p, f"cannot be read as an image ({type(e).__name__}: {detail[:200]})") from None
        img = self._to_channel_first(img, p)
        if self.is_label:
            if not torch.isfinite(img).all():
                raise InputError(p, "label contains non-finite values")
            return img.to(torch.float32)
        validate_ct(img, p, check_ct=self.check_ct, require_bone=self.require_bone)
        return img.to(self.dtype)

    @staticmethod
    def _to_channel_first(img: MetaTensor, path: Path) -> MetaTensor:
        shape = tuple(img.shape)
        if img.ndim == 2:
            raise InputError(path, f"expected a 3D volume, got a 2D image (shape {shape})")
        if img.ndim == 3:
            return img.unsqueeze(0)
        if img.ndim == 4:
            if shape[-1] == 1:
                return img.squeeze(-1).unsqueeze(0)
            raise InputError(path, f"expected a single 3D volume, got a 4D series of shape {shape}")
        raise InputError(path, f"expected a 3D volume, got an array with {img.ndim} dimensions {shape}")
