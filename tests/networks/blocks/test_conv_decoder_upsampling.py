from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import monai_simsid.networks.blocks.convolutions as convolutions
from monai_simsid.networks.blocks.convolutions import UP_MODES, ConvDecoder

torch.set_num_threads(1)


def _randomise_norms(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("overlapping_up", [False, True])
def test_shuffle_shapes_match_deconv(spatial_dims, overlapping_up):
    x = torch.randn(2, 16, *([4] * spatial_dims))
    outs = {}
    for mode in UP_MODES:
        dec = ConvDecoder(spatial_dims, (16, 8, 4), 2, up_mode=mode, overlapping_up=overlapping_up)
        outs[mode] = dec(x)
    (y_d, f_d), (y_s, f_s) = outs["deconv"], outs["shuffle"]
    assert y_s.shape == y_d.shape == (2, 2, *([32] * spatial_dims))
    assert [f.shape for f in f_s] == [f.shape for f in f_d]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="up_mode"):
        ConvDecoder(3, (16, 8), up_mode="bilinear")
    with pytest.raises(ValueError, match="out_kernel_size"):
        ConvDecoder(3, (16, 8), up_mode="shuffle", out_kernel_size=2)
    with pytest.raises(ValueError, match="strides"):
        ConvDecoder(3, (16, 8), up_mode="shuffle", strides=(2, 0))


def test_default_mode_state_dict_unchanged():
    """The default (transposed-conv) decoder keeps the key names and shapes of existing checkpoints."""
    sd = ConvDecoder(3, (16, 8), 1, overlapping_up=False).state_dict()
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [f"levels.{i}.{k}" for i in range(2) for k in ["0.weight", *(f"1.{n}" for n in bn)]]
    expected += ["final.0.weight", "final.0.bias"]
    assert list(sd) == expected
    assert sd["levels.0.0.weight"].shape == (16, 16, 2, 2, 2) and sd["levels.1.0.weight"].shape == (16, 8, 2, 2, 2)
    assert sd["final.0.weight"].shape == (1, 8, 3, 3, 3)
    assert ConvDecoder(3, (16, 8), 1).state_dict()["levels.0.0.weight"].shape == (16, 16, 4, 4, 4)
    shuffle = ConvDecoder(3, (16, 8), 1, overlapping_up=False, up_mode="shuffle").state_dict()
    assert shuffle["levels.0.0.conv_block.weight"].shape == (16 * 8, 16, 1, 1, 1)


def test_shuffle_1x1_equals_k2s2_transposed_conv():
    """A 1x1 conv + voxel shuffle is the k2-s2 transposed conv with its weights rearranged."""
    torch.manual_seed(0)
    deconv = ConvDecoder(3, (8, 4), 1, overlapping_up=False).eval()
    shuffle = ConvDecoder(3, (8, 4), 1, overlapping_up=False, up_mode="shuffle").eval()
    sd = deconv.state_dict()
    for i in range(2):
        w = sd.pop(f"levels.{i}.0.weight")  # (in, out, 2, 2, 2)
        sd[f"levels.{i}.0.conv_block.weight"] = w.permute(1, 2, 3, 4, 0).reshape(-1, w.shape[0], 1, 1, 1)
    shuffle.load_state_dict(sd)
    x = torch.randn(2, 8, 3, 4, 5)
    assert torch.allclose(shuffle(x)[0], deconv(x)[0], atol=1e-5)


def test_icnr_initialisation_starts_without_checkerboard():
    dec = ConvDecoder(2, (8, 4), 1, up_mode="shuffle", overlapping_up=False, norm=None, act=None)
    up = dec.levels[0][0]
    h = up(torch.randn(1, 8, 5, 5))
    assert torch.equal(h[..., ::2, ::2], h[..., 1::2, 1::2]) and torch.equal(h[..., ::2, ::2], h[..., 1::2, ::2])


@pytest.mark.parametrize(
    "spatial_dims,norm,act,overlapping_up",
    [
        (3, "batch", ("leakyrelu", {"negative_slope": 0.2}), False),  # folded, chunked path
        (3, "batch", "prelu", False),  # not element-wise: pre-shuffle norm/act path
        (2, "instance", "relu", False),
        (3, ("group", {"num_groups": 2}), "gelu", True),
        (1, None, "tanh", False),
        (3, None, "relu", True),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_fused_tail_matches_full_decoder(spatial_dims, norm, act, overlapping_up, training, monkeypatch):
    monkeypatch.setattr(convolutions, "_TAIL_CHUNK", 50)  # several chunks and a partial one
    torch.manual_seed(0)
    dec = ConvDecoder(
        spatial_dims, (8, 4), 2, norm=norm, act=act, up_mode="shuffle", overlapping_up=overlapping_up,
        out_kernel_size=1, out_act="sigmoid",
    )
    _randomise_norms(dec)
    assert dec._can_fuse_tail()
    dec.train(training)
    other = copy.deepcopy(dec)
    x = torch.randn(2, 8, *[3, 5, 4][:spatial_dims])
    with torch.no_grad():
        full, feats = dec(x)
        fused, no_feats = other(x, return_features=False)
    assert len(feats) == 2 and no_feats == []
    assert fused.shape == full.shape == (2, 2, *[12, 20, 16][:spatial_dims])
    assert torch.allclose(fused, full, atol=1e-5)
    if training:  # the batch statistics (and running stats) are the same in both paths
        for a, b in zip(dec.modules(), other.modules()):
            if isinstance(a, nn.modules.batchnorm._BatchNorm):
                assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
                assert torch.allclose(a.running_var, b.running_var, atol=1e-6)


def test_no_fusion_with_last_level_hook_or_k3_output():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 4, 4)
    dec = ConvDecoder(3, (8, 4), 1, up_mode="shuffle", overlapping_up=False, out_kernel_size=1).eval()
    with torch.no_grad():
        y_hook, _ = dec(x, hooks={1: lambda t: 2 * t}, return_features=False)
        y_ref = dec.final(2 * dec.levels[1](dec.levels[0](x)))
    assert torch.allclose(y_hook, y_ref, atol=1e-6)
    assert not ConvDecoder(3, (8, 4), 1, up_mode="shuffle", overlapping_up=False)._can_fuse_tail()  # k3 output
    assert not ConvDecoder(3, (8, 4), 1, overlapping_up=False, out_kernel_size=1)._can_fuse_tail()  # deconv


def test_fused_tail_with_channels_last_weights_and_input():
    """The bundles' ``channels_last`` switch (weights and inputs in channels_last_3d) gives the same output."""
    torch.manual_seed(0)
    dec = ConvDecoder(3, (8, 4), 1, up_mode="shuffle", overlapping_up=False, out_kernel_size=1).eval()
    _randomise_norms(dec)
    x = torch.randn(2, 8, 4, 5, 6)
    with torch.no_grad():
        ref, _ = dec(x)
        for p in dec.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        out, _ = dec(x.contiguous(memory_format=torch.channels_last_3d), return_features=False)
    assert torch.allclose(out, ref, atol=1e-5)
