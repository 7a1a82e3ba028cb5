"""Bad inputs through the simsid_ct inference bundle: one clear InputError, errors.csv in a batch, no partial outputs.

One tiny checkpoint is trained once for the module; every case runs ``AnomalyPredictor.run`` in-process (the
command-line path, exit status 2 and the one ``error:`` line, is covered in tests/bundles/test_simsid_ct_inference.py).
"""

from __future__ import annotations

import errno
import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config, simple_ct
from monai_simsid.apps.checkpoint import load_model_checkpoint
from monai_simsid.apps.inference import load_predictor
from monai_simsid.data.datalist import load_datalist
from monai_simsid.utils.errors import InputError

TINY_TRAIN = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "max_epochs": 1, "progress": False, "val_interval": 1}


@pytest.fixture(scope="module")
def ckpt(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(synthetic_dataset), output_dir=str(out), **TINY_TRAIN)
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "models" / "model.pt"


@pytest.fixture(scope="module")
def predictor(ckpt):
    return load_predictor("simsid_ct", ckpt, device="cpu", write_png=False)


@pytest.fixture
def good(synthetic_dataset):
    return load_datalist(synthetic_dataset, "test")[0]["image"]


def _nifti(path, arr, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(arr), np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def _all_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _assert_no_temp_files(folder):
    assert not [p for p in folder.rglob(".*")], "leftover temporary files"


def _single_fails(predictor, path, out, *words):
    """A single input must raise one InputError naming the file and the problem, and leave no output for it."""
    with pytest.raises(InputError) as info:
        predictor.run([{"image": str(path)}], out)
    msg = str(info.value)
    assert "\n" not in msg and path.name in msg, msg
    for w in words:
        assert w in msg, msg
    case_dir = out / path.name.split(".")[0]
    assert not _all_files(case_dir), f"partial outputs: {_all_files(case_dir)}"
    assert not (out / "scores.csv").exists()
    _assert_no_temp_files(out)
    return info.value


# ------------------------------------------------------------------------------------------------ unreadable files
def test_truncated_nifti(predictor, good, tmp_path):
    data = open(good, "rb").read()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    _single_fails(predictor, bad, tmp_path / "out", "cannot be read")


def test_wrong_magic_bytes(predictor, tmp_path):
    bad = tmp_path / "magic.nii.gz"
    bad.write_bytes(gzip.compress(b"NOTNIFTI" * 100))
    _single_fails(predictor, bad, tmp_path / "out", "cannot be read")


def test_empty_file(predictor, tmp_path):
    bad = tmp_path / "empty.nii.gz"
    bad.write_bytes(b"")
    _single_fails(predictor, bad, tmp_path / "out", "file is empty")


# ------------------------------------------------------------------------------------------------ wrong content
def test_2d_image(predictor, tmp_path):
    bad = _nifti(tmp_path / "flat.nii.gz", simple_ct()[:, :, 0])
    _single_fails(predictor, bad, tmp_path / "out", "2D image")


def test_4d_image(predictor, tmp_path):
    bad = _nifti(tmp_path / "series.nii.gz", np.stack([simple_ct()] * 3, axis=-1))
    _single_fails(predictor, bad, tmp_path / "out", "4D series")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels(predictor, tmp_path, value):
    arr = simple_ct()
    arr[5, 5, 5] = value
    bad = _nifti(tmp_path / "nonfinite.nii.gz", arr)
    _single_fails(predictor, bad, tmp_path / "out", "non-finite")


def test_mri_like_intensities(predictor, tmp_path):
    arr = (simple_ct() + 1000.0) / 3.0  # 0..570, no air at -1000
    bad = _nifti(tmp_path / "mri.nii.gz", arr)
    _single_fails(predictor, bad, tmp_path / "out", "do not look like CT")


def test_constant_image(predictor, tmp_path):
    bad = _nifti(tmp_path / "constant.nii.gz", np.full((40, 40, 40), 40.0, np.float32))
    _single_fails(predictor, bad, tmp_path / "out", "do not look like CT")


# ------------------------------------------------------------------------------------------------ odd but valid
def _succeeds(predictor, path, out):
    result = predictor.run([{"image": str(path)}], out)
    case = path.name.split(".")[0]
    assert result == {"done": [case], "failed": []}
    amap = nib.load(str(out / case / f"{case}_anomaly_map.nii.gz"))
    src = nib.load(str(path))
    assert amap.shape == src.shape
    np.testing.assert_allclose(amap.affine, src.affine, atol=1e-5)
    data = np.asarray(amap.dataobj)
    assert data.dtype == np.float32 and np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    _assert_no_temp_files(out)
    return data


def test_tiny_volume_is_padded_and_succeeds(predictor, tmp_path):
    arr = simple_ct(shape=(10, 10, 6))  # smaller than one 32^3 window
    arr[5, 2, :] = 700.0  # the bone rod, lost at this size
    path = _nifti(tmp_path / "tiny.nii.gz", arr)
    _succeeds(predictor, path, tmp_path / "out")


def test_ten_mm_slices_succeed_in_input_geometry(predictor, tmp_path):
    path = _nifti(tmp_path / "thick.nii.gz", simple_ct(shape=(40, 40, 8)), np.diag([3.0, 3.0, 10.0, 1.0]))
    _succeeds(predictor, path, tmp_path / "out")


# ------------------------------------------------------------------------------------------------ datalists
def test_datalist_pointing_to_a_missing_file(tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"test": [{"image": "gone.nii.gz"}]}))
    with pytest.raises(InputError) as info:
        load_datalist(dl, "test")
    assert "gone.nii.gz" in str(info.value) and "does not exist" in str(info.value) and "\n" not in str(info.value)


def test_malformed_datalist_json(tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text('{"test": [{"image": "a.nii.gz"},]')
    with pytest.raises(InputError) as info:
        load_datalist(dl, "test")
    assert "dl.json" in str(info.value) and "not valid JSON" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ DICOM series
def _write_dicom_series(folder, arr, series_uid, z0=0.0, skip=()):
    """Write ``arr`` (X, Y, Z) as one CT DICOM file per slice with the geometry tags a series reader needs."""
    folder.mkdir(parents=True, exist_ok=True)
    vol = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)).astype(np.int16))
    vol.SetSpacing((3.0, 3.0, 3.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else GDCM gives every slice a new series UID
    for k in range(arr.shape[2]):
        if k in skip:
            continue
        sl = vol[:, :, k]
        for tag, value in {
            "0008|0060": "CT",
            "0010|0020": "PAT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{z0 + 3.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "3\\3",
            "0018|0050": "3",
            "0028|1052": "0",
            "0028|1053": "1",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-6:]}_{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _dicom_ok(tmp_path):
    """The series writer works here: a complete series loads as a 3D volume of the right shape."""
    from monai_simsid.transforms.io.array import LoadCT

    arr = simple_ct(shape=(24, 24, 12))
    folder = _write_dicom_series(tmp_path / "complete", arr, "1.2.826.0.1.3680043.2.1125.2")
    assert tuple(LoadCT()(folder).shape) == (1, 24, 24, 12)
    return arr


def test_dicom_series_with_a_missing_slice(predictor, tmp_path):
    arr = _dicom_ok(tmp_path)
    bad = _write_dicom_series(tmp_path / "gap", arr, "1.2.826.0.1.3680043.2.1125.3", skip=(5,))
    _single_fails(predictor, bad, tmp_path / "out", "missing or duplicate slice")


def test_dicom_folder_with_two_series(predictor, tmp_path):
    arr = _dicom_ok(tmp_path)
    bad = _write_dicom_series(tmp_path / "mixed", arr, "1.2.826.0.1.3680043.2.1125.4")
    _write_dicom_series(bad, arr, "1.2.826.0.1.3680043.2.1125.5", z0=100.0)
    _single_fails(predictor, bad, tmp_path / "out", "2 DICOM series")


# ------------------------------------------------------------------------------------------------ outputs
def test_output_folder_that_cannot_be_created(predictor, good, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError) as info:
        predictor.run([{"image": good}], blocker / "out")
    assert "a_file" in str(info.value) and "output folder" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def disk_full_on_mask(monkeypatch):
    """nibabel's save (as used by monai_simsid.export.nifti) writes half the mask's bytes, then runs out of space."""
    import monai_simsid.export.nifti as nifti

    real_save = nifti.nib.save

    def save(img, filename):
        if "anomaly_mask" not in str(filename):
            return real_save(img, filename)
        real_save(img, filename)
        with open(filename, "rb") as f:
            data = f.read()
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nifti.nib, "save", save)


def test_write_failure_halfway_leaves_no_partial_case(predictor, good, tmp_path, disk_full_on_mask):
    src = tmp_path / "full.nii.gz"
    shutil.copy(good, src)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        predictor.run([{"image": str(src)}], out)
    assert "full.nii.gz" in str(info.value) and "No space left" in str(info.value) and "\n" not in str(info.value)
    assert _all_files(out) == []  # the map written before the failure is removed too
    _assert_no_temp_files(out)


def test_batch_write_failure_is_listed_and_leaves_none_of_the_case(predictor, good, tmp_path, disk_full_on_mask):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good, folder / "good.nii.gz")
    _nifti(folder / "nonfinite.nii.gz", np.full((20, 20, 20), np.nan, np.float32))
    out = tmp_path / "out"
    result = predictor.run([{"image": str(folder / "nonfinite.nii.gz")}, {"image": str(folder / "good.nii.gz")}], out)
    assert result["done"] == [] and [p.split("/")[-1] for p, _ in result["failed"]] == ["nonfinite.nii.gz", "good.nii.gz"]
    assert "No space left" in result["failed"][1][1]
    assert _all_files(out) == ["errors.csv"]
    _assert_no_temp_files(out)


def test_batch_good_case_finishes_bad_cases_in_errors_csv(predictor, good, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(good, folder / "good.nii.gz")
    (folder / "truncated.nii.gz").write_bytes(open(good, "rb").read()[:1000])
    _nifti(folder / "mri.nii.gz", (simple_ct() + 1000.0) / 3.0)
    out = tmp_path / "out"
    names = ("truncated", "good", "mri")
    result = predictor.run([{"image": str(folder / f"{n}.nii.gz")} for n in names], out)
    assert result["done"] == ["good"] and len(result["failed"]) == 2
    rows = (out / "errors.csv").read_text().splitlines()
    assert rows[0] == "input,problem" and len(rows) == 3
    assert "truncated.nii.gz" in rows[1] and "cannot be read" in rows[1]
    assert "mri.nii.gz" in rows[2] and "do not look like CT" in rows[2]
    assert (out / "good" / "good_anomaly_map.nii.gz").is_file() and (out / "good" / "good_report.json").is_file()
    assert (out / "scores.csv").read_text().splitlines()[1].startswith("good,")
    assert not (out / "truncated").exists() and not (out / "mri").exists()
    _assert_no_temp_files(out)


# ------------------------------------------------------------------------------------------------ checkpoint identity
def test_checkpoint_of_another_bundle_is_refused(ckpt, tmp_path):
    obj = torch.load(ckpt, weights_only=False)
    obj["meta"]["bundle"] = "autoencoder_ct"
    other = tmp_path / "other.pt"
    torch.save(obj, other)
    with pytest.raises(InputError) as info:
        load_model_checkpoint(other, bundle_name="simsid_ct")
    msg = str(info.value)
    assert "other.pt" in msg and "'autoencoder_ct', not 'simsid_ct'" in msg and "\n" not in msg


def test_checkpoint_with_another_model_config_is_refused(ckpt):
    cfg = dict(torch.load(ckpt, weights_only=False)["meta"]["model_config"])
    load_model_checkpoint(ckpt, bundle_name="simsid_ct", model_config=cfg)  # the matching config loads
    cfg["roi_size"] = [64, 64, 64]
    with pytest.raises(InputError) as info:
        load_model_checkpoint(ckpt, bundle_name="simsid_ct", model_config=cfg)
    msg = str(info.value)
    assert "model.pt" in msg and "incompatible" in msg and "roi_size" in msg and "\n" not in msg


def test_predictor_refuses_a_checkpoint_of_another_bundle(ckpt, tmp_path):
    obj = torch.load(ckpt, weights_only=False)
    obj["meta"]["bundle"] = "cutpaste_ct"
    other = tmp_path / "cutpaste.pt"
    torch.save(obj, other)
    with pytest.raises(InputError) as info:
        load_predictor("simsid_ct", other, device="cpu")
    assert "cutpaste.pt" in str(info.value) and "cutpaste_ct" in str(info.value)
