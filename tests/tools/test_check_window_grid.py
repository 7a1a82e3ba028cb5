"""tools/check_window_grid.py: a voxel-wise map shows no grid; a window-position map does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from conftest import load_tool
from monai_simsid.inferers import AnomalyInferer


def _tool():
    return load_tool("check_window_grid")


class _VoxelMap(torch.nn.Module):
    """Map = |image|: depends on the voxel only, never on the window."""

    def forward(self, x, region):
        return SimpleNamespace(anomaly_map=x.abs(), score=x.flatten(1).mean(1))


class _RimMap(torch.nn.Module):
    """Map = distance from the window centre: the textbook window grid."""

    def forward(self, x, region):
        grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in x.shape[2:]], indexing="ij")
        rim = torch.stack(grids).abs().amax(0)
        return SimpleNamespace(anomaly_map=(x.abs() * 0 + rim).expand_as(x), score=x.flatten(1).mean(1))


def test_grid_check_separates_voxelwise_and_window_maps():
    tool = _tool()
    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.normal(0, 1, (1, 120, 96, 64)), dtype=torch.float32).cumsum(1) / 10
    body = torch.ones(1, 120, 96, 64)
    inferer = AnomalyInferer(roi_size=(32, 32, 32), region_grid=(1, 1, 1), sw_batch_size=8, overlap=0.25)

    def predictor(net):
        return SimpleNamespace(preprocessing=lambda d: {"image": image, "body": body}, inferer=inferer, network=net)

    clean = tool.check_scan(predictor(_VoxelMap()), "x")
    grid = tool.check_scan(predictor(_RimMap()), "x")
    assert clean["stride_vox"] == [24, 24, 24]
    assert max(clean["shift_change"]) < 1e-4
    assert min(grid["shift_change"]) > 0.05
    # the short axis (64 = 2.7 strides; MONAI aligns the last window with the end) has too few periods to judge
    assert min(grid["grid_strength"][:2]) > 0.5 > max(clean["grid_strength"])
