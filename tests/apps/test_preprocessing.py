from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import oblique_affine, simple_ct
from monai_simsid.apps import build_preprocessing, invert_to_input, load_preprocessing_config
from monai_simsid.utils.errors import find_input_error


def test_chain_outputs_model_space_tensors(ct_file):
    pre = build_preprocessing(target_spacing=[2.0, 2.0, 2.0], pad_divisor=16)
    d = pre({"image": ct_file(affine=np.diag([1.5, 1.5, 1.5, 1]))})
    img, body = d["image"], d["body"]
    assert img.shape == body.shape
    assert all(s % 16 == 0 for s in img.shape[1:])
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    np.testing.assert_allclose(np.sqrt((img.affine.numpy()[:3, :3] ** 2).sum(0)), [2, 2, 2], atol=1e-5)
    assert body.sum() > 0


@pytest.mark.parametrize("spacing", [(0.8, 1.1, 3.0), (2.0, 0.6, 1.0)])
def test_geometry_round_trip_oblique_anisotropic(ct_file, spacing):
    arr = simple_ct(shape=(36, 40, 22))
    aff = oblique_affine(spacing=spacing)
    path = ct_file(arr=arr, affine=aff)
    pre = build_preprocessing()
    d = pre({"image": path})
    ramp = torch.linspace(0, 1, d["image"].shape[1])[None, :, None, None].expand_as(d["image"]).clone()
    out = invert_to_input(ramp * d["body"], d, pre)
    ref = nib.load(str(path))
    assert tuple(out.shape[1:]) == ref.shape
    np.testing.assert_allclose(out.affine.numpy(), ref.affine, atol=1e-6)
    # the map lands inside the body, and is 0 in the air around it
    outside = arr < -900
    assert float(out[0].numpy()[outside].mean()) < 0.05
    assert float(out[0].numpy()[arr > 0].mean()) > 0.1


def test_label_follows_image(ct_file):
    arr = simple_ct()
    lab = np.zeros(arr.shape, np.uint8)
    lab[18:22, 20:24, 14:18] = 1
    p = ct_file(arr=arr)
    lp = ct_file(arr=lab, name="lab.nii.gz")
    d = build_preprocessing()({"image": p, "label": lp})
    assert d["label"].shape == d["image"].shape and d["label"].sum() > 0
    assert set(np.unique(d["label"].numpy())) <= {0.0, 1.0}


def test_exclusion_mask_follows_image_and_must_match_it(ct_file):
    """A normal scan's ``exclude`` mask is resampled (nearest), cropped and padded with the image, without a label
    beside it; one of another shape is an error naming it."""
    arr = simple_ct()
    mask = np.zeros(arr.shape, np.uint8)
    mask[18:22, 20:24, 14:18] = 1
    p = ct_file(arr=arr)
    d = build_preprocessing(target_spacing=[3.0, 3.0, 3.0])({"image": p, "exclude": ct_file(arr=mask, name="ex.nii.gz")})
    assert d["exclude"].shape == d["image"].shape and "label" not in d
    assert set(np.unique(d["exclude"].numpy())) == {0.0, 1.0}
    assert float(d["exclude"].sum()) * 27.0 == pytest.approx(float(mask.sum()) * 1.5**3, rel=0.5)
    bad = ct_file(arr=mask[:-2], name="short_mask.nii.gz")
    with pytest.raises(Exception) as info:
        build_preprocessing()({"image": p, "exclude": bad})
    err = find_input_error(info.value)
    assert err is not None and "short_mask.nii.gz" in str(err) and "exclude mask shape" in str(err)


def test_errors_are_reported_through_compose(ct_file):
    p = ct_file(arr=np.zeros((20, 20, 20), np.float32) + 5, name="flat.nii.gz")
    with pytest.raises(Exception) as info:
        build_preprocessing()({"image": p})
    err = find_input_error(info.value)
    assert err is not None and "flat.nii.gz" in str(err) and "CT" in str(err)


def test_unknown_setting_rejected():
    with pytest.raises(ValueError, match="unknown preprocessing setting"):
        load_preprocessing_config(spacing=[1, 1, 1])


def test_real_chest_scan_round_trip(shared_ct):
    path = shared_ct / "normal" / "chest_ts_pulmonary_ct.nii.gz"
    pre = build_preprocessing()
    d = pre({"image": path})
    out = invert_to_input(d["body"], d, pre, nearest=True)
    ref = nib.load(str(path))
    assert tuple(out.shape[1:]) == ref.shape
    np.testing.assert_allclose(out.affine.numpy(), ref.affine, atol=1e-5)
    hu = ref.get_fdata()
    body = out[0].numpy() > 0.5
    assert hu[body].mean() > -400 and body.mean() > 0.2


@pytest.mark.parametrize("spacing", [(0.8, 1.1, 3.0), (2.0, 0.6, 1.0)])
def test_slab_resampler_matches_invertd_geometry(ct_file, spacing):
    """A map holding each model voxel's world x-coordinate comes back holding each input voxel's world x."""
    from monai_simsid.apps.preprocessing import resample_to_input

    arr = simple_ct(shape=(36, 40, 22))
    aff = oblique_affine(spacing=spacing)
    d = (pre := build_preprocessing())({"image": ct_file(arr=arr, affine=aff)})
    model_aff = d["image"].affine.numpy()
    size = d["image"].shape[1:]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij")).reshape(3, -1)
    world_x = torch.as_tensor((model_aff[:3, :3] @ idx + model_aff[:3, 3:4])[0].reshape(size).astype(np.float32))[None]
    ours = resample_to_input(world_x, model_aff, aff, arr.shape, max_chunk_voxels=5000)
    monai = invert_to_input(world_x, d, pre)[0].numpy()
    jdx = np.stack(np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")).reshape(3, -1)
    truth = (aff[:3, :3] @ jdx + aff[:3, 3:4])[0].reshape(arr.shape)
    body = arr > -500
    assert ours.shape == arr.shape
    assert np.abs(ours - truth)[body].max() < 1e-3
    assert np.abs(monai - truth)[body].mean() < 0.05


@pytest.mark.parametrize("order", [0, 1])
def test_axis_aligned_fast_path_equals_the_slab_resampler(order):
    """Flipped, anisotropic, shifted but axis-aligned grids take the coordinate-free path; it gives the slab
    resampler's values (points outside the map read 0 on both)."""
    from monai_simsid.apps import preprocessing as P

    rng = np.random.default_rng(0)
    src = rng.random((1, 23, 19, 17)).astype(np.float32)
    model_aff = np.diag([1.5, 1.5, 2.0, 1.0])
    model_aff[:3, 3] = [-3.0, -2.0, -5.0]
    input_aff = np.diag([-0.7, -0.9, 1.3, 1.0])
    input_aff[:3, 3] = [20.0, 14.0, -9.0]  # part of the input lies outside the map
    shape = (50, 33, 28)
    fast = P.resample_to_input(torch.as_tensor(src), model_aff, input_aff, shape, order=order)
    m = np.linalg.inv(model_aff) @ input_aff
    slabs = P._resample_slabs(src[0], m, shape, order, 4000)
    assert fast.shape == shape and fast.dtype == np.float32
    assert 0 < np.count_nonzero(slabs) < slabs.size
    np.testing.assert_allclose(fast, slabs, rtol=0, atol=1e-5)


def test_input_hu_windows_follow_the_preprocessing_settings():
    from monai_simsid.apps.preprocessing import input_hu_windows, load_preprocessing_config

    assert input_hu_windows({"hu_windows": [[-1000, -400], [-160, 240]]}) == [[-1000, -400], [-160, 240]]
    assert input_hu_windows({"hu_windows": None, "hu_window": [-200, 300]}) == [[-200, 300]]
    assert input_hu_windows({}) == [list(load_preprocessing_config().get("hu_window"))]


def test_with_slice_thickness_reslices_along_the_superior_axis_before_resampling(ct_file):
    from monai_simsid.apps.preprocessing import with_slice_thickness
    from monai_simsid.transforms import simulate_slice_thickness

    arr = simple_ct(shape=(30, 36, 40))
    # the array's first axis runs superior (1 mm), its other two right and anterior (1.5 mm)
    aff = np.array([[0, 1.5, 0, 0], [0, 0, 1.5, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    pre = build_preprocessing()
    assert with_slice_thickness(pre, None) is pre
    thick = with_slice_thickness(pre, 4.0)
    out = thick({"image": ct_file(arr=arr, affine=aff)})
    # the same scan re-acquired beforehand along its superior axis (array axis 0), then the plain chain
    ref_arr = simulate_slice_thickness(arr.astype(np.float32), (1.0, 1.5, 1.5), 4.0, axis=0)
    ref = pre({"image": ct_file(arr=ref_arr, affine=aff, name="ref.nii.gz")})
    assert out["image"].shape == ref["image"].shape
    np.testing.assert_allclose(out["image"].numpy(), ref["image"].numpy(), atol=1e-4)
    plain = pre({"image": ct_file(arr=arr, affine=aff, name="plain.nii.gz")})
    assert not np.allclose(out["image"].numpy(), plain["image"].numpy(), atol=1e-2)
    assert len(pre.transforms) == len(thick.transforms) - 1  # the chain given is not changed
    with pytest.raises(ValueError, match="thickness"):
        with_slice_thickness(pre, -1.0)
    from monai.transforms import Compose

    with pytest.raises(ValueError, match="Orientationd"):
        with_slice_thickness(Compose(pre.transforms[:1]), 4.0)
