"""Speed switches: channels_last and compile leave results and state-dict keys unchanged."""

from __future__ import annotations

import torch

from monai_simsid.networks.nets import SimSID
from monai_simsid.utils.accel import accelerate


def _net():
    torch.manual_seed(0)
    return SimSID(3, 1, roi_size=(32, 32, 32), channels=(4, 8), embed_dim=16, num_heads=2, num_slots=8,
                  disc_channels=(4,) * 5).eval()  # fmt: skip


def test_channels_last_and_compile_keep_outputs_and_keys():
    x, region = torch.rand(2, 1, 32, 32, 32), torch.tensor([0, 3])
    ref_net = _net()
    with torch.no_grad():
        ref = ref_net(x, region).anomaly_map
    net = accelerate(_net(), channels_last=True, compile="eager")
    conv = net.encoder.levels[0][3].weight  # 4 -> 4 channels (a 1-channel kernel is both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert list(net.state_dict()) == list(ref_net.state_dict())
    with torch.no_grad():
        out = net(x, region).anomaly_map
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_defaults_change_nothing():
    net = _net()
    assert accelerate(net) is net
    assert net.encoder.levels[0][0].weight.is_contiguous()


def test_command_line_strings():
    net = accelerate(_net(), channels_last="false", compile="false")
    assert net.encoder.levels[0][3].weight.is_contiguous()
    assert not hasattr(net, "_compiled_call_impl") or net._compiled_call_impl is None


def test_preset_config_files_merge_order_and_unknown_preset():
    import pytest

    from monai_simsid.apps import preset_config_files

    assert [p.rsplit("/", 1)[-1] for p in preset_config_files("simsid_ct")] == ["train.json"]
    assert [p.rsplit("/", 1)[-1] for p in preset_config_files("simsid_ct", "gpu")] == ["train.json", "gpu.json"]
    with pytest.raises(FileNotFoundError, match="tpu"):
        preset_config_files("simsid_ct", "tpu")
