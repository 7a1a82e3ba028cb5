from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import simple_ct
from monai_simsid.transforms.io import LoadCT, LoadCTd
from monai_simsid.utils.errors import InputError


def test_loads_nifti_channel_first_with_exact_affine(ct_file):
    aff = np.array([[0.7, 0.1, 0, -3], [-0.1, 0.7, 0, 4], [0, 0, 2.5, 9], [0, 0, 0, 1]])
    p = ct_file(affine=aff)
    img = LoadCT()(p)
    assert tuple(img.shape) == (1, 40, 44, 32)
    np.testing.assert_allclose(img.affine.numpy(), nib.load(str(p)).affine, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_loads_itk_formats(tmp_path, suffix):
    arr = simple_ct()
    im = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
    im.SetSpacing((0.9, 1.2, 2.0))
    im.SetOrigin((1.0, 2.0, 3.0))
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(im, str(path))
    img = LoadCT()(path)
    assert tuple(img.shape) == (1, 40, 44, 32)
    np.testing.assert_allclose(np.sqrt((img.affine.numpy()[:3, :3] ** 2).sum(0)), [0.9, 1.2, 2.0], atol=1e-5)
    np.testing.assert_allclose(img[0].numpy(), arr, atol=1e-3)


def test_bad_inputs_raise_one_clear_error(tmp_path, ct_file):
    cases = {}
    cases["2D image"] = ct_file(arr=simple_ct()[:, :, 5], name="flat.nii.gz")
    cases["4D series"] = ct_file(arr=np.stack([simple_ct()] * 3, -1), name="series.nii.gz")
    nan = simple_ct()
    nan[3, 3, 3] = np.nan
    cases["non-finite"] = ct_file(arr=nan, name="nan.nii.gz")
    cases["do not look like CT"] = ct_file(arr=np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), name="mri.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    cases["empty"] = empty
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti at all" * 30))
    cases["cannot be read"] = junk
    cases["does not exist"] = tmp_path / "missing.nii.gz"
    for problem, path in cases.items():
        with pytest.raises(InputError) as info:
            LoadCT()(path)
        msg = str(info.value)
        assert str(path) in msg and problem in msg, msg
        assert "\n" not in msg


def test_ct_check_can_be_bypassed(ct_file):
    p = ct_file(arr=np.random.default_rng(0).random((20, 20, 20)).astype(np.float32) * 50)
    img = LoadCT(check_ct=False)(p)
    assert img.shape == (1, 20, 20, 20)


def test_dict_version_checks_label_geometry(ct_file):
    img = ct_file(name="i.nii.gz")
    lab = ct_file(arr=np.zeros((40, 44, 30), np.uint8), name="l.nii.gz")
    with pytest.raises(InputError, match="label mask shape"):
        LoadCTd(["image", "label"])({"image": img, "label": lab})
    lab2 = ct_file(arr=np.zeros((40, 44, 32), np.uint8), affine=np.diag([1, 1, 1, 1.0]), name="l2.nii.gz")
    with pytest.raises(InputError, match="affine"):
        LoadCTd(["image", "label"])({"image": img, "label": lab2})
    d = LoadCTd(["image", "label"])({"image": img})
    assert "label" not in d and d["image"].shape[0] == 1


def test_dicom_series_folder(shared_ct):
    folder = shared_ct / "dicom" / "abdomen_ts_dicom"
    img = LoadCT()(folder)
    assert tuple(img.shape) == (1, 512, 512, 20)
    spacing = np.sqrt((img.affine.numpy()[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(spacing, [0.977, 0.977, 2.0], atol=0.01)
    assert float(img.min()) < -500 and float(img.max()) > 500


def test_shared_real_volumes_load(shared_ct):
    for path in sorted((shared_ct / "normal").glob("*.nii.gz")) + [shared_ct / "lesion" / "lung2_ct.nii.gz"]:
        img = LoadCT()(path)
        assert img.ndim == 4 and img.shape[0] == 1
        assert float(img.min()) < -500


def test_a_lung_voi_needs_no_bone_when_asked(tmp_path):
    """``require_bone=False`` (a VOI inside the lung) asks only for lung or air below -500 HU."""
    voi = np.full((8, 8, 8), -850.0, np.float32)
    voi[3:5, 3:5, 3:5] = 30.0
    path = tmp_path / "voi.nii.gz"
    nib.save(nib.Nifti1Image(voi, np.eye(4)), str(path))
    with pytest.raises(InputError, match="voi.nii.gz: intensities .* above 100"):
        LoadCT()(path)
    assert float(LoadCT(require_bone=False)(path).max()) == pytest.approx(30.0)
    assert LoadCTd(["image"], require_bone=False)({"image": str(path)})["image"].shape == (1, 8, 8, 8)
    scaled = tmp_path / "scaled.nii.gz"
    nib.save(nib.Nifti1Image((voi + 1000.0) / 1400.0, np.eye(4)), str(scaled))
    with pytest.raises(InputError, match="scaled.nii.gz: .*lung VOI"):
        LoadCT(require_bone=False)(scaled)
