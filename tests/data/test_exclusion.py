"""Tests of the exclusion masks of normal scans (:mod:`monai_simsid.data.exclusion`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_simsid.data.exclusion import EXCLUDE_KEY, grow_mask, item_exclusion


def test_grow_mask_reaches_the_margin_in_mm_on_each_axis():
    mask = np.zeros((41, 41, 21), bool)
    mask[20, 20, 10] = True
    grown = grow_mask(mask, (1.0, 1.0, 2.5), margin_mm=10.0)
    assert grown[mask].all() and grown[30, 20, 10] and not grown[31, 20, 10]
    assert grown[20, 20, 14] and not grown[20, 20, 15]  # 4 slices of 2.5 mm = 10 mm
    idx = np.argwhere(grown) - [20, 20, 10]
    assert (np.sqrt(((idx * [1.0, 1.0, 2.5]) ** 2).sum(1)) <= 10.0).all()  # a ball in mm
    assert not grow_mask(np.zeros((5, 5, 5)), (1, 1, 1)).any()
    np.testing.assert_array_equal(grow_mask(mask, (1, 1, 1), 0.0), mask)


@pytest.mark.parametrize("bad", [dict(spacing=(1, 1)), dict(spacing=(1, 0, 1)), dict(margin_mm=-1.0), dict(margin_mm=np.nan)])
def test_grow_mask_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        grow_mask(np.ones((3, 3, 3)), **{"spacing": (1, 1, 1), **bad})


def test_item_exclusion_reads_the_spacing_off_the_affine():
    mask = torch.zeros(1, 21, 21, 21)
    mask[0, 10, 10, 10] = 1
    item = {"image": MetaTensor(torch.zeros(1, 21, 21, 21), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))}
    assert item_exclusion(item) is None
    grown = item_exclusion({**item, EXCLUDE_KEY: mask}, margin_mm=4.0)  # the image's 2 mm voxels: 2 voxels
    assert grown.shape == (21, 21, 21) and grown[12, 10, 10] and not grown[13, 10, 10]
    grown = item_exclusion({**item, EXCLUDE_KEY: mask}, spacing=(1, 1, 1), margin_mm=4.0)
    assert grown[14, 10, 10] and not grown[15, 10, 10]
    with pytest.raises(ValueError, match="affine"):
        item_exclusion({"image": torch.zeros(1, 5, 5, 5), EXCLUDE_KEY: mask})
