"""Geometric augmentation of training windows: shape, region key and seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from monai_simsid.data.augment import build_window_augmentation, with_augmentation
from monai_simsid.data.seeded import SeededDataset
from monai_simsid.transforms.body import RandBodyWindowsd


def _item() -> dict:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 40, 40, 40, generator=g)
    body = torch.zeros(1, 40, 40, 40)
    body[:, 5:35, 5:35, 5:35] = 1
    return {"image": img, "body": body}


def _dataset(prob: float, seed: int = 3) -> SeededDataset:
    sampler = RandBodyWindowsd(keys=["image"], roi_size=(16, 16, 16), num_samples=2, region_grid=(2, 2, 2))
    return SeededDataset([_item()], with_augmentation(sampler, build_window_augmentation(prob=prob)), seed=seed)


def test_off_by_default_and_validated():
    assert build_window_augmentation() == []
    for bad in ({"prob": 1.5}, {"prob": 0.5, "rotate_deg": -1}, {"prob": 0.5, "scale": 1.0}, {"prob": 0.5, "spatial_dims": 1}):
        with pytest.raises(ValueError):
            build_window_augmentation(**bad)


def test_augmented_windows_keep_shape_and_region_and_are_seeded():
    plain, aug = _dataset(0.0)[0], _dataset(1.0)[0]
    again = _dataset(1.0)[0]
    assert len(aug) == len(plain) == 2
    for p, a, b in zip(plain, aug, again):
        assert a["image"].shape == p["image"].shape == (2, 16, 16, 16)
        assert int(a["region"]) == int(p["region"])  # the body-region key of the window is kept
        assert not torch.allclose(torch.as_tensor(a["image"]), torch.as_tensor(p["image"]))  # it was transformed
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))  # same seed, same windows
    ds = _dataset(1.0)
    ds.set_epoch(1)
    other = ds[0]
    assert not torch.equal(torch.as_tensor(other[0]["image"]), torch.as_tensor(aug[0]["image"]))
