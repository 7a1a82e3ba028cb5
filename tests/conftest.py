"""Shared test fixtures: small CT-like volumes written to temporary files, and the shared real-data folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"


def simple_ct(shape=(40, 44, 32), seed=0) -> np.ndarray:
    """A tiny CT-like volume in HU: air, an elliptic body with two lungs and a bone rod."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    arr = np.full(shape, -1000.0, np.float32)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    arr[body] = 40.0
    for cx in (-0.4, 0.4):
        lung = ((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 0.8) ** 2 < 1
        arr[lung] = -850.0
    arr[(x**2 + (y + 0.5) ** 2) < 0.01] = 700.0
    arr += rng.normal(0, 10, shape).astype(np.float32)
    return arr


def oblique_affine(spacing=(0.8, 1.1, 3.0), angle=0.3, origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


@pytest.fixture
def ct_file(tmp_path):
    """Factory writing a NIfTI CT (array, affine) and returning its path."""

    def _make(arr=None, affine=None, name="case.nii.gz"):
        arr = simple_ct() if arr is None else arr
        affine = np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine
        path = tmp_path / name
        nib.save(nib.Nifti1Image(np.asarray(arr), affine), str(path))
        return path

    return _make


@pytest.fixture
def shared_ct():
    if not SHARED_CT.is_dir():
        pytest.skip("../shared/data/ct is absent")
    return SHARED_CT


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A tiny synthetic chest-CT dataset (4 normals, 2 abnormals, 40^3 voxels of 3 mm) with its datalist."""
    from monai_simsid.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_dataset(out, num_normal=4, num_abnormal=2, size=40, spacing=3.0, seed=3, num_val_normal=2)


def load_tool(name: str, module_name: str | None = None):
    """Import ``tools/<name>.py`` as a module (registered in ``sys.modules``: dataclasses look their module up)."""
    module_name = module_name or name
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "tools" / f"{name}.py")
    mod = sys.modules[module_name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bundle_config(bundle: str, name: str) -> str:
    return str(REPO_ROOT / "bundles" / bundle / "configs" / name)


def chest_with_nodule(seed: int, size: int = 40, spacing: float = 3.0, radius_mm: float = 5.0, hu: float = 40.0):
    """A synthetic chest phantom with a dense spherical nodule at the lung voxel farthest from the lung border.

    Returns:
        ``(image, nodule, affine, centre)``: the float32 HU volume, the bool nodule mask, the 4x4 affine and the
        nodule's centre voxel. ``radius_mm=0`` gives the normal phantom (an empty nodule mask).
    """
    from scipy import ndimage

    from monai_simsid.data.synthetic import generate_chest_ct

    case = generate_chest_ct(size=size, spacing=spacing, seed=seed)
    depth = ndimage.distance_transform_edt(case.lungs > 0, sampling=case.spacing)
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    grid = np.meshgrid(*[(np.arange(n) - c) * sp for n, c, sp in zip(depth.shape, centre, case.spacing)], indexing="ij")
    nodule = (np.sqrt(sum(g**2 for g in grid)) <= radius_mm) & (radius_mm > 0)
    image = case.image.copy()
    image[nodule] = hu
    return image, nodule, case.affine, centre


@pytest.fixture(scope="session")
def chest_datalist(tmp_path_factory):
    """Small synthetic chest CTs (40^3 voxels of 3 mm) with a datalist: 3 training normals, 1 validation normal, and
    a ``test`` section with a normal scan and a scan holding a 5 mm dense nodule (its ``label``)."""
    import json

    out = tmp_path_factory.mktemp("chest")
    sections: dict[str, list] = {"training": [], "validation": [], "test": []}
    for seed, section in enumerate(["training"] * 3 + ["validation", "test"]):
        image, _, affine, _ = chest_with_nodule(seed, radius_mm=0.0)
        nib.save(nib.Nifti1Image(image, affine), str(out / f"normal_{seed}.nii.gz"))
        sections[section].append({"image": f"normal_{seed}.nii.gz"})
    image, nodule, affine, _ = chest_with_nodule(5)
    nib.save(nib.Nifti1Image(image, affine), str(out / "nodule_5.nii.gz"))
    nib.save(nib.Nifti1Image(nodule.astype(np.uint8), affine), str(out / "nodule_5_label.nii.gz"))
    sections["test"].append({"image": "nodule_5.nii.gz", "label": "nodule_5_label.nii.gz"})
    (out / "datalist.json").write_text(json.dumps(sections))
    return out / "datalist.json"
