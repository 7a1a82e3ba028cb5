"""SimSID map_sigma: local-mean comparison keeps a regional offset and cancels zero-mean texture."""

from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.nets import SimSID

KW = {"roi_size": (32, 32, 32), "channels": (4, 8), "embed_dim": 16, "num_heads": 2, "num_slots": 8, "disc_channels": (4,) * 5}


def _map(sigma: float, error: torch.Tensor) -> torch.Tensor:
    net = SimSID(3, 1, map_sigma=sigma, with_discriminator=False, **KW).eval()
    x = torch.zeros(1, 1, 32, 32, 32)
    net._student = lambda z, region, return_features=False, skips=(): (x - error, [])  # recon = x - error
    with torch.no_grad():
        return net(x).anomaly_map[0, 0]


def test_texture_cancels_and_a_blob_stays():
    idx = torch.arange(32)
    checker = ((idx[:, None, None] + idx[None, :, None] + idx[None, None, :]) % 2 * 2 - 1).float() * 0.1
    blob = torch.zeros(32, 32, 32)
    blob[10:22, 10:22, 10:22] = 0.1
    err_tex, err_blob = checker[None, None], blob[None, None]
    assert float(_map(0, err_tex).mean()) == pytest.approx(0.1, rel=1e-4)
    assert float(_map(2.0, err_tex).mean()) < 0.01  # texture averages out
    assert float(_map(2.0, err_blob)[16, 16, 16]) == pytest.approx(0.1, rel=0.05)  # a regional offset does not
    assert float(_map(2.0, err_blob)[2, 2, 2]) < 0.01


def test_map_sigma_keeps_the_state_dict_and_validates():
    assert list(SimSID(3, 1, map_sigma=2.0, **KW).state_dict()) == list(SimSID(3, 1, **KW).state_dict())
    with pytest.raises(ValueError, match="map_sigma"):
        SimSID(3, 1, map_sigma=-1.0, **KW)
