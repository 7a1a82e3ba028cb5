"""SimSID's block encoder: a block's features, and so its in-painting's inputs, carry nothing of another block."""

from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.blocks.memory import batch_to_blocks, blocks_to_batch
from monai_simsid.networks.nets import SimSID

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 16, 32), embed_dim=16, num_heads=4, num_slots=16, top_k=3, disc_channels=(4, 8, 8, 8, 8))


@pytest.mark.parametrize("grid,shape", [((2, 2, 2), (2, 3, 8, 6, 4)), ((2, 3), (1, 2, 4, 9)), ((4,), (3, 1, 8))])
def test_blocks_to_batch_round_trip(grid, shape):
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    b = blocks_to_batch(x, grid)
    size = [s // g for s, g in zip(shape[2:], grid)]
    assert b.shape == (shape[0] * torch.Size(grid).numel(), shape[1], *size)
    assert torch.equal(batch_to_blocks(b, grid), x)
    # the first block of the first sample is the corner sub-array
    corner = x[(slice(0, 1), slice(None), *(slice(0, s) for s in size))]
    assert torch.equal(b[:1], corner)


def test_batch_to_blocks_refuses_a_partial_batch():
    with pytest.raises(ValueError, match="multiple"):
        batch_to_blocks(torch.zeros(3, 1, 2, 2), (2, 1))


def _nets(**kw):
    torch.manual_seed(0)
    common = dict(roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(1, 1, 1), norm=None, **SMALL)
    plain = SimSID(3, **common, **kw).eval()
    blocked = SimSID(3, block_encoder=True, **common, **kw).eval()
    blocked.load_state_dict(plain.state_dict())  # the option adds no weights
    return plain, blocked


def test_block_features_do_not_see_the_other_blocks():
    plain, blocked = _nets()
    x = torch.rand(1, 1, 32, 32, 32)
    y = x.clone()
    y[..., :16, :16, :16] += 2.0  # change block 0 only
    with torch.no_grad():
        zb_x, zb_y = blocked.encode(x), blocked.encode(y)
        zp_x, zp_y = plain.encode(x), plain.encode(y)
    assert zb_x.shape == zp_x.shape == (1, 32, 2, 2, 2)
    other = (slice(None), slice(None), slice(1, 2))  # the blocks with x index 1 (block 0 is at index 0 on every axis)
    assert torch.equal(zb_x[other], zb_y[other])
    assert not torch.equal(zb_x[..., :1, :1, :1], zb_y[..., :1, :1, :1])
    # without the option the encoder's receptive field crosses the block border
    assert not torch.allclose(zp_x[other], zp_y[other])


def test_a_blocks_inpainting_does_not_see_its_own_content():
    """With the block encoder the in-painted features of a block are independent of that block's input; without it,
    the neighbours' features carry part of it (the leak the option closes)."""
    plain, blocked = _nets()
    x = torch.rand(1, 1, 32, 32, 32)
    y = x.clone()
    y[..., :16, :16, :16] = 3.0  # a dense blob filling block 0
    with torch.no_grad():
        tb_x, _ = blocked.inpainting.inpaint_tokens(blocked.encode(x), return_attention=False)
        tb_y, _ = blocked.inpainting.inpaint_tokens(blocked.encode(y), return_attention=False)
        tp_x, _ = plain.inpainting.inpaint_tokens(plain.encode(x), return_attention=False)
        tp_y, _ = plain.inpainting.inpaint_tokens(plain.encode(y), return_attention=False)
    assert torch.allclose(tb_x[:, 0], tb_y[:, 0], atol=1e-6)  # block 0's in-painting: same with and without the blob
    assert not torch.allclose(tb_x[:, 1:], tb_y[:, 1:])  # the others read block 0
    assert not torch.allclose(tp_x[:, 0], tp_y[:, 0], atol=1e-4)


def test_block_encoder_trains_and_evaluates():
    _, net = _nets()
    x = torch.rand(2, 1, 32, 32, 32)
    out = net.train()(x)
    assert out.student_recon.shape == x.shape and out.teacher_recon.shape == x.shape
    ev = net.eval()(x)
    assert ev.anomaly_map.shape == (2, 1, 32, 32, 32) and torch.isfinite(ev.anomaly_map).all()


@pytest.mark.parametrize("value", ["false", "true", 1, None])
def test_block_encoder_must_be_a_bool(value):
    with pytest.raises(ValueError, match="block_encoder"):
        SimSID(3, roi_size=(32, 32, 32), block_encoder=value, **SMALL)


# ------------------------------------------------------------------------------------- memory-filtered skips
def test_memory_skips_reach_the_student_through_its_memory():
    torch.manual_seed(0)
    kw = dict(roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(1, 1, 1), norm=None, **SMALL)
    plain = SimSID(3, **kw).eval()
    skip = SimSID(3, memory_skips=[0, 1], **kw).eval()
    assert len(skip.skip_proj) == 2 and len(plain.skip_proj) == 0
    missing = set(skip.state_dict()) - set(plain.state_dict())
    assert missing and all(k.startswith("skip_proj.") for k in missing)
    skip.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        a, b = plain(x), skip(x)
        # zero skip projections give back the skip-free network exactly
        for p in skip.skip_proj.parameters():
            p.zero_()
        c = skip(x)
    assert b.reconstruction.shape == x.shape and torch.isfinite(b.anomaly_map).all()
    assert not torch.allclose(a.reconstruction, b.reconstruction)
    assert torch.allclose(a.reconstruction, c.reconstruction, atol=1e-5)
    out = skip.train()(x)  # training runs and every decoder feature keeps its shape
    assert [f.shape for f in out.student_features] == [f.shape for f in out.teacher_features]
    out.student_recon.mean().backward()
    assert all(p.grad is not None for p in skip.skip_proj.parameters())


def test_a_single_shallow_skip():
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(1, 1, 1), memory_skips=[1], **SMALL)
    assert net.memory_skips == (1,) and net.skip_proj[0].in_channels == 8 and net.skip_proj[0].out_channels == 16
    x = torch.rand(1, 1, 32, 32, 32)
    assert net.eval()(x).reconstruction.shape == x.shape


@pytest.mark.parametrize("value", [[-1], [2], [0, 0], [True], [1.0], 1, "0"])
def test_memory_skips_refused(value):
    with pytest.raises(ValueError, match="memory_skips"):
        SimSID(3, roi_size=(32, 32, 32), decoder_memory_levels=2, memory_skips=value, **SMALL)


# ------------------------------------------------------------------------------------- detail-only skips
def test_skip_highpass_passes_only_the_detail():
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), region_grid=(1, 1, 1), memory_skips=[0, 1], skip_highpass=3, **SMALL)
    f = torch.randn(1, 4, 6, 6, 6)
    offset = torch.randn(1, 4, 1, 1, 1)
    detail = net._skip_detail(f)
    # a per-channel offset (the level of a homogeneous region) does not pass; the detail is the rest
    assert torch.allclose(net._skip_detail(f + offset), detail, atol=1e-5)
    assert net._skip_detail(offset.expand(1, 4, 6, 6, 6)).abs().max() < 1e-6
    centre = f[:, :, 1:4, 1:4, 1:4].mean((2, 3, 4))  # the 3x3x3 mean around voxel (2, 2, 2)
    assert torch.allclose(detail[:, :, 2, 2, 2], f[:, :, 2, 2, 2] - centre, atol=1e-5)
    net.skip_highpass = 0
    assert torch.equal(net._skip_detail(f), f)


def test_skip_highpass_feeds_the_skip_projections():
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), region_grid=(1, 1, 1), memory_skips=[0, 1], skip_highpass=3, **SMALL)
    net.eval()
    seen = []
    for proj in net.skip_proj:
        proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        net(x)
        feats = net.encode(x, return_features=True)
    expected = [net._skip_detail(feats[len(feats) - 2 - i]) for i in net.memory_skips]
    assert len(seen) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen, expected))


@pytest.mark.parametrize("value", [1, 2, 4, -3, True, 3.0, "5"])
def test_skip_highpass_refused(value):
    with pytest.raises(ValueError, match="skip_highpass"):
        SimSID(3, roi_size=(32, 32, 32), memory_skips=[0], skip_highpass=value, **SMALL)


def test_skip_highpass_needs_skips():
    with pytest.raises(ValueError, match="memory_skips"):
        SimSID(3, roi_size=(32, 32, 32), skip_highpass=3, **SMALL)
