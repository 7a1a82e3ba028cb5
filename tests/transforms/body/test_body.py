from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import simple_ct
from monai_simsid.transforms.body import BodyMask, BodyMaskd, body_bbox, compute_body_mask, region_index


def test_body_mask_fills_lungs_and_drops_table():
    arr = simple_ct()
    arr[:, 2:4, :] = 200.0  # a thin "table" below the body, touching nothing
    mask = compute_body_mask(arr, spacing=(1.5, 1.5, 1.5), opening_mm=3.0)
    assert mask[20, 22, 16]  # lung centre is inside the body (hole filled)
    assert not mask[:, 2:4, :].any()  # thin table removed by the opening
    assert not mask[0, 0, 0]


def test_body_mask_keeps_lungs_that_a_cropped_field_of_view_cuts():
    """A chest cropped to its lungs: the lungs open onto the image border, yet they are body; air around a scan is not."""
    rng = np.random.default_rng(0)
    arr = np.full((40, 40, 8), 40.0, np.float32)  # soft tissue
    arr[:15, 8:32] = -850.0 + rng.normal(0, 20, (15, 24, 8))  # right lung, cut by the border at x = 0
    arr[25:, 8:32] = -850.0 + rng.normal(0, 20, (15, 24, 8))  # left lung, cut at x = 39
    mask = compute_body_mask(arr, spacing=(1.5, 1.5, 3.0))
    assert mask.all()
    old = compute_body_mask(arr, spacing=(1.5, 1.5, 3.0), outside=None)  # the border never closes a slice
    assert not old[5, 20].any() and not old[34, 20].any()
    # an ordinary scan: air (-1000 HU) around the body at the border stays outside
    scan = np.full((40, 40, 8), -1000.0, np.float32)
    scan[5:35, 5:35] = 40.0
    scan[10:18, 10:30] = -850.0
    scan[:, 18:22, 2:6] = 40.0  # the body reaches the border (an arm or the table) without enclosing anything
    body = compute_body_mask(scan, spacing=(1.5, 1.5, 3.0), opening_mm=0)
    inner = (slice(1, -1), slice(1, -1))  # at most the border pixels beside the arm differ, nothing inside
    assert np.array_equal(body[inner], compute_body_mask(scan, spacing=(1.5, 1.5, 3.0), opening_mm=0, outside=None)[inner])
    assert body[12, 20].all() and not body[2, 2].any()
    out = BodyMask(outside=None)(torch.as_tensor(arr[None]))  # the transforms pass it on
    assert not out[0, 5, 20].any() and BodyMaskd("image")({"image": torch.as_tensor(arr[None])})["body"].all()


def test_body_mask_transform_keeps_type_and_geometry():
    arr = simple_ct()[None]
    img = MetaTensor(torch.as_tensor(arr), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = BodyMask()(img)
    assert isinstance(out, MetaTensor) and out.shape == img.shape
    assert set(np.unique(out.numpy())) == {0.0, 1.0}
    d = BodyMaskd("image")({"image": img})
    assert torch.equal(d["body"], out)
    with pytest.raises(ValueError):
        BodyMask(opening_mm=-1)


def test_region_index_is_body_normalised():
    start, end = body_bbox(np.pad(np.ones((10, 10, 10)), 5))
    assert list(start) == [5, 5, 5] and list(end) == [15, 15, 15]
    grid = (3, 3, 3)
    assert region_index((5, 5, 5), (2, 2, 2), start, end, grid) == 0
    assert region_index((12, 12, 12), (2, 2, 2), start, end, grid) == 26
    assert region_index((100, 100, 100), (2, 2, 2), start, end, grid) == 26  # clamped
    assert region_index((9, 9, 9), (2, 2, 2), start, end, (1, 1, 1)) == 0
    # same relative position in a bigger body -> same region
    s2, e2 = np.array([0, 0, 0]), np.array([30, 30, 30])
    assert region_index((0, 0, 20), (2, 2, 2), s2, e2, grid) == region_index((5, 5, 12), (2, 2, 2), start, end, grid)


def test_body_bbox_equals_the_nonzero_extent():
    """The per-axis projections give the extent of the mask's voxels, for scattered masks, tensors and empty masks."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = tuple(rng.integers(1, 9, size=int(rng.integers(1, 4))))
        mask = rng.random(shape) < rng.choice([0.02, 0.3])
        start, end = body_bbox(torch.as_tensor(mask) if rng.random() < 0.5 else mask.astype(np.float32))
        if mask.any():
            idx = np.nonzero(mask)
            assert list(start) == [int(i.min()) for i in idx] and list(end) == [int(i.max()) + 1 for i in idx]
        else:  # empty: the whole array
            assert list(start) == [0] * len(shape) and list(end) == list(shape)


def test_training_windows_keep_clear_of_an_excluded_region():
    """No window holds a voxel of the grown exclusion; the mask is not passed on; a mask that leaves no window is one
    clear error naming the scan."""

    from monai_simsid.data.exclusion import grow_mask
    from monai_simsid.transforms.body import RandBodyWindowsd
    from monai_simsid.utils.errors import InputError

    shape = (48, 48, 48)
    image = MetaTensor(torch.zeros(1, *shape), meta={"filename_or_obj": "chest_07.nii.gz"})
    body = torch.ones(1, *shape)
    exclude = torch.zeros(1, *shape)
    exclude[0, 10:14, 10:14, 10:14] = 1
    grown = grow_mask(exclude[0].numpy(), (1, 1, 1), 3.0)
    sampler = RandBodyWindowsd(["image"], roi_size=(16, 16, 16), num_samples=8, region_grid=(1, 1, 1), exclude_margin_mm=3.0)
    sampler.set_random_state(0)
    starts = []
    for _ in range(10):
        for item in sampler({"image": image, "body": body, "exclude": exclude}):
            s = item["window_start"].numpy()
            assert not grown[s[0] : s[0] + 16, s[1] : s[1] + 16, s[2] : s[2] + 16].any()
            assert "exclude" not in item
            starts.append(s)
    plain = RandBodyWindowsd(["image"], roi_size=(16, 16, 16), num_samples=80, region_grid=(1, 1, 1))
    plain.set_random_state(0)
    hits = [item["window_start"].numpy() for item in plain({"image": image, "body": body, "exclude": None})]
    assert any(grown[s[0] : s[0] + 16, s[1] : s[1] + 16, s[2] : s[2] + 16].any() for s in hits)  # it can fail
    everywhere = torch.zeros(1, *shape)
    everywhere[0, ::12, ::12, ::12] = 1
    with pytest.raises(InputError, match="chest_07.nii.gz: the exclusion mask"):
        sampler({"image": image, "body": body, "exclude": everywhere})


def test_rare_clear_windows_are_found_exactly_and_drawn_uniformly():
    """Where rejection gives up (few clear windows), the exact search finds them: the same set as brute force."""
    from monai_simsid.transforms.body.array import sample_window_starts

    shape, roi = (20, 18, 16), np.array([8, 8, 8])
    body = np.ones(shape, bool)
    exclude = np.zeros(shape, bool)
    exclude[8:12, 7:11, 6:10] = True  # a block in the middle: only windows at the edges are clear
    starts = sample_window_starts(body, roi, 200, np.random.default_rng(0), exclude, max_tries=0)
    for s in starts:
        assert not exclude[s[0] : s[0] + 8, s[1] : s[1] + 8, s[2] : s[2] + 8].any()
    clear_centres = [
        c for c in np.ndindex(*shape)
        if not exclude[tuple(slice(int(a), int(a) + 8) for a in np.clip(np.subtract(c, 4), 0, np.subtract(shape, 8)))].any()
    ]
    expected = {tuple(np.clip(np.subtract(c, 4), 0, np.subtract(shape, 8))) for c in clear_centres}
    assert {tuple(s) for s in starts} <= expected and len({tuple(s) for s in starts}) > 1
    with pytest.raises(ValueError, match="leaves no"):
        sample_window_starts(body, roi, 2, np.random.default_rng(0), np.ones(shape, bool), max_tries=2)
