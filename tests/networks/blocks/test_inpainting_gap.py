"""In-painting with a neighbour gap: a block's output ignores its own and its adjacent blocks' inputs."""

from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.blocks.inpainting import InpaintingBlock
from monai_simsid.networks.blocks.memory import block_neighbourhood
from monai_simsid.networks.nets.simsid import SimSID


def test_ring_neighbourhood():
    index, valid = block_neighbourhood((4, 4, 4), gap=1)
    assert index.shape == (64, 5**3 - 3**3)
    i = 1 * 16 + 1 * 4 + 1  # block (1, 1, 1): its ring at distance 2 lies at coordinate 3 along some axis
    nbs = {(int(k) // 16, int(k) // 4 % 4, int(k) % 4) for k in index[i][valid[i]]}
    assert nbs and all(max(abs(a - 1) for a in c) == 2 for c in nbs)
    assert len(nbs) == 4**3 - 3**3 - 0  # the blocks of the 4^3 grid outside the 3^3 cube around (1, 1, 1)
    i0, v0 = block_neighbourhood((2, 2), gap=0)
    assert i0.shape == (4, 8) and int(v0.sum()) == 4 * 3  # unchanged default: the adjacent blocks
    with pytest.raises(ValueError):
        block_neighbourhood((4, 4), gap=-1)


def test_block_output_does_not_depend_on_adjacent_blocks():
    torch.manual_seed(0)
    blk = InpaintingBlock(3, 8, (4, 4, 4), embed_dim=16, num_heads=4, num_slots=8, top_k=3, neighbour_gap=1).eval()
    x = torch.randn(1, 8, 8, 8, 8, requires_grad=True)  # blocks of 2^3 voxels
    out = blk(x)
    out[0, :, 2:4, 2:4, 2:4].sum().backward()  # block (1, 1, 1)
    g = x.grad[0].abs().sum(0)
    assert float(g[:6, :6, :6].sum()) == 0.0  # itself and its 26 adjacent blocks: no influence
    assert float(g[6:].sum()) > 0  # the ring at distance 2 does influence it
    with pytest.raises(ValueError, match="without a neighbour"):
        InpaintingBlock(3, 8, (3, 3, 3), embed_dim=16, num_heads=4, neighbour_gap=1)  # the centre block has none


def test_simsid_with_gap_runs_and_keeps_the_default_state_dict():
    kw = dict(roi_size=(64, 64, 64), channels=(4, 8, 8, 8), embed_dim=16, num_heads=4, num_slots=8, top_k=2,
              region_grid=(1, 1, 1), with_discriminator=False, up_mode="shuffle", out_kernel_size=1)
    net = SimSID(3, block_grid=(4, 4, 4), inpaint_gap=1, **kw).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64, 64))
    assert out.anomaly_map.shape == (2, 1, 64, 64, 64) and torch.isfinite(out.anomaly_map).all()
    assert net.inpainting.rel_embed.shape[0] == 5**3 - 3**3
    assert SimSID(3, block_grid=(2, 2, 2), **kw).inpainting.rel_embed.shape[0] == 26
