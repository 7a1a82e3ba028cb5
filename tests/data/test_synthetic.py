"""Tests of the synthetic chest-CT phantom generator, lesion insertion, dataset writer and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import load_tool
from monai_simsid.data.synthetic import (
    LESION_KINDS,
    PhantomCase,
    generate_chest_ct,
    insert_lesions,
    save_montage,
    write_synthetic_dataset,
)

SIZE = 48
SPACING = 3.0  # 48 voxels x 3 mm covers the same anatomy as 96 x 1.5 mm


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return generate_chest_ct(SIZE, SPACING, seed=0)


def _load_cli():
    return load_tool("make_synthetic_ct")


def test_determinism_and_seed_dependence(case):
    again = generate_chest_ct(SIZE, SPACING, seed=0)
    assert np.array_equal(case.image, again.image)
    assert np.array_equal(case.lungs, again.lungs)
    other = generate_chest_ct(SIZE, SPACING, seed=1)
    assert not np.array_equal(case.image, other.image)
    assert not np.array_equal(case.lungs, other.lungs)  # the anatomy itself changes, not only the noise


def test_shapes_types_affine(case):
    assert case.image.shape == (SIZE,) * 3 and case.image.dtype == np.float32
    assert case.body.dtype == np.uint8 and case.lungs.dtype == np.uint8
    np.testing.assert_allclose(case.affine, np.diag([SPACING, SPACING, SPACING, 1.0]))
    assert case.spacing == (SPACING,) * 3
    aniso = generate_chest_ct((40, 44, 36), (3.6, 3.3, 4.0), seed=2)
    assert aniso.image.shape == (40, 44, 36)
    np.testing.assert_allclose(np.diag(aniso.affine), [3.6, 3.3, 4.0, 1.0])


def test_hu_ranges_plausible(case):
    img, body, lungs = case.image, case.body.astype(bool), case.lungs.astype(bool)
    assert 0.15 < body.mean() < 0.7
    assert lungs.sum() > 500 and not np.any(lungs & ~body)
    assert np.median(img[lungs]) < -700
    interior = ndimage.binary_erosion(lungs)  # away from the partial-volume lung boundary
    assert np.mean(img[interior] < -700) > 0.75
    assert np.median(img[~body]) < -950  # air outside
    assert np.sum(img > 300) > 20  # bone exists
    assert img.max() < 1500 and img.min() >= -1024
    soft = img[body & ~lungs]
    assert -150 < np.median(soft) < 100
    # both lungs: the mask has mass on either side of the midline
    xs = np.nonzero(lungs)[0]
    assert np.sum(xs < SIZE // 2) > 100 and np.sum(xs >= SIZE // 2) > 100
    # lungs sit above the bottom slices (diaphragm) and below the top (apex)
    zs = np.nonzero(lungs)[2]
    assert zs.min() > 0 and zs.max() < SIZE - 1


def test_resolution_independent_anatomy():
    coarse = generate_chest_ct(32, 4.5, seed=5, noise_std=0.0)
    fine = generate_chest_ct(48, 3.0, seed=5, noise_std=0.0)
    vol_coarse = coarse.lungs.sum() * 4.5**3
    vol_fine = fine.lungs.sum() * 3.0**3
    assert abs(vol_coarse - vol_fine) / vol_fine < 0.25


@pytest.mark.parametrize("kinds", [None, ["solid_nodule", "ggo_nodule"], ["mass"], ["bone_lytic", "bone_sclerotic"], ["soft_tissue", "lymph_node"]])
def test_insert_lesions(case, kinds):
    out, mask = insert_lesions(case, seed=3, kinds=kinds)
    assert out.shape == case.image.shape and out.dtype == np.float32
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    m = mask.astype(bool)
    assert m.sum() > 0
    assert not np.any(m & ~case.body.astype(bool))
    assert np.mean(np.abs(out[m] - case.image[m])) > 20.0  # the image really changed in the lesion
    far = ~ndimage.binary_dilation(m, iterations=6)
    changed = np.abs(out[far] - case.image[far])
    assert np.mean(changed > 0) < 1e-3 and changed.max() < 50.0  # (almost) nothing changes far from lesions
    again, mask2 = insert_lesions(case, seed=3, kinds=kinds)
    assert np.array_equal(out, again) and np.array_equal(mask, mask2)
    if kinds == ["solid_nodule", "ggo_nodule"]:
        assert np.mean(case.lungs.astype(bool)[m]) > 0.5  # lung nodules lie in the lungs


def test_insert_lesions_plain_array_and_errors(case):
    out, mask = insert_lesions(case.image, case.lungs, case.body, case.spacing, seed=7, num_lesions=2)
    assert mask.sum() > 0 and not np.array_equal(out, case.image)
    with pytest.raises(ValueError):
        insert_lesions(case.image, seed=0)
    with pytest.raises(ValueError):
        insert_lesions(case, seed=0, kinds=["tumour"])
    with pytest.raises(ValueError):
        insert_lesions(case, seed=0, num_lesions=0)
    with pytest.raises(ValueError):
        insert_lesions(case.image, np.zeros_like(case.lungs), case.body, case.spacing)
    assert abs(sum(LESION_KINDS.values()) - 1.0) < 1e-9


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        generate_chest_ct(8)
    with pytest.raises(ValueError):
        generate_chest_ct(48, spacing=0.0)
    with pytest.raises(ValueError):
        generate_chest_ct(48, spacing=(1.0, 2.0))
    with pytest.raises(ValueError):
        generate_chest_ct(48, seed=-1)


def _check_datalist(path: Path, n_train: int, n_total: int):
    data = json.loads(path.read_text())
    assert len(data["training"]) == n_train
    assert all("label" not in e for e in data["training"])
    entries = data["training"] + data["validation"] + data["test"]
    assert len(entries) == n_total
    for e in entries:
        assert not Path(e["image"]).is_absolute()
        assert (path.parent / e["image"]).is_file()
        if "label" in e:
            assert (path.parent / e["label"]).is_file()
    for section in ("validation", "test"):
        assert any("label" in e for e in data[section]) and any("label" not in e for e in data[section])
    return data


def test_write_synthetic_dataset(tmp_path):
    path = write_synthetic_dataset(tmp_path / "ds", num_normal=4, num_abnormal=2, size=SIZE, spacing=SPACING, seed=11, num_val_normal=2)
    assert path == tmp_path / "ds" / "datalist.json"
    data = _check_datalist(path, n_train=2, n_total=6)
    assert not list((tmp_path / "ds").rglob(".*tmp*"))  # no temporary files left behind
    normal = nib.load(str(path.parent / data["training"][0]["image"]))
    np.testing.assert_allclose(normal.affine, np.diag([SPACING, SPACING, SPACING, 1.0]))
    ab = next(e for e in data["test"] if "label" in e)
    img = np.asarray(nib.load(str(path.parent / ab["image"])).dataobj)
    lab = np.asarray(nib.load(str(path.parent / ab["label"])).dataobj)
    assert img.shape == lab.shape == (SIZE,) * 3 and lab.dtype == np.uint8 and lab.sum() > 0
    assert img.min() >= -1024 and img.max() > 300
    # normals differ from each other, and the dataset is reproducible
    n0 = np.asarray(nib.load(str(path.parent / "normal/normal_000.nii.gz")).dataobj)
    n1 = np.asarray(nib.load(str(path.parent / "normal/normal_001.nii.gz")).dataobj)
    assert not np.array_equal(n0, n1)
    path2 = write_synthetic_dataset(tmp_path / "ds2", num_normal=1, num_abnormal=0, size=SIZE, spacing=SPACING, seed=11)
    again = np.asarray(nib.load(str(path2.parent / "normal/normal_000.nii.gz")).dataobj)
    assert np.array_equal(n0, again)
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "bad", num_normal=0, num_abnormal=1, size=SIZE, spacing=SPACING)


def test_cli_and_montage(tmp_path, capsys):
    cli = _load_cli()
    png = tmp_path / "montage.png"
    rc = cli.main(["--out", str(tmp_path / "cli"), "--num-normal", "3", "--num-abnormal", "2", "--size", str(SIZE), "--spacing", str(SPACING), "--seed", "4", "--montage", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == tmp_path / "cli" / "datalist.json"
    _check_datalist(Path(printed), n_train=1, n_total=5)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path / "x"), "--size", "1", "2"])


def test_save_montage_validates(tmp_path, case):
    out = save_montage(tmp_path / "one.png", case.image, lungs=case.lungs, spacing=SPACING)
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError):
        save_montage(tmp_path / "bad.png", [case.image, case.image], lesion_mask=[None])
