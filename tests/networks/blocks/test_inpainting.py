from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.blocks.inpainting import InpaintingBlock, binary_position_code
from monai_simsid.networks.blocks.memory import blocks_to_tokens

torch.set_num_threads(1)


@pytest.mark.parametrize("dims,hierarchical", [(2, False), (3, False), (3, True)])
def test_shapes(dims, hierarchical):
    block = InpaintingBlock(dims, 12, (2,) * dims, embed_dim=16, num_heads=4, num_slots=10, num_regions=3,
                            hierarchical=hierarchical)
    x = torch.randn(2, 12, *(4,) * dims)
    y = block(x, torch.tensor([0, 2]))
    assert y.shape == x.shape
    assert block.nb_index.shape == (2**dims, 3**dims - 1)


@pytest.mark.parametrize("dims,hierarchical", [(2, False), (3, False), (2, True), (3, True)])
def test_centre_block_not_seen(dims, hierarchical):
    torch.manual_seed(0)
    grid = (3,) * dims
    block = InpaintingBlock(dims, 8, grid, embed_dim=16, num_heads=2, num_slots=12, top_k=3, mask_ratio=1.0,
                            hierarchical=hierarchical).train()
    x = torch.randn(1, 8, *(6,) * dims)
    x2 = x.clone()
    centre = tuple(slice(2, 4) for _ in range(dims))
    x2[(0, slice(None)) + centre] = 5 * torch.randn(8, *(2,) * dims)
    t1, t2 = blocks_to_tokens(block(x), grid), blocks_to_tokens(block(x2), grid)
    c = (3**dims) // 2
    assert torch.allclose(t1[:, c], t2[:, c], atol=1e-5)
    assert not torch.allclose(t1, t2, atol=1e-3)  # the neighbours do see the centre


def test_mask_ratio_zero_keeps_input_in_training():
    block = InpaintingBlock(2, 4, (2, 2), embed_dim=8, num_heads=2, num_slots=6, top_k=2, mask_ratio=0.0)
    x = torch.randn(2, 4, 4, 4)
    assert torch.equal(block.train()(x), x)
    assert not torch.allclose(block.eval()(x), x)


def test_position_code_and_validation():
    code = binary_position_code(8)
    assert code.shape == (8, 3) and len({tuple(r.tolist()) for r in code}) == 8
    with pytest.raises(ValueError):
        InpaintingBlock(3, 8, (1, 1, 1))
    with pytest.raises(ValueError):
        InpaintingBlock(3, 8, (2, 2, 2), embed_dim=10, num_heads=4)
    with pytest.raises(ValueError):
        InpaintingBlock(2, 8, (2, 2), mask_ratio=1.5)
    with pytest.raises(ValueError):
        InpaintingBlock(2, 8, (2, 2), embed_dim=8, num_heads=2)(torch.randn(1, 8, 3, 4))
