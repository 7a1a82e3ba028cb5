"""AnomalyInferer: the mixed-precision switch."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from monai_simsid.inferers import AnomalyInferer


class _Out(NamedTuple):
    anomaly_map: torch.Tensor
    score: torch.Tensor


class _RecordingNet(torch.nn.Module):
    """Returns the squared first channel as the map and records whether autocast was on during the call."""

    def __init__(self):
        super().__init__()
        self.autocast_seen: list[bool] = []

    def forward(self, x, region):
        self.autocast_seen.append(torch.is_autocast_enabled("cuda"))
        return _Out(x[:, :1] ** 2, x.mean(dim=(1, 2, 3, 4)))


def test_amp_is_a_no_op_on_cpu():
    x = torch.randn(1, 2, 40, 36, 20)
    maps = {}
    for amp in (False, True):
        net = _RecordingNet()
        maps[amp] = AnomalyInferer((16, 16, 16), sw_batch_size=3, amp=amp)(x, net).anomaly_map
        assert net.autocast_seen and not any(net.autocast_seen)
    assert maps[True].dtype == torch.float32
    torch.testing.assert_close(maps[True], maps[False], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_runs_the_network_under_autocast_on_cuda_and_stitches_in_float32():
    x = torch.randn(1, 1, 40, 36, 20, device="cuda")
    net = _RecordingNet()
    res = AnomalyInferer((16, 16, 16), sw_batch_size=3, amp=True, device="cpu")(x, net)
    assert all(net.autocast_seen)
    assert res.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(res.anomaly_map, (x.cpu() ** 2), rtol=1e-2, atol=1e-2)


class _RimNet(torch.nn.Module):
    """Scores 1 on the outer ``rim`` voxels of every window and 0 inside: a network whose window rims are poor."""

    def __init__(self, rim: int = 2):
        super().__init__()
        self.rim = rim

    def forward(self, x, region):
        amap = torch.ones_like(x[:, :1])
        r = self.rim
        amap[:, :, r:-r, r:-r, r:-r] = 0
        return _Out(amap, region.float())


def _faces(m: torch.Tensor) -> torch.Tensor:
    """The values on the six faces of a ``(B, C, X, Y, Z)`` volume."""
    return torch.cat([m[..., 0, :, :].flatten(), m[..., -1, :, :].flatten(), m[..., :, 0, :].flatten(),
                      m[..., :, -1, :].flatten(), m[..., 0].flatten(), m[..., -1].flatten()])


def test_margin_keeps_window_rims_off_the_scan_border():
    x = torch.randn(1, 1, 40, 36, 30)
    plain = AnomalyInferer((16, 16, 16), sw_batch_size=4)(x, _RimNet()).anomaly_map
    padded = AnomalyInferer((16, 16, 16), sw_batch_size=4, margin=4)(x, _RimNet()).anomaly_map
    assert padded.shape == plain.shape == (1, 1, 40, 36, 30)
    assert _faces(plain).min() > 0.99  # only window rims cover the scan's border
    assert _faces(padded).mean() < 0.2  # now window interiors do (seams still cross the faces, as inside the scan)


def test_margin_replicates_an_axis_too_short_to_mirror():
    x = torch.randn(1, 1, 40, 36, 3)
    net = _RecordingNet()
    out = AnomalyInferer((16, 16, 16), sw_batch_size=4, margin=4)(x, net).anomaly_map
    torch.testing.assert_close(out, x ** 2)  # a voxel-wise map comes back unchanged, margin cut off


def test_margin_shifts_the_region_frame_with_the_scan():
    """A window's body region is located on the scan, not on the margin: per-window scores (the region index here)
    agree at the scan centre with and without a margin."""
    x = torch.randn(1, 1, 48, 48, 48)
    kw = dict(region_grid=(3, 3, 3), sw_batch_size=4, overlap=0.5, mode="constant")
    plain = AnomalyInferer((16, 16, 16), **kw)(x, _RimNet()).score_map
    padded = AnomalyInferer((16, 16, 16), margin=8, **kw)(x, _RimNet()).score_map
    torch.testing.assert_close(padded[0, 0, 16:32, 16:32, 16:32], plain[0, 0, 16:32, 16:32, 16:32])


@pytest.mark.parametrize("kwargs", [{"margin": -1}, {"margin": (1, 2)}, {"margin_mode": "zeros"}])
def test_margin_arguments_are_validated(kwargs):
    with pytest.raises(ValueError):
        AnomalyInferer((16, 16, 16), **kwargs)
