"""HU windows as channels: equal to ScaleIntensityRange for one window, metadata kept, bad windows rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRange

from monai_simsid.transforms.intensity import HUWindows, HUWindowsd


def _hu():
    return MetaTensor(torch.linspace(-1200, 800, 2 * 3 * 4 * 5).reshape(1, 6, 4, 5), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))


def test_one_window_equals_scale_intensity_range():
    img = _hu()
    ours = HUWindows([[-1000, 500]])(img)
    ref = ScaleIntensityRange(-1000, 500, -1.0, 1.0, clip=True)(img)
    torch.testing.assert_close(ours.as_tensor(), ref.as_tensor())


def test_several_windows_become_channels_with_metadata():
    img = _hu()
    out = HUWindowsd("image", [[-1000, -400], [-160, 240]])({"image": img})["image"]
    assert out.shape == (2, 6, 4, 5) and isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, img.affine)
    hu = img[0]
    lung = out[0]
    assert float(lung[hu <= -1000].max()) == -1.0 and float(lung[hu >= -400].min()) == 1.0
    mid = (hu > -1000) & (hu < -400)
    np.testing.assert_allclose(lung[mid].numpy(), ((hu[mid] + 1000) / 600 * 2 - 1).numpy(), atol=1e-5)
    assert float(out.min()) >= -1 and float(out.max()) <= 1


@pytest.mark.parametrize("windows", [[], [[100, 100]], [[500, -1000]], [[1, 2, 3]], "lung"])
def test_bad_windows_raise(windows):
    with pytest.raises(ValueError):
        HUWindows(windows)


def test_multichannel_input_is_refused():
    with pytest.raises(ValueError, match="one-channel"):
        HUWindows([[-1000, 500]])(torch.zeros(2, 4, 4, 4))
