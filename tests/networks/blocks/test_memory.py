from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.blocks.memory import (
    HierarchicalMemory,
    MemoryBlock,
    SpaceAwareMemory,
    block_neighbourhood,
    blocks_to_tokens,
    tokens_to_blocks,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_top_k_sparse_and_normalised(similarity):
    torch.manual_seed(0)
    mem = SpaceAwareMemory(num_keys=4, num_slots=20, feature_dim=8, top_k=5, similarity=similarity)
    q = torch.randn(6, 8)
    read, att = mem(q, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert read.shape == (6, 8) and att.shape == (6, 20)
    assert torch.equal((att > 0).sum(-1), torch.full((6,), 5))
    assert torch.allclose(att.sum(-1), torch.ones(6), atol=1e-6)
    # grouped queries (N, L, C)
    read, att = mem(torch.randn(3, 7, 8), torch.tensor([0, 2, 3]))
    assert read.shape == (3, 7, 8) and att.shape == (3, 7, 20)
    assert torch.equal((att > 0).sum(-1), torch.full((3, 7), 5))


def test_gradient_only_to_addressed_key():
    torch.manual_seed(0)
    mem = SpaceAwareMemory(num_keys=3, num_slots=10, feature_dim=4, top_k=2)
    read, _ = mem(torch.randn(1, 4), torch.tensor([1]))
    read.sum().backward()
    g = mem.memory.grad
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    assert int((g[1].abs().sum(-1) > 0).sum()) == 2  # exactly the top-2 slots of key 1


def test_shrink_threshold_and_validation():
    mem = SpaceAwareMemory(2, num_slots=10, feature_dim=4, top_k=5, shrink_thres=0.15)
    _, att = mem(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    assert ((att > 0).sum(-1) <= 5).all() and torch.allclose(att.sum(-1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError):
        SpaceAwareMemory(2, num_slots=4, top_k=5)
    with pytest.raises(ValueError):
        SpaceAwareMemory(2, similarity="l2")


@pytest.mark.parametrize("shape,grid", [((2, 3, 4, 6), (2, 3)), ((1, 2, 4, 4, 6), (2, 2, 3))])
def test_tokens_roundtrip(shape, grid):
    x = torch.randn(shape)
    t = blocks_to_tokens(x, grid)
    size = tuple(s // g for s, g in zip(shape[2:], grid))
    assert t.shape == (shape[0], int(torch.tensor(grid).prod()), int(torch.tensor(size).prod()), shape[1])
    assert torch.equal(tokens_to_blocks(t, grid, size), x)
    # token p holds block p: the first block's voxels
    assert torch.equal(t[0, 0, :, 0].sort().values, x[0, 0][tuple(slice(0, s) for s in size)].flatten().sort().values)


def test_neighbourhood():
    index, valid = block_neighbourhood((2, 2))
    assert index.shape == (4, 8) and torch.equal(valid.sum(-1), torch.full((4,), 3))
    index, valid = block_neighbourhood((2, 2, 2))
    assert index.shape == (8, 26) and torch.equal(valid.sum(-1), torch.full((8,), 7))
    index, valid = block_neighbourhood((3, 3))
    assert valid[4].all() and sorted(index[4].tolist()) == [0, 1, 2, 3, 5, 6, 7, 8]


@pytest.mark.parametrize("dims", [2, 3])
def test_memory_block_positions_and_regions(dims):
    torch.manual_seed(0)
    block = MemoryBlock(dims, feature_dim=4, block_grid=(2,) * dims, num_regions=2, num_slots=8, top_k=2)
    x = torch.ones(1, 4, *(4,) * dims)  # identical content everywhere
    read, att = block(x)
    assert read.shape == x.shape and att.shape == (1, 2**dims, 2**dims, 8)
    t = blocks_to_tokens(read, (2,) * dims)
    assert not torch.allclose(t[0, 0], t[0, 1])  # different block positions -> different memories
    read1, _ = block(x, torch.tensor([1]))
    assert not torch.allclose(read, read1)  # different regions -> different memories


def test_hierarchical_memory_context_ignores_own_block():
    torch.manual_seed(0)
    index, valid = block_neighbourhood((2, 2, 2))
    mem = HierarchicalMemory(num_blocks=8, num_regions=2, feature_dim=8, num_slots=10, top_k=3)
    tokens = torch.randn(2, 8, 3, 8)
    region = torch.tensor([0, 1])
    read, ctx, att = mem(tokens, region, index, valid)
    assert read.shape == ctx.shape == tokens.shape and att.shape == (2, 8, 3, 10)
    tokens2 = tokens.clone()
    tokens2[:, 5] = 10 * torch.randn(2, 3, 8)
    _, ctx2, _ = mem(tokens2, region, index, valid)
    assert torch.allclose(ctx[:, 5], ctx2[:, 5], atol=1e-6)
    assert not torch.allclose(ctx[:, 4], ctx2[:, 4])
