"""SimSID feature in-painting block (dimension-agnostic)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from monai_simsid.networks.blocks.memory import (
    HierarchicalMemory,
    SpaceAwareMemory,
    _block_size,
    block_neighbourhood,
    blocks_to_tokens,
    gather_neighbours,
    region_block_keys,
    tokens_to_blocks,
)

__all__ = ["InpaintingBlock", "binary_position_code"]


def binary_position_code(num_positions: int) -> torch.Tensor:
    """``(num_positions, max(1, ceil(log2(num_positions))))`` binary code of each index, in {-1, +1}."""
    nbits = max(1, math.ceil(math.log2(num_positions)))
    bits = (torch.arange(num_positions)[:, None] >> torch.arange(nbits)[None]) & 1
    return bits.float() * 2 - 1


class InpaintingBlock(nn.Module):
    """Memory-based feature in-painting over a grid of blocks.

    The input map ``(B, C, *S)`` is split into ``block_grid`` blocks. Tokens are (block, intra-block voxel
    offset) pairs. For every token:

    1. a 1x1 conv maps ``C -> embed_dim``;
    2. every voxel reads the memory of its own ``(region, block)`` key (:class:`SpaceAwareMemory`, or
       :class:`HierarchicalMemory` if ``hierarchical``);
    3. a query that does not depend on the block's own content (learned per-block token + mean of the
       neighbours' reads (or the hierarchical context) + embedded binary code of the block index) attends,
       with multi-head attention, to the memory reads at the same offset in the ``3**d - 1`` neighbouring
       blocks (outside-grid neighbours are masked out), each tagged with a learned relative-offset embedding;
    4. a feed-forward layer, then a 1x1 conv ``embed_dim -> C``.

    In training, the output is ``m * inpainted + (1 - m) * x`` with ``m ~ Bernoulli(mask_ratio)`` per
    block; in eval mode it is the in-painted map. The in-painted output of a block never depends on that
    block's own input.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels ``C`` of the input map.
        block_grid: blocks per axis (at least 2 blocks in total).
        embed_dim: token dimension.
        num_heads: attention heads (must divide ``embed_dim``).
        num_slots: memory slots per key.
        top_k: memory slots kept per query.
        num_regions: number of body regions (memory keys = ``region * num_blocks + block``).
        mask_ratio: probability that a block is replaced by its in-painted version during training.
        hierarchical: use :class:`HierarchicalMemory` for the read and the query context.
        mlp_ratio: hidden size of the feed-forward layer relative to ``embed_dim``.
        shrink_thres, similarity, temperature: see :class:`SpaceAwareMemory`.
        neighbour_gap: 0 in-paints a block from its adjacent blocks; ``g > 0`` from the ring of blocks at Chebyshev
            distance ``g + 1`` only (see :func:`block_neighbourhood`): a lesion as large as a block and its adjacent
            blocks then cannot leak into its own reconstruction through the neighbours.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        block_grid: Sequence[int],
        embed_dim: int = 128,
        num_heads: int = 8,
        num_slots: int = 200,
        top_k: int = 5,
        num_regions: int = 1,
        mask_ratio: float = 1.0,
        hierarchical: bool = False,
        mlp_ratio: float = 2.0,
        shrink_thres: float = 0.0,
        similarity: str = "cosine",
        temperature: float = 0.1,
        neighbour_gap: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if len(block_grid) != spatial_dims or any(int(g) < 1 for g in block_grid):
            raise ValueError(f"block_grid must have {spatial_dims} positive entries, got {block_grid}.")
        if math.prod(block_grid) < 2:
            raise ValueError(f"block_grid must contain at least 2 blocks, got {block_grid}.")
        if in_channels < 1 or embed_dim < 1:
            raise ValueError(f"in_channels and embed_dim must be positive, got {in_channels}, {embed_dim}.")
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}.")
        if num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {num_regions}.")
        self.spatial_dims = spatial_dims
        self.block_grid = tuple(int(g) for g in block_grid)
        self.num_blocks = math.prod(self.block_grid)
        self.num_regions = num_regions
        self.mask_ratio = mask_ratio
        self.hierarchical = hierarchical
        conv = Conv[Conv.CONV, spatial_dims]
        self.proj_in = conv(in_channels, embed_dim, kernel_size=1)
        self.proj_out = conv(embed_dim, in_channels, kernel_size=1)
        mem_args = dict(num_slots=num_slots, feature_dim=embed_dim, top_k=top_k, shrink_thres=shrink_thres,
                        similarity=similarity, temperature=temperature)
        if hierarchical:
            self.memory = HierarchicalMemory(self.num_blocks, num_regions, **mem_args)
        else:
            self.memory = SpaceAwareMemory(num_regions * self.num_blocks, **mem_args)
        if neighbour_gap < 0:
            raise ValueError(f"neighbour_gap must be >= 0, got {neighbour_gap}.")
        self.neighbour_gap = int(neighbour_gap)
        index, valid = block_neighbourhood(self.block_grid, self.neighbour_gap)
        if not bool(valid.any(-1).all()):
            raise ValueError(
                f"neighbour_gap={neighbour_gap} leaves some block of block_grid {self.block_grid} without a neighbour "
                f"(every block needs one at Chebyshev distance {neighbour_gap + 1}); use a larger grid or a smaller gap."
            )
        self.register_buffer("nb_index", index, persistent=False)
        self.register_buffer("nb_valid", valid, persistent=False)
        self.register_buffer("pos_code", binary_position_code(self.num_blocks), persistent=False)
        num_nb = index.shape[1]
        self.query_token = nn.Parameter(torch.randn(self.num_blocks, embed_dim) * 0.02)
        self.pos_embed = nn.Linear(self.pos_code.shape[1], embed_dim)
        self.rel_embed = nn.Parameter(torch.randn(num_nb, embed_dim) * 0.02)
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_kv = nn.LayerNorm(embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        hidden = max(1, int(embed_dim * mlp_ratio))
        self.norm_ff = nn.LayerNorm(embed_dim)
        self.ff = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    def inpaint(self, x: torch.Tensor, region: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fully in-painted map (no masking) and the block-level memory attention ``(B, P, V, num_slots)``."""
        h, att = self.inpaint_tokens(x, region)
        size = _block_size(x.shape[2:], self.block_grid)
        return self.proj_out(tokens_to_blocks(h, self.block_grid, size)), att

    def inpaint_tokens(
        self, x: torch.Tensor, region: torch.Tensor | None = None, return_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`inpaint` before its output projection: block tokens ``(B, P, V, embed_dim)`` (see
        :func:`~monai_simsid.networks.blocks.memory.blocks_to_tokens`) and the attention. ``proj_out`` (a 1x1 conv)
        maps them to the in-painted map, voxel by voxel. ``return_attention=False`` gives None for the attention
        and lets an eval-mode memory read only its top-k slots (see :class:`SpaceAwareMemory`)."""
        b = x.shape[0]
        if region is None:
            region = torch.zeros(b, dtype=torch.long, device=x.device)
        region = region.reshape(-1).long()
        if region.shape[0] != b:
            raise ValueError(f"region must have one entry per sample ({b}), got shape {tuple(region.shape)}.")
        tokens = blocks_to_tokens(self.proj_in(x), self.block_grid)  # (B, P, V, E)
        _, p, v, e = tokens.shape
        index, valid = self.nb_index, self.nb_valid
        if self.hierarchical:
            read, context, att = self.memory(tokens, region, index, valid)
        else:
            keys = region_block_keys(region, p).reshape(-1)
            read, att = self.memory(tokens.reshape(b * p, v, e), keys, return_attention)
            read = read.reshape(b, p, v, e)
            att = None if att is None else att.reshape(b, p, v, -1)
            count = valid.sum(-1).clamp_min(1).to(read.dtype)
            context = gather_neighbours(read, index, valid).sum(2) / count[:, None, None]
        query = context + (self.query_token + self.pos_embed(self.pos_code))[None, :, None]  # (B, P, V, E)
        nb = gather_neighbours(read, index, valid) + self.rel_embed[None, None, :, None]  # (B, P, Nn, V, E)
        nn_ = nb.shape[2]
        kv = self.norm_kv(nb.permute(0, 1, 3, 2, 4).reshape(b * p * v, nn_, e))
        q = query.reshape(b * p * v, 1, e)
        pad = (~valid)[None, :, None].expand(b, p, v, nn_).reshape(b * p * v, nn_)
        h = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        h = h + self.ff(self.norm_ff(h))
        return h.reshape(b, p, v, e), att

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        """In-paint ``x`` (B, C, *S); ``region`` (B,) long body-region index (default 0)."""
        out, _ = self.inpaint(x, region)
        if not self.training or self.mask_ratio >= 1.0:
            return out
        b = x.shape[0]
        m = torch.bernoulli(torch.full((b, self.num_blocks, 1, 1), self.mask_ratio, device=x.device, dtype=x.dtype))
        size = _block_size(x.shape[2:], self.block_grid)
        m = tokens_to_blocks(m.expand(b, self.num_blocks, math.prod(size), 1), self.block_grid, size)
        return m * out + (1 - m) * x
