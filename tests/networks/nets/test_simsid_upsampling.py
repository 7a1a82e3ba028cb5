from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser

from monai_simsid.networks.nets import SimSID, SimSIDOutput, SimSIDTrainOutput

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[3]
SMALL = dict(channels=(4, 8, 16, 32), embed_dim=16, num_heads=4, num_slots=16, top_k=3, disc_channels=(4, 8, 8, 8, 8))
FAST = dict(up_mode="shuffle", out_kernel_size=1, overlapping_up=False)


def test_default_is_transposed_conv_with_unchanged_keys():
    net = SimSID(3, roi_size=(32, 32, 32), **SMALL)
    for dec in (net.teacher_decoder, net.student_decoder):
        assert dec.up_mode == "deconv" and isinstance(dec.levels[0][0], nn.ConvTranspose3d)
        assert dec.final[0].kernel_size == (3, 3, 3)
    keys = net.state_dict().keys()
    assert "student_decoder.levels.3.0.weight" in keys and "teacher_decoder.final.0.weight" in keys
    assert not any("conv_block" in k for k in keys)


def test_invalid_options():
    with pytest.raises(ValueError, match="up_mode"):
        SimSID(3, roi_size=(32, 32, 32), up_mode="nearest", **SMALL)
    with pytest.raises(ValueError, match="out_kernel_size"):
        SimSID(3, roi_size=(32, 32, 32), out_kernel_size=5, **SMALL)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("options", [FAST, {"up_mode": "shuffle"}])
def test_shuffle_simsid_train_and_eval(spatial_dims, options):
    torch.manual_seed(0)
    roi = (32,) * spatial_dims
    net = SimSID(spatial_dims, roi_size=roi, block_grid=(2,) * spatial_dims, region_grid=(3,) * spatial_dims,
                 **SMALL, **options)
    assert any("conv_block" in k for k in net.state_dict())
    x = torch.rand(2, 1, *roi)
    region = torch.tensor([0, 3])
    out = net.train()(x, region)
    assert isinstance(out, SimSIDTrainOutput)
    assert out.teacher_recon.shape == out.student_recon.shape == x.shape
    assert len(out.student_features) == len(out.teacher_features) == 4
    assert out.student_features[-1].shape == (2, 4, *roi)
    out.student_recon.mean().backward()  # gradients flow through the shuffle levels
    assert net.student_decoder.levels[-1][0].conv_block.weight.grad is not None
    net.eval()
    with torch.no_grad():
        ev = net(x, region)
        # the eval path (fused last level when possible) gives the full decoder's reconstruction
        z = net.inpainting(net.encoder(x), region)
        full, _ = net._student(z, region, return_features=True)
    assert isinstance(ev, SimSIDOutput)
    assert ev.reconstruction.shape == ev.anomaly_map.shape == x.shape and ev.score.shape == (2,)
    assert torch.allclose(ev.reconstruction, full, atol=1e-5)


def test_bundle_model_config_can_select_the_shuffle_decoder():
    """simsid_ct's CPU preset uses shuffle + 1x1 (the fast eval path); the GPU preset (overlapping_up) deconv + k3."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "simsid_ct" / "configs" / "train.json"))
    cpu = parser.get_parsed_content("model_config", lazy=False)
    assert cpu["up_mode"] == "shuffle" and cpu["out_kernel_size"] == 1
    net = SimSID(**cpu)
    assert net.student_decoder.up_mode == "shuffle" and net.student_decoder._can_fuse_tail()
    parser.read_config([str(REPO / "bundles" / "simsid_ct" / "configs" / n) for n in ("train.json", "gpu.json")])
    gpu = parser.get_parsed_content("model_config", lazy=False)
    assert gpu["up_mode"] == "deconv" and gpu["out_kernel_size"] == 3
