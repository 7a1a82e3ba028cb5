"""SeededDataset: an item's random sample depends on (seed, epoch, index) only, not on load order."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import RandSpatialCropd

from monai_simsid.data.seeded import SeededDataset, item_seed


def _dataset(seed=0):
    data = [{"image": np.arange(4000, dtype=np.float32).reshape(1, 10, 20, 20) + 10000 * i} for i in range(4)]
    return SeededDataset(data, RandSpatialCropd(["image"], roi_size=(4, 4, 4), random_size=False), seed=seed)


def test_same_item_same_sample_whatever_the_order():
    ds = _dataset()
    forward = [ds[i]["image"] for i in range(4)]
    backward = {i: ds[i]["image"] for i in reversed(range(4))}
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(forward[i]), np.asarray(backward[i]))


def test_epoch_and_seed_change_the_samples():
    ds = _dataset()
    first = [np.asarray(ds[i]["image"]).copy() for i in range(4)]
    ds.set_epoch(1)
    second = [np.asarray(ds[i]["image"]) for i in range(4)]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))
    other = _dataset(seed=1)
    assert any(not np.array_equal(a, np.asarray(other[i]["image"])) for i, a in enumerate(first))
    assert item_seed(0, 0, 1) != item_seed(0, 1, 0) != item_seed(1, 0, 0)


def test_needs_a_randomizable_transform():
    with pytest.raises(ValueError, match="set_random_state"):
        SeededDataset([{"image": 0}], transform=lambda d: d)
