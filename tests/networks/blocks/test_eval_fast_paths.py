"""Eval-mode fast paths (sparse memory read, folded decoder chain, channels-last encoder) vs the reference paths."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import monai_simsid.networks.blocks.convolutions as convolutions
from monai_simsid.networks.blocks.convolutions import ConvDecoder, ConvEncoder
from monai_simsid.networks.blocks.memory import MemoryBlock, SpaceAwareMemory, _grouped_topk
from monai_simsid.networks.nets import SimSID

torch.set_num_threads(1)


def _randomise_norms(net: nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)


@pytest.mark.parametrize("similarity,shrink_thres", [("cosine", 0.0), ("dot", 0.0), ("cosine", 0.1)])
@pytest.mark.parametrize("query_dims", [2, 3])
def test_sparse_read_matches_dense_read(similarity, shrink_thres, query_dims):
    torch.manual_seed(0)
    mem = SpaceAwareMemory(6, num_slots=40, feature_dim=16, top_k=5, shrink_thres=shrink_thres, similarity=similarity)
    mem.eval()
    q = torch.randn(8, 16) if query_dims == 2 else torch.randn(8, 33, 16)
    keys = torch.randint(0, 6, (8,))
    with torch.no_grad():
        dense, att = mem(q, keys)
        sparse, none = mem(q, keys, return_attention=False)
    assert none is None and att.shape[-1] == 40
    assert sparse.shape == dense.shape == q.shape
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_sparse_read_keeps_gradients_and_training_path():
    torch.manual_seed(0)
    mem = SpaceAwareMemory(2, num_slots=20, feature_dim=8, top_k=3).eval()
    q = torch.randn(2, 5, 8, requires_grad=True)
    read, _ = mem(q, torch.tensor([0, 1]), return_attention=False)
    read.sum().backward()
    assert q.grad is not None and mem.memory.grad is not None
    mem.train()  # training: the dense path (also without the attention in the result)
    with torch.no_grad():
        a, att = mem(q, torch.tensor([0, 1]))
        b, none = mem(q, torch.tensor([0, 1]), return_attention=False)
    assert none is None and att is not None and torch.equal(a, b)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_memory_block_fast_read(spatial_dims):
    torch.manual_seed(0)
    blk = MemoryBlock(spatial_dims, 8, (2,) * spatial_dims, num_regions=3, num_slots=30, top_k=4).eval()
    x = torch.randn(2, 8, *(6,) * spatial_dims)
    region = torch.tensor([2, 0])
    with torch.no_grad():
        ref, att = blk(x, region)
        fast, none = blk(x, region, return_attention=False)
    assert none is None and att.shape == (2, 2**spatial_dims, 3**spatial_dims, 30)
    assert torch.allclose(fast, ref, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", None])
def test_folded_decoder_chain_matches_level_by_level(spatial_dims, norm, monkeypatch):
    """Several trailing 1x1-shuffle levels run together (chunked, shuffles at the end) == the plain decoder."""
    monkeypatch.setattr(convolutions, "_TAIL_CHUNK", 64)  # several chunks
    torch.manual_seed(0)
    dec = ConvDecoder(spatial_dims, (16, 8, 4), 2, norm=norm, up_mode="shuffle", overlapping_up=False,
                      out_kernel_size=1)
    _randomise_norms(dec)
    dec.eval()
    x = torch.randn(2, 16, *[3, 5, 4][:spatial_dims])
    assert len(dec._folded_chain(x, {})) == 3 and len(dec._folded_chain(x, {1: lambda t: t})) == 1
    with torch.no_grad():
        ref, _ = dec(x)  # return_features: no fusion
        fast, _ = dec(x, return_features=False)
        hooked, _ = dec(x, hooks={0: lambda t: 2 * t}, return_features=False)
        hooked_ref = dec.final(dec.levels[2](dec.levels[1](2 * dec.levels[0](x))))
    assert fast.shape == ref.shape == (2, 2, *[24, 40, 32][:spatial_dims])
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(hooked, hooked_ref, atol=1e-5)


@pytest.mark.parametrize(
    "size,strides,out_channels,rows,grid",
    [
        ((3, 5, 4), (2, 2), 2, 1, None),
        ((3, 5, 4), (2, 2), 2, 2, None),
        ((5, 3), (2, 3), 3, 2, None),
        ((4,), (2, 2, 2), 1, 3, None),
        ((2, 2, 2), (2,), 3, 5, None),
        ((4, 6, 2), (2, 2), 2, 1, (2, 3, 1)),
        ((4, 6), (2, 3), 3, 3, (2, 2)),
    ],
)
def test_shuffle_index_equals_pixelshuffles(size, strides, out_channels, rows, grid):
    """The cached gather of the folded tail == ``pixelshuffle`` by each stride, from the chunk-major buffer (with a
    block ``grid``: the loop's voxels in block-token order)."""
    from monai.networks.utils import pixelshuffle

    from monai_simsid.networks.blocks.memory import blocks_to_tokens

    d = len(size)
    expand = 1
    for s in strides:
        expand *= s**d
    y = torch.randn(out_channels, expand, *size)  # channels (out, last .. first sub-voxel)
    ref = y.reshape(1, out_channels * expand, *size)
    for s in strides:
        ref = pixelshuffle(ref, d, s)
    # the buffer as the chunk loop writes it: chunks of `rows` slabs, each (out, sub-voxel, voxel of the chunk)
    if grid is None:
        buf = torch.cat([y[:, :, z : z + rows].reshape(-1) for z in range(0, size[0], rows)])
    else:  # voxels in token order, chunks of rows * prod(size[1:]) consecutive voxels
        tok = blocks_to_tokens(y, grid).reshape(out_channels, -1, expand).transpose(1, 2)  # (out, sub, token)
        chunk = rows * (y[0, 0, 0].numel())
        buf = torch.cat([tok[:, :, v : v + chunk].reshape(-1) for v in range(0, tok.shape[-1], chunk)])
    index = convolutions._shuffle_index(size, strides, out_channels, rows, grid)
    assert torch.equal(buf[index].reshape(ref.shape), ref)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", None])
def test_decoder_forward_tokens_matches_block_layout(spatial_dims, norm):
    """Decoding block tokens (levels as matmuls + in-block permutes, token hooks, token-order gather) == forward."""
    from monai_simsid.networks.blocks.memory import blocks_to_tokens, tokens_to_blocks

    torch.manual_seed(0)
    dec = ConvDecoder(spatial_dims, (16, 8, 4), out_channels=2, norm=norm, up_mode="shuffle", overlapping_up=False,
                      out_kernel_size=1)
    _randomise_norms(dec)
    dec.eval()
    grid, block = (2, 3, 1)[:spatial_dims], (2, 1, 3)[:spatial_dims]
    x = torch.randn(2, 16, *[g * b for g, b in zip(grid, block)])
    scale = torch.linspace(0.5, 2.0, 8)  # a hook that is not the same for every position and channel
    size1 = [4 * b for b in block]
    with torch.no_grad():
        ref, _ = dec(x, hooks={1: lambda t: tokens_to_blocks(blocks_to_tokens(t, grid) * scale, grid, size1)})
        fast = dec.forward_tokens(blocks_to_tokens(x, grid), grid, block, hooks={1: lambda t: t * scale})
        no_hook = dec.forward_tokens(blocks_to_tokens(x, grid), grid, block)
        no_hook_ref, _ = dec(x)
    assert dec.supports_tokens([1], "cpu") and not dec.supports_tokens([2], "cpu")
    assert fast.shape == ref.shape == (2, 2, *[8 * g * b for g, b in zip(grid, block)])
    assert torch.allclose(fast, ref, atol=1e-5) and torch.allclose(no_hook, no_hook_ref, atol=1e-5)
    with torch.no_grad():  # only some output channels, in the order asked for
        for keep in ([1], [1, 0]):
            part = dec.forward_tokens(blocks_to_tokens(x, grid), grid, block, hooks={1: lambda t: t * scale}, out_channels=keep)
            assert part.shape[1] == len(keep) and torch.allclose(part, ref[:, keep], atol=1e-5)
    deconv = ConvDecoder(spatial_dims, (16, 8, 4), out_channels=2, up_mode="deconv").eval()
    assert not deconv.supports_tokens([], "cpu")
    with pytest.raises(ValueError, match="cannot decode block tokens"):
        deconv.forward_tokens(blocks_to_tokens(x, grid), grid, block)


@pytest.mark.parametrize("spatial_dims,convs_per_level", [(2, 2), (3, 2), (3, 1)])
def test_channels_last_eval_encoder(spatial_dims, convs_per_level):
    torch.manual_seed(0)
    enc = ConvEncoder(spatial_dims, 3, (4, 8), convs_per_level=convs_per_level)
    assert sum(isinstance(m, nn.Conv3d if spatial_dims == 3 else nn.Conv2d) for m in enc.modules()) == 2 * convs_per_level
    _randomise_norms(enc)
    enc.eval()
    x = torch.randn(2, 3, *(16,) * spatial_dims)
    with torch.no_grad():
        out = enc(x)
        feats = enc(x, return_features=True)
        ref = x
        for level in enc.levels:  # the reference: the levels in the default memory format
            ref = level(ref)
    assert out.is_contiguous() and all(f.is_contiguous() for f in feats)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(feats[-1], ref, atol=1e-5)


def _reference_simsid_eval(net: SimSID, x: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SimSID's eval pass through the reference paths: default-format encoder, dense memory reads, plain decoder."""
    z = x
    for level in net.encoder.levels:
        z = level(z)
    inpainted = net.inpainting(z, region)
    hooks = {i: (lambda t, m=m: m(t, region)[0]) for i, m in enumerate(net.decoder_memory)}  # dense reads
    recon, _ = net.student_decoder(inpainted, hooks, return_features=True)  # no fusion
    return recon, (x - recon).abs().mean(1, keepdim=True)


@pytest.mark.parametrize("spatial_dims,encoder_convs", [(2, 2), (3, 2), (3, 1)])
def test_simsid_eval_fast_paths_match_reference(spatial_dims, encoder_convs):
    torch.manual_seed(0)
    roi = (32,) * spatial_dims
    net = SimSID(
        spatial_dims, in_channels=3, roi_size=roi, block_grid=(2,) * spatial_dims, region_grid=(3,) * spatial_dims,
        channels=(4, 8, 16), embed_dim=16, num_heads=4, num_slots=20, top_k=5, decoder_memory_levels=2,
        with_discriminator=False, up_mode="shuffle", overlapping_up=False, out_kernel_size=1,
        encoder_convs=encoder_convs,
    )
    _randomise_norms(net)
    net.eval()
    state = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, *roi)
    region = torch.tensor([0, 3**spatial_dims - 1])
    with torch.no_grad():
        assert net._can_decode_tokens(net.encoder(x))  # the eval pass decodes in block tokens
        out = net(x, region)
        recon, amap = _reference_simsid_eval(net, x, region)
    assert torch.allclose(out.reconstruction, recon, atol=1e-5)
    assert torch.allclose(out.anomaly_map, amap, atol=1e-5)
    assert torch.allclose(out.score, amap.flatten(1).mean(1), atol=1e-5)
    net.load_state_dict(state)  # the state dict is unchanged (checkpoints load)


@pytest.mark.parametrize("shape,k", [((3, 7, 200), 5), ((8, 64, 200), 5), ((4, 50, 42), 3), ((4, 40), 5), ((2, 5, 60), 3), ((6, 200), 1), ((5, 30), 4), ((3, 12), 5)])
def test_grouped_topk_equals_topk(shape, k):
    torch.manual_seed(0)
    logits = torch.randn(*shape)
    logits[0] *= 1e-3  # clustered values (a trained memory's similarities are not spread like random ones)
    vals, idx = _grouped_topk(logits, k)
    ref_vals, ref_idx = logits.topk(k, dim=-1)
    assert torch.equal(vals, ref_vals) and torch.equal(idx, ref_idx)


def _tie_cases() -> list[torch.Tensor]:
    """Rows of 40 slots (k = 5: 8 strided groups, slot j in group j % 8) where the fast selection could pick
    another of equal values than torch.topk."""
    base = torch.linspace(-1.0, 0.0, 40)[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    cases = []
    row = base.clone()  # the 5th value equals a slot in a group left out of the candidates
    row[[0, 1, 2, 3]] = torch.tensor([9.0, 8.0, 7.0, 6.0])
    row[[12, 13]] = 5.0
    cases.append(row)
    row = base.clone()  # the 5th value equals another candidate
    row[[0, 1, 2, 3, 4]] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])
    row[8] = 5.0
    cases.append(row)
    row = base.clone()  # equal values inside the top 5
    row[[0, 1, 2, 3, 4]] = torch.tensor([9.0, 9.0, 7.0, 9.0, 5.0])
    cases.append(row)
    cases.append(torch.zeros(40))  # a zero query: every cosine similarity is 0
    row = base.clone()
    row[17] = float("nan")
    cases.append(row)
    return cases


@pytest.mark.parametrize("case", range(5))
def test_grouped_topk_falls_back_on_ties(case, monkeypatch):
    import monai_simsid.networks.blocks.memory as memory

    logits = torch.stack([_tie_cases()[case], torch.randn(40)])
    calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: calls.append(t.shape[-1]) or real_topk(t, *a, **kw))
    vals, idx = memory._grouped_topk(logits, 5)
    assert calls[-1] == 40, "ties must be resolved by torch.topk over all the slots"
    ref_vals, ref_idx = real_topk(logits, 5, dim=-1)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(vals[0].nan_to_num(), ref_vals[0].nan_to_num())


def test_grouped_topk_takes_the_fast_path_without_ties(monkeypatch):
    import monai_simsid.networks.blocks.memory as memory

    torch.manual_seed(0)
    logits = torch.randn(16, 200)
    calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, *a, **kw: calls.append(t.shape[-1]) or real_topk(t, *a, **kw))
    vals, idx = memory._grouped_topk(logits, 5)
    assert calls == [40, 25]  # the group maxima, then the candidates: never all 200 slots
    ref_vals, ref_idx = real_topk(logits, 5, dim=-1)
    assert torch.equal(vals, ref_vals) and torch.equal(idx, ref_idx)


@pytest.mark.parametrize("decoder_memory_levels,block_grid,hierarchical", [(0, (2, 2, 2), False), (1, (2, 1, 3), True)])
def test_simsid_token_path_matches_block_layout(decoder_memory_levels, block_grid, hierarchical, monkeypatch):
    """The eval pass in block tokens == the same network with the token path switched off (other memory depths,
    a grid that is not a cube, the hierarchical in-painting memory, the in-painting feature term)."""
    torch.manual_seed(0)
    roi = tuple(16 * g for g in block_grid)
    net = SimSID(
        3, in_channels=2, roi_size=roi, block_grid=block_grid, region_grid=(2, 2, 2), channels=(4, 8, 16), embed_dim=16,
        num_heads=4, num_slots=20, top_k=5, decoder_memory_levels=decoder_memory_levels,
        hierarchical_memory=hierarchical, with_discriminator=False, up_mode="shuffle", overlapping_up=False,
        out_kernel_size=1, map_feature_weight=0.5,
    )
    _randomise_norms(net)
    net.eval()
    x, region = torch.randn(2, 2, *roi), torch.tensor([0, 7])
    with torch.no_grad():
        assert net._can_decode_tokens(net.encoder(x))
        fast = net(x, region)
        monkeypatch.setattr(SimSID, "_can_decode_tokens", lambda self, z: False)
        ref = net(x, region)
    assert torch.allclose(fast.reconstruction, ref.reconstruction, atol=1e-5)
    assert torch.allclose(fast.anomaly_map, ref.anomaly_map, atol=1e-5)


@pytest.mark.parametrize("up_mode", ["shuffle", "deconv"])  # the block-token path and the plain path
def test_map_only_decodes_only_the_map_channels(up_mode):
    torch.manual_seed(0)
    kw = dict(up_mode="shuffle", overlapping_up=False, out_kernel_size=1) if up_mode == "shuffle" else dict(up_mode="deconv")
    net = SimSID(
        3, in_channels=3, roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(3, 3, 3), channels=(4, 8, 16),
        embed_dim=16, num_heads=4, num_slots=20, top_k=5, disc_channels=(4, 8, 8, 8, 8), map_channels=[2, 0], **kw
    )
    _randomise_norms(net)
    net.eval()
    x = torch.rand(2, 3, 32, 32, 32)
    region = torch.tensor([3, 17])
    with torch.no_grad():
        full = net(x, region)
        net.map_only = True
        with_window_score = net(x, region)  # the discriminator scores the full reconstruction: nothing is skipped
        net.window_score = False
        only = net(x, region)
        net.map_mode = "distill"
        distill_only = net(x, region)
        net.map_only = False
        distill_full = net(x, region)
    assert full.reconstruction.shape[1] == 3 and with_window_score.reconstruction.shape[1] == 3
    assert only.reconstruction.shape[1] == 2
    assert torch.allclose(only.reconstruction, full.reconstruction[:, [2, 0]], atol=1e-5)
    assert torch.allclose(only.anomaly_map, full.anomaly_map, atol=1e-6)
    assert torch.allclose(distill_only.anomaly_map, distill_full.anomaly_map, atol=1e-6)
    assert distill_only.reconstruction.shape[1] == 2 and distill_full.reconstruction.shape[1] == 3
    net.map_mode = "recon"
    net.train()
    assert net(x, region).student_recon.shape[1] == 3  # training always reconstructs every channel
