"""Space-aware memory matrices for SimSID (dimension-agnostic).

A feature map ``(B, C, *S)`` is split into a grid of ``P = prod(block_grid)`` blocks of ``V`` voxels each
("tokens" of shape ``(B, P, V, C)``). Every block position (optionally combined with a body-region index)
owns its own memory matrix; voxels are re-expressed as sparse (top-k) combinations of that matrix's slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SpaceAwareMemory",
    "MemoryBlock",
    "HierarchicalMemory",
    "blocks_to_tokens",
    "tokens_to_blocks",
    "blocks_to_batch",
    "batch_to_blocks",
    "block_neighbourhood",
    "gather_neighbours",
    "region_block_keys",
]


def _block_size(spatial_shape: Sequence[int], grid: Sequence[int]) -> tuple[int, ...]:
    if len(spatial_shape) != len(grid):
        raise ValueError(f"spatial shape {tuple(spatial_shape)} and block grid {tuple(grid)} differ in length.")
    if any(s % g for s, g in zip(spatial_shape, grid)):
        raise ValueError(f"spatial shape {tuple(spatial_shape)} is not divisible by block grid {tuple(grid)}.")
    return tuple(s // g for s, g in zip(spatial_shape, grid))


def _grouped_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.topk(k, dim=-1)`` (sorted), the same values and indices, faster for few of many slots on CPU.

    The ``M`` slots are split into ``M / k`` strided groups (slot ``j`` in group ``j mod (M / k)``); the top ``k``
    slots lie in the ``k`` groups with the largest maxima (a group whose maximum is below the ``k``-th largest
    value holds none of them), so the top ``k`` is taken over those ``k * k`` candidates only (``k >= 2``). ``torch.topk`` on CPU
    selects per row, at a cost that grows with how the values are spread (trained memories cost about 1.5x random
    ones); the group maxima are an element-wise max of ``k`` contiguous slices. Where the result could depend on
    how ties are broken (the ``k``-th value equals the next candidate or a group maximum left out, equal values in
    the top ``k``, NaN), it falls back to ``torch.topk`` itself. Used when ``M`` is a multiple of ``k`` and holds
    more than ``k + 1`` groups, on CPU and not while tracing or scripting (the fallback is a data-dependent branch).
    """
    *lead, m = logits.shape
    groups = m // k if k > 1 and m % k == 0 else 0
    if (
        groups <= k + 1
        or logits.device.type != "cpu"
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    ):
        return logits.topk(k, dim=-1)
    by_group = logits.reshape(*lead, k, groups)  # [..., r, g] is slot r * groups + g
    gval, gidx = by_group.amax(-2).topk(k + 1, dim=-1)  # group maxima, sorted: gval[..., k] is the largest left out
    top = gidx[..., :k]
    # candidate [..., r, i] is slot r * groups + top[..., i]; with distinct values (checked below) the selection does
    # not depend on the candidates' order, and only the k winners' slot numbers are computed
    cand = by_group.gather(-1, top.unsqueeze(-2).expand(*lead, k, k)).reshape(*lead, k * k)
    vals, j = cand.topk(k + 1, dim=-1)
    distinct = (vals[..., :-1] > vals[..., 1:]).all() and (gval[..., k] < vals[..., k - 1]).all()
    if not bool(distinct):
        return logits.topk(k, dim=-1)
    j = j[..., :k]
    return vals[..., :k], top.gather(-1, j % k) + torch.div(j, k, rounding_mode="floor") * groups


def blocks_to_tokens(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Reshape ``(B, C, *S)`` into ``(B, P, V, C)`` block tokens (``P = prod(grid)``, ``V = prod(S / grid)``)."""
    b, c, *spatial = x.shape
    size = _block_size(spatial, grid)
    d = len(grid)
    shape = [b, c]
    for g, s in zip(grid, size):
        shape += [g, s]
    perm = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
    return x.reshape(shape).permute(perm).reshape(b, math.prod(grid), math.prod(size), c)


def tokens_to_blocks(t: torch.Tensor, grid: Sequence[int], block_size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`blocks_to_tokens`: ``(B, P, V, C)`` -> ``(B, C, *S)``."""
    b, _, _, c = t.shape
    d = len(grid)
    t = t.reshape(b, *grid, *block_size, c)
    perm = [0, 2 * d + 1]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return t.permute(perm).reshape(b, c, *(g * s for g, s in zip(grid, block_size)))


def blocks_to_batch(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Split ``(B, C, *S)`` into its ``grid`` blocks as a batch ``(B * P, C, *S / grid)`` (block-major per sample)."""
    size = _block_size(x.shape[2:], grid)
    return blocks_to_tokens(x, grid).transpose(2, 3).reshape(-1, x.shape[1], *size)


def batch_to_blocks(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`blocks_to_batch`: ``(B * P, C, *s)`` -> ``(B, C, *(grid * s))``."""
    bp, c, *size = x.shape
    p = math.prod(grid)
    if bp % p:
        raise ValueError(f"batch {bp} is not a multiple of the {p} blocks of grid {tuple(grid)}.")
    tokens = x.reshape(bp // p, p, c, math.prod(size)).transpose(2, 3)
    return tokens_to_blocks(tokens, grid, size)


def block_neighbourhood(grid: Sequence[int], gap: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the neighbours of every block in a block grid: the blocks at Chebyshev distance ``gap + 1``.

    ``gap=0`` gives the ``3**d - 1`` adjacent blocks. ``gap=1`` skips them and takes the next ring
    (``5**d - 3**d`` blocks), so a lesion that spans a block and its adjacent blocks cannot reach the block's
    in-painting through its neighbours.

    Returns:
        ``(index, valid)``, both ``(P, Nn)``: flat neighbour indices (0 where outside the grid) and a
        bool mask that is False for neighbours outside the grid.
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}.")
    r = gap + 1
    d = len(grid)
    g = torch.tensor(list(grid))
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, d)
    offsets = torch.stack(torch.meshgrid(*[torch.arange(-r, r + 1)] * d, indexing="ij"), -1).reshape(-1, d)
    offsets = offsets[offsets.abs().amax(-1) == r]
    nb = coords[:, None, :] + offsets[None]  # (P, Nn, d)
    valid = ((nb >= 0) & (nb < g)).all(-1)
    strides = torch.tensor([math.prod(grid[i + 1 :]) for i in range(d)])
    index = (nb.clamp_min(0) * strides).sum(-1)
    index = torch.where(valid, index, torch.zeros_like(index))
    return index.long(), valid


def gather_neighbours(t: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``t`` of shape ``(B, P, ...)`` -> ``(B, P, Nn, ...)`` neighbour values, zero outside the grid."""
    out = t[:, index]
    return out * valid.reshape(*valid.shape, *([1] * (t.dim() - 2))).to(out.dtype)


def region_block_keys(region: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Memory keys ``region * num_blocks + block_position``, shape ``(B, P)``."""
    return region.reshape(-1, 1) * num_blocks + torch.arange(num_blocks, device=region.device)


class SpaceAwareMemory(nn.Module):
    """A bank of memory matrices, one per key, with sparse top-k addressing.

    Args:
        num_keys: number of memory matrices (e.g. ``num_regions * num_blocks``).
        num_slots: slots per matrix.
        feature_dim: slot dimension ``C``.
        top_k: number of slots kept per query (hard shrinkage); the kept weights are renormalised.
        shrink_thres: optional extra MemAE-style hard shrinkage ``w -> relu(w - t)`` applied to the
            renormalised top-k weights (0 disables it); weights are renormalised again afterwards.
        similarity: ``"cosine"`` (scaled by ``1 / temperature``) or ``"dot"`` (scaled by ``1 / sqrt(C)``).
        temperature: softmax temperature for cosine similarity.
    """

    def __init__(
        self,
        num_keys: int,
        num_slots: int = 200,
        feature_dim: int = 128,
        top_k: int = 5,
        shrink_thres: float = 0.0,
        similarity: str = "cosine",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if num_keys < 1 or num_slots < 1 or feature_dim < 1:
            raise ValueError(f"num_keys, num_slots, feature_dim must be >= 1, got {num_keys}, {num_slots}, {feature_dim}.")
        if not 1 <= top_k <= num_slots:
            raise ValueError(f"top_k must be in [1, num_slots={num_slots}], got {top_k}.")
        if shrink_thres < 0 or shrink_thres >= 1:
            raise ValueError(f"shrink_thres must be in [0, 1), got {shrink_thres}.")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.num_keys, self.num_slots, self.feature_dim = num_keys, num_slots, feature_dim
        self.top_k, self.shrink_thres = top_k, shrink_thres
        self.similarity, self.temperature = similarity, temperature
        stdv = 1.0 / math.sqrt(feature_dim)
        self.memory = nn.Parameter(torch.empty(num_keys, num_slots, feature_dim).uniform_(-stdv, stdv))

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, return_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Read the memory.

        Args:
            queries: ``(N, C)`` or ``(N, L, C)`` (``L`` queries sharing the key ``keys[n]``).
            keys: ``(N,)`` long memory indices in ``[0, num_keys)``.
            return_attention: False returns ``None`` instead of the dense attention. In eval mode the read is then
                computed from the ``top_k`` selected slots only (a gather), without the ``(N, L, num_slots)``
                attention tensor and its scatter and dense matmul: the same values up to float rounding.

        Returns:
            ``(read, attention)``: ``read`` has the shape of ``queries``; ``attention`` is ``(N, num_slots)``
            or ``(N, L, num_slots)`` with exactly ``top_k`` non-zero weights summing to 1 per query
            (fewer if ``shrink_thres > 0``), or None if not ``return_attention``.
        """
        squeeze = queries.dim() == 2
        if squeeze:
            queries = queries.unsqueeze(1)
        if queries.dim() != 3 or queries.shape[-1] != self.feature_dim:
            raise ValueError(f"queries must be (N, C) or (N, L, C) with C={self.feature_dim}, got {tuple(queries.shape)}.")
        keys = keys.reshape(-1).long()
        if keys.shape[0] != queries.shape[0]:
            raise ValueError(f"got {keys.shape[0]} keys for {queries.shape[0]} query groups.")
        mem = self.memory.index_select(0, keys)  # (N, M, C)
        if not return_attention and not self.training:
            read = self._sparse_read(queries, mem)
            return (read.squeeze(1) if squeeze else read), None
        # the scaling is in place on the fresh einsum result (same values, one full-size buffer fewer)
        logits, divisor = self._similarity(queries, mem)
        logits = logits.div_(divisor).float()  # addressing in float32, also under autocast
        vals, idx = logits.topk(self.top_k, dim=-1)
        w = torch.softmax(vals, dim=-1)  # == softmax over all slots, top-k kept and renormalised
        w = self._shrink(w)
        attention = torch.zeros_like(logits).scatter_(-1, idx, w.to(logits.dtype))
        read = torch.bmm(attention, mem.float()).to(queries.dtype)
        if not return_attention:
            return (read.squeeze(1) if squeeze else read), None
        if squeeze:
            return read.squeeze(1), attention.squeeze(1)
        return read, attention

    def _similarity(self, queries: torch.Tensor, mem: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Unscaled query-slot similarities ``(N, L, M)`` and the positive divisor that scales them to logits."""
        if self.similarity == "cosine":
            return torch.einsum("nlc,nmc->nlm", F.normalize(queries, dim=-1), F.normalize(mem, dim=-1)), self.temperature
        return torch.einsum("nlc,nmc->nlm", queries, mem), math.sqrt(self.feature_dim)

    def _shrink(self, w: torch.Tensor) -> torch.Tensor:
        """MemAE-style hard shrinkage of the top-k weights ``w`` (renormalised); identity if ``shrink_thres == 0``."""
        if self.shrink_thres <= 0:
            return w
        w = F.relu(w - self.shrink_thres) * w / ((w - self.shrink_thres).abs() + 1e-12)
        return w / w.sum(-1, keepdim=True).clamp_min(1e-12)

    def _sparse_read(self, queries: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Eval-mode read ``(N, L, C)`` from the ``top_k`` slots alone (see ``forward(return_attention=False)``).

        The similarity scaling (a positive factor) is applied to the ``top_k`` selected logits only: it does not
        change which slots are selected. The softmax over the (descending) selected logits subtracts the first one,
        their maximum. The read accumulates ``top_k`` gathered slot rows instead of a dense ``(L, M) @ (M, C)``
        product with ``M - top_k`` zero weights per row.
        """
        n, _, c = queries.shape
        m = mem.shape[1]
        logits, divisor = self._similarity(queries, mem)
        vals, idx = _grouped_topk(logits, self.top_k)  # == logits.topk(top_k): vals[..., 0] is the maximum
        vals = vals.div_(divisor).float()  # the same values as the dense path's selected logits
        w = (vals - vals[..., :1]).exp_()
        w = self._shrink(w / w.sum(-1, keepdim=True))  # (out of place: this path may also run with gradients)
        flat = idx + (torch.arange(n, device=idx.device) * m).reshape(n, 1, 1)  # rows of mem viewed as (N * M, C)
        table = mem.float().reshape(n * m, c)
        read = F.embedding(flat[..., 0], table) * w[..., :1]
        for j in range(1, self.top_k):
            read.addcmul_(F.embedding(flat[..., j], table), w[..., j : j + 1])
        return read.to(queries.dtype)


class MemoryBlock(nn.Module):
    """Feature-map memory: every voxel is replaced by its read from the memory of its (region, block).

    Args:
        spatial_dims: number of spatial dimensions.
        feature_dim: channels ``C`` of the feature map.
        block_grid: number of blocks per axis.
        num_regions: number of body regions (keys = ``region * prod(block_grid) + block``).
        num_slots, top_k, shrink_thres, similarity, temperature: see :class:`SpaceAwareMemory`.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_dim: int,
        block_grid: Sequence[int],
        num_regions: int = 1,
        num_slots: int = 200,
        top_k: int = 5,
        shrink_thres: float = 0.0,
        similarity: str = "cosine",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if len(block_grid) != spatial_dims or any(int(g) < 1 for g in block_grid):
            raise ValueError(f"block_grid must have {spatial_dims} positive entries, got {block_grid}.")
        if num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {num_regions}.")
        self.block_grid = tuple(int(g) for g in block_grid)
        self.num_blocks = math.prod(self.block_grid)
        self.num_regions = num_regions
        self.memory = SpaceAwareMemory(
            num_regions * self.num_blocks, num_slots, feature_dim, top_k, shrink_thres, similarity, temperature
        )

    def forward(
        self, x: torch.Tensor, region: torch.Tensor | None = None, return_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` (B, C, *S), ``region`` (B,) long -> (read (B, C, *S), attention (B, P, V, num_slots)).

        ``return_attention=False`` gives ``None`` for the attention (and the faster eval-mode read of
        :meth:`SpaceAwareMemory.forward`).
        """
        size = _block_size(x.shape[2:], self.block_grid)
        read, att = self.forward_tokens(blocks_to_tokens(x, self.block_grid), region, return_attention)
        return tokens_to_blocks(read, self.block_grid, size), att

    def forward_tokens(
        self, tokens: torch.Tensor, region: torch.Tensor | None = None, return_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` on block tokens ``(B, P, V, C)`` (see :func:`blocks_to_tokens`): ``(read, attention)``
        with ``read`` in the same token layout."""
        b, p = tokens.shape[:2]
        if p != self.num_blocks:
            raise ValueError(f"expected {self.num_blocks} blocks, got tokens of shape {tuple(tokens.shape)}.")
        if region is None:
            region = torch.zeros(b, dtype=torch.long, device=tokens.device)
        keys = region_block_keys(region, self.num_blocks)
        read, att = self.memory(tokens.reshape(b * p, -1, tokens.shape[-1]), keys.reshape(-1), return_attention)
        read = read.reshape(tokens.shape)
        if att is None or not return_attention:
            return read, None
        return read, att.reshape(b, p, -1, att.shape[-1])


class HierarchicalMemory(nn.Module):
    """Three-level (block / group / global) memory over block tokens.

    * block level: every voxel addresses the memory of its own ``(region, block)``;
    * group level: each block's query is the mean of its grid neighbours' (block-averaged) features;
      memory keyed by region;
    * global level: each block's query is the channel-wise max over all *other* blocks; keyed by region.

    The block-level reads are returned as they are (they are what neighbours attend to); the
    *context* of block ``p`` concatenates the mean of its neighbours' block-level reads with its group
    and global reads and projects them back to ``C`` with a linear layer. The context of block ``p`` never
    depends on block ``p``'s own features, so it can be used to build in-painting queries.

    Args:
        num_blocks: blocks per window ``P``.
        num_regions: number of body regions.
        feature_dim: token dimension ``C``.
        num_slots, top_k, shrink_thres, similarity, temperature: see :class:`SpaceAwareMemory`.
    """

    def __init__(
        self,
        num_blocks: int,
        num_regions: int = 1,
        feature_dim: int = 128,
        num_slots: int = 200,
        top_k: int = 5,
        shrink_thres: float = 0.0,
        similarity: str = "cosine",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2, got {num_blocks}.")
        if num_regions < 1:
            raise ValueError(f"num_regions must be >= 1, got {num_regions}.")
        self.num_blocks, self.num_regions = num_blocks, num_regions
        args = (num_slots, feature_dim, top_k, shrink_thres, similarity, temperature)
        self.block_memory = SpaceAwareMemory(num_regions * num_blocks, *args)
        self.group_memory = SpaceAwareMemory(num_regions, *args)
        self.global_memory = SpaceAwareMemory(num_regions, *args)
        self.proj = nn.Linear(3 * feature_dim, feature_dim)

    def forward(
        self, tokens: torch.Tensor, region: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read all levels.

        Args:
            tokens: ``(B, P, V, C)`` block tokens.
            region: ``(B,)`` long region index.
            index, valid: neighbourhood from :func:`block_neighbourhood`.

        Returns:
            ``(block_read (B, P, V, C), context (B, P, V, C), block_attention (B, P, V, num_slots))``.
        """
        b, p, v, c = tokens.shape
        keys = region_block_keys(region, p).reshape(-1)
        block_read, att = self.block_memory(tokens.reshape(b * p, v, c), keys)
        block_read = block_read.reshape(b, p, v, c)
        count = valid.sum(-1).clamp_min(1).to(tokens.dtype)  # (P,)
        # group level: mean of the neighbours' block means
        block_mean = tokens.mean(2)  # (B, P, C)
        group_q = gather_neighbours(block_mean, index, valid).sum(2) / count[:, None]
        group_read, _ = self.group_memory(group_q, region.reshape(-1))
        # global level: channel-wise max over all other blocks (top-2 trick, no loop)
        block_max = tokens.amax(2)  # (B, P, C)
        top2, arg2 = block_max.topk(2, dim=1)  # (B, 2, C)
        is_arg = arg2[:, :1] == torch.arange(p, device=tokens.device)[None, :, None]  # (B, P, C)
        global_q = torch.where(is_arg, top2[:, 1:2], top2[:, 0:1])
        global_read, _ = self.global_memory(global_q, region.reshape(-1))
        nb_read = gather_neighbours(block_read, index, valid).sum(2) / count[:, None, None]
        context = torch.cat(
            [nb_read, group_read[:, :, None].expand(b, p, v, c), global_read[:, :, None].expand(b, p, v, c)], -1
        )
        return block_read, self.proj(context), att.reshape(b, p, v, -1)
