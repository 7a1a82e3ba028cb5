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
