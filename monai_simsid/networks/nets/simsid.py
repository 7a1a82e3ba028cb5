"""SimSID-3D: Simple Space-aware memory matrix for In-painting and Detecting anomalies (dimension-agnostic)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.factories import Conv
from monai.networks.layers.simplelayers import separable_filtering

from monai_simsid.networks.blocks.convolutions import ConvDecoder, ConvEncoder
from monai_simsid.networks.blocks.inpainting import InpaintingBlock
from monai_simsid.networks.blocks.memory import (
    MemoryBlock,
    _block_size,
    batch_to_blocks,
    blocks_to_batch,
    tokens_to_blocks,
)
from monai_simsid.networks.nets.discriminator import SimSIDDiscriminator

__all__ = ["SimSID", "SimSIDOutput", "SimSIDTrainOutput", "AnomalyHead", "MAP_MODES"]

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}

#: eval-mode anomaly-map modes of :class:`SimSID` (see its ``map_mode`` argument).
MAP_MODES = ("recon", "head", "combined", "distill")


class AnomalyHead(nn.Module):
    """Small fully-convolutional head: ``[x, recon, |x - recon|]`` -> one voxel logit map.

    ``num_layers`` convs (kernel 3, dilations 1, 2, 4, ... for a wider receptive field) with instance norm and
    LeakyReLU, then a 1x1 conv to one logit. The input is ``3 * in_channels`` channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, channels: int = 16, num_layers: int = 3) -> None:
        super().__init__()
        if channels < 1 or num_layers < 1:
            raise ValueError(f"channels and num_layers must be >= 1, got {channels} and {num_layers}.")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
        layers: list[nn.Module] = []
        c_in = 3 * in_channels
        for i in range(num_layers):
            d = 2**i
            layers += [conv(c_in, channels, 3, padding=d, dilation=d), norm(channels, affine=True), nn.LeakyReLU(0.2)]
            c_in = channels
        layers.append(conv(c_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, recon, (x - recon).abs()], dim=1))


class SimSIDTrainOutput(NamedTuple):
    """Training-mode result of :class:`SimSID`."""

    teacher_recon: torch.Tensor
    student_recon: torch.Tensor
    teacher_features: list[torch.Tensor]
    student_features: list[torch.Tensor]


class SimSIDOutput(NamedTuple):
    """Eval-mode result of :class:`SimSID`.

    Attributes:
        reconstruction: student reconstruction, same shape as the input.
        anomaly_map: ``(B, 1, *S)`` voxel anomaly map (higher = more anomalous).
        score: ``(B,)`` window anomaly score: the negated discriminator logit of the reconstruction
            (higher = less realistic = more anomalous); the mean anomaly map if there is no discriminator or
            ``SimSID.window_score`` is off.
    """

    reconstruction: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


class SimSID(nn.Module):
    """SimSID for 2D images or 3D CT windows.

    Encoder -> in-painting block (space-aware memory + neighbour attention) -> student decoder (with memory
    after its ``decoder_memory_levels`` deepest levels); a teacher decoder reconstructs from the detached
    encoder features, and a discriminator scores reconstructions. One ``state_dict`` holds everything;
    use :meth:`generator_parameters` / :meth:`discriminator_parameters` for two optimisers.

    Args:
        spatial_dims: 2 or 3 (1 also works).
        in_channels: image channels (also the reconstruction channels).
        roi_size: window size; each side must be divisible by ``2 ** len(channels) * block_grid``.
        block_grid: blocks per axis at the bottleneck (the 2D paper uses (2, 2)).
        region_grid: body-region grid; ``prod(region_grid)`` memory banks per block ((1,)*d disables it).
        channels: encoder channels (the decoders use them reversed).
        embed_dim, num_heads, num_slots, top_k, mask_ratio: in-painting / memory settings.
        inpaint_gap: neighbourhood of the in-painting (see :class:`InpaintingBlock` ``neighbour_gap``): 0 reads the
            adjacent blocks; 1 skips them and reads the next ring (needs ``block_grid`` >= 3 along some axis).
        hierarchical_memory: use block / group / global memory in the in-painting block.
        decoder_memory_levels: number of deepest student-decoder levels followed by a memory block.
        with_discriminator: build ``self.discriminator``.
        map_feature_weight: weight of the up-sampled in-painting feature error added to the anomaly map.
        map_sigma: if > 0, the reconstruction map compares local means: ``|G_sigma * (x - recon)|`` (Gaussian of this
            sigma in voxels, per window) instead of ``|x - recon|``. Texture the bottleneck cannot reproduce (vessels,
            edges, noise) gives a signed error that averages out; a region whose mean intensity departs from the
            reconstruction (a dense lesion filled in with lung) does not. 0 keeps the voxel-wise error.
        map_channels: the input channels that the eval-mode map compares (e.g. ``[0]``: the first HU window only);
            None (the default) compares all channels. Training is unchanged: the decoders reconstruct every channel.
        block_encoder: encode each of the ``block_grid`` blocks of a window on its own (the blocks go through the
            encoder as a batch, zero-padded at their borders), so a block's features carry nothing of its neighbours.
            Without it the encoder's receptive field spans the block borders, and the in-painting of a block from its
            neighbours' features can read the block's own content (a lesion included) through them. The encoder's
            weights are the same either way.
        memory_skips: the student decoder levels (0 = the deepest; each must have a memory block, so below
            ``decoder_memory_levels``, and below ``len(channels) - 1``) that add the encoder's features of the same
            resolution (through a 1x1 conv) before their memory block, as the official 2D SimSID does at its two
            deepest levels (``[0, 1]``). The memory replaces every voxel by a mix of its key's normal slots, so a skip
            is meant to bring the block's own layout only as normal patterns; on real CT a mass against the chest wall
            still came through (its key's slots hold dense tissue; ``docs/benchmarks.md``). Empty (the default) keeps
            the student decoder skip-free: it then sees a block only through its neighbours' in-painting and can only
            reproduce what is expected at each position. The teacher never has skips.
        skip_highpass: if > 0 (odd, >= 3), each skip carries only its detail: the encoder features minus their local
            mean over a cube of this many voxels of the skip's level (replicate-padded at the window border). A region
            that is homogeneous at that scale (the inside of a large mass) then reaches the student only through the
            in-painting from its neighbours, while vessels, edges and small nodules still come through the skip's
            memory. 0 (the default) passes the features unchanged. Needs ``memory_skips``. On real CT it made the
            ``skips.json`` preset worse on both sets (``docs/benchmarks.md``).
        disc_channels: discriminator channels.
        disc_norm: norm of the discriminator's inner convs.
        norm: norm of encoder/decoders.
        encoder_convs: convolutions per encoder level (see :class:`ConvEncoder` ``convs_per_level``); 1 halves the
            encoder's convolutions (the CPU preset).
        out_act: optional activation on the reconstructions (e.g. ``"sigmoid"`` for [0, 1] images).
        overlapping_up: k4-s2 transposed convs in the decoders (paper-like); False gives k2-s2 (CPU preset).
        up_mode: decoder up-sampling, ``"deconv"`` (transposed convs, the default) or ``"shuffle"`` (a 1x1 conv,
            k3 with ``overlapping_up``, + voxel shuffle: faster on CPU); see
            :class:`~monai_simsid.networks.blocks.convolutions.ConvDecoder`.
        out_kernel_size: kernel size (3 or 1) of the decoders' final conv. 1 with ``up_mode="shuffle"`` lets the
            eval-mode student decoder run its last level before the shuffle (the CPU preset).
        anomaly_head: build ``self.anomaly_head``, an :class:`AnomalyHead` on ``[x, recon, |x - recon|]`` that is
            trained (by :class:`~monai_simsid.engines.SimSIDTrainer` with ``head_weight > 0``) to segment synthetic
            anomalies, plus a ``recon_scale`` buffer (running 99th percentile of the normal-voxel reconstruction
            error, updated by the trainer). Off by default: the state dict is then unchanged.
        head_channels: channels of the anomaly head.
        map_mode: eval-mode anomaly map: ``"recon"`` (``|x - recon|`` [+ feature term], the default),
            ``"head"`` (sigmoid of the head logit, in [0, 1]) or ``"combined"``
            (``0.5 * recon_map / recon_scale + 0.5 * sigmoid(head)``: the reconstruction map in units of the normal
            99th-percentile error, so ~<= 0.5 on normal voxels, plus half the head probability), or ``"distill"``
            (``mean_c |teacher(z) - student(z)|``: where the memory-bound student departs from the teacher, which
            decodes the raw encoder features; the eval pass then also runs the teacher decoder). ``"head"`` and
            ``"combined"`` need ``anomaly_head=True``. The attribute can be changed after construction.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        roi_size: Sequence[int] = (64, 64, 64),
        block_grid: Sequence[int] = (2, 2, 2),
        region_grid: Sequence[int] = (3, 3, 3),
        channels: Sequence[int] = (16, 32, 64, 128),
        embed_dim: int = 128,
        num_heads: int = 8,
        num_slots: int = 200,
        top_k: int = 5,
        mask_ratio: float = 1.0,
        inpaint_gap: int = 0,
        hierarchical_memory: bool = False,
        decoder_memory_levels: int = 2,
        with_discriminator: bool = True,
        map_feature_weight: float = 0.0,
        map_sigma: float = 0.0,
        disc_channels: Sequence[int] = (16, 32, 64, 128, 256),
        disc_norm: str | tuple | None = "batch",
        norm: str | tuple | None = "batch",
        out_act: str | tuple | None = None,
        overlapping_up: bool = True,
        up_mode: str = "deconv",
        out_kernel_size: int = 3,
        anomaly_head: bool = False,
        head_channels: int = 16,
        map_mode: str = "recon",
        encoder_convs: int = 2,
        map_channels: Sequence[int] | None = None,
        block_encoder: bool = False,
        memory_skips: Sequence[int] = (),
        skip_highpass: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        for name, seq in (("roi_size", roi_size), ("block_grid", block_grid), ("region_grid", region_grid)):
            if len(seq) != spatial_dims or any(int(v) < 1 for v in seq):
                raise ValueError(f"{name} must have {spatial_dims} positive entries, got {tuple(seq)}.")
        if len(channels) == 0:
            raise ValueError("channels must not be empty.")
        factor = 2 ** len(channels)
        bad = [r for r, g in zip(roi_size, block_grid) if r % (factor * g)]
        if bad:
            raise ValueError(
                f"roi_size {tuple(roi_size)} must be divisible per axis by 2**len(channels) * block_grid = "
                f"{tuple(factor * g for g in block_grid)}."
            )
        if not 0 <= decoder_memory_levels <= len(channels):
            raise ValueError(f"decoder_memory_levels must be in [0, {len(channels)}], got {decoder_memory_levels}.")
        if map_feature_weight < 0:
            raise ValueError(f"map_feature_weight must be >= 0, got {map_feature_weight}.")
        if map_sigma < 0:
            raise ValueError(f"map_sigma must be >= 0, got {map_sigma}.")
        if map_channels is not None:
            if isinstance(map_channels, (str, bytes)) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in map_channels
            ):
                raise ValueError(f"map_channels must be a list of channel indices or None, got {map_channels!r}.")
            map_channels = [int(c) for c in map_channels]
            if not map_channels or len(set(map_channels)) != len(map_channels):
                raise ValueError(f"map_channels must be a non-empty list of distinct channels, got {map_channels}.")
            if min(map_channels) < 0 or max(map_channels) >= in_channels:
                raise ValueError(f"map_channels {map_channels} must lie in [0, in_channels={in_channels}).")
        top = min(decoder_memory_levels, len(channels) - 1)
        if not isinstance(memory_skips, Sequence) or isinstance(memory_skips, (str, bytes)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in memory_skips
        ):
            raise ValueError(f"memory_skips must be a list of decoder levels, got {memory_skips!r}.")
        memory_skips = sorted(int(i) for i in memory_skips)
        if len(set(memory_skips)) != len(memory_skips) or any(not 0 <= i < top for i in memory_skips):
            raise ValueError(
                f"memory_skips must be distinct decoder levels in [0, min(decoder_memory_levels, len(channels) - 1)) "
                f"= [0, {top}), got {memory_skips}."
            )
        if isinstance(skip_highpass, bool) or not isinstance(skip_highpass, int) or (
            skip_highpass != 0 and (skip_highpass < 3 or skip_highpass % 2 == 0)
        ):
            raise ValueError(f"skip_highpass must be 0 or an odd integer >= 3, got {skip_highpass!r}.")
        if skip_highpass and not memory_skips:
            raise ValueError("skip_highpass filters the memory skips; it needs memory_skips.")
        if not isinstance(block_encoder, bool):  # a config string "false" would otherwise count as True
            raise ValueError(f"block_encoder must be a bool, got {block_encoder!r}.")
        if with_discriminator and min(roi_size) < 2 ** len(disc_channels):
            raise ValueError(f"roi_size {tuple(roi_size)} too small for a {len(disc_channels)}-conv discriminator.")
        self.spatial_dims = spatial_dims
        self.roi_size = tuple(int(r) for r in roi_size)
        self.block_grid = tuple(int(g) for g in block_grid)
        self.region_grid = tuple(int(g) for g in region_grid)
        self.num_regions = math.prod(self.region_grid)
        self.map_feature_weight = float(map_feature_weight)
        self.map_sigma = float(map_sigma)
        self.map_channels = None if map_channels is None else tuple(map_channels)
        #: eval mode: score windows with the discriminator (when there is one). A caller whose scan score does not use
        #: window scores (``score_method="topk"``) switches it off to save the discriminator pass; the map is unchanged.
        self.window_score = True
        #: eval mode: decode only the channels that the map compares (``map_channels``), when nothing else reads the
        #: reconstruction (map mode ``"recon"`` or ``"distill"``, no window score). ``reconstruction`` then holds those
        #: channels only. A caller that reads only the map switches it on (the predictor does) to skip the other
        #: channels' final conv and voxel shuffle; the map is the same up to float rounding.
        self.map_only = False
        self.factor = factor
        self.block_encoder = block_encoder
        self.memory_skips = tuple(memory_skips)
        self.skip_highpass = int(skip_highpass)

        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, norm=norm, convs_per_level=encoder_convs)
        self.inpainting = InpaintingBlock(
            spatial_dims, channels[-1], self.block_grid, embed_dim=embed_dim, num_heads=num_heads,
            num_slots=num_slots, top_k=top_k, num_regions=self.num_regions, mask_ratio=mask_ratio,
            hierarchical=hierarchical_memory, neighbour_gap=inpaint_gap,
        )
        dec_channels = tuple(reversed(channels))
        dec_kw = {
            "norm": norm,
            "out_act": out_act,
            "overlapping_up": overlapping_up,
            "up_mode": up_mode,
            "out_kernel_size": out_kernel_size,
        }
        self.teacher_decoder = ConvDecoder(spatial_dims, dec_channels, in_channels, **dec_kw)
        self.student_decoder = ConvDecoder(spatial_dims, dec_channels, in_channels, **dec_kw)
        conv1 = Conv[Conv.CONV, spatial_dims]
        # decoder level i has the resolution of encoder level len(channels) - 2 - i
        self.skip_proj = nn.ModuleList(
            conv1(channels[len(channels) - 2 - i], dec_channels[i], kernel_size=1) for i in self.memory_skips
        )
        self.decoder_memory = nn.ModuleList(
            MemoryBlock(spatial_dims, dec_channels[i], self.block_grid, self.num_regions, num_slots, top_k)
            for i in range(decoder_memory_levels)
        )
        self.discriminator = (
            SimSIDDiscriminator(spatial_dims, in_channels, disc_channels, norm=disc_norm) if with_discriminator else None
        )
        self.anomaly_head: AnomalyHead | None = None
        if anomaly_head:
            self.anomaly_head = AnomalyHead(spatial_dims, in_channels, head_channels)
            self.register_buffer("recon_scale", torch.zeros(()))  # 0: not yet estimated (treated as 1)
        self.map_mode = map_mode
        self._check_map_mode()

    def _check_map_mode(self) -> None:
        if self.map_mode not in MAP_MODES:
            raise ValueError(f"map_mode must be one of {MAP_MODES}, got {self.map_mode!r}.")
        if self.map_mode in ("head", "combined") and self.anomaly_head is None:
            raise ValueError(f"map_mode={self.map_mode!r} needs anomaly_head=True.")

    # ------------------------------------------------------------------ anomaly head
    def head_logits(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Voxel anomaly logits ``(B, 1, *S)`` of the anomaly head for input ``x`` and its reconstruction."""
        if self.anomaly_head is None:
            raise RuntimeError("this SimSID was built with anomaly_head=False.")
        return self.anomaly_head(x, recon)

    @torch.no_grad()
    def update_recon_scale(self, err: torch.Tensor, momentum: float = 0.05, q: float = 0.99) -> None:
        """Update the ``recon_scale`` buffer (EMA) with the ``q``-quantile of the normal-voxel errors ``err``.

        No-op without an anomaly head or when ``err`` is empty.
        """
        if self.anomaly_head is None:
            return
        v = err.detach().reshape(-1).float()
        if v.numel() == 0:
            return
        if v.numel() > 200_000:  # torch.quantile has an input-size limit; a strided subsample is plenty
            v = v[:: v.numel() // 200_000 + 1]
        val = torch.quantile(v, q).clamp_min(1e-6).to(self.recon_scale)
        if float(self.recon_scale) <= 0:
            self.recon_scale.copy_(val)
        else:
            self.recon_scale.mul_(1 - momentum).add_(momentum * val)

    # ------------------------------------------------------------------ parameters
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """All parameters except the discriminator's (the anomaly head's are included)."""
        return (p for n, p in self.named_parameters() if not n.startswith("discriminator."))

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The discriminator's parameters (empty if there is none)."""
        return iter(()) if self.discriminator is None else self.discriminator.parameters()

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected a (B, C, {self.spatial_dims} spatial dims) input, got {tuple(x.shape)}.")
        if any(s % (self.factor * g) for s, g in zip(x.shape[2:], self.block_grid)):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} not divisible by {tuple(self.factor * g for g in self.block_grid)}."
            )
        if region is None:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        region = torch.as_tensor(region, device=x.device).reshape(-1).long()
        if region.shape[0] != x.shape[0]:
            raise ValueError(f"region must have {x.shape[0]} entries, got {region.shape[0]}.")
        if region.numel() and (int(region.min()) < 0 or int(region.max()) >= self.num_regions):
            raise ValueError(f"region indices must be in [0, {self.num_regions}).")
        return region

    def encode(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Encoder features ``(B, channels[-1], *roi / 2**len(channels))``, or every level's output with
        ``return_features``; block by block with ``block_encoder``."""
        if not self.block_encoder:
            return self.encoder(x, return_features=return_features)
        out = self.encoder(blocks_to_batch(x, self.block_grid), return_features=return_features)
        if return_features:
            return [batch_to_blocks(f, self.block_grid) for f in out]
        return batch_to_blocks(out, self.block_grid)

    def _student(
        self,
        z: torch.Tensor,
        region: torch.Tensor,
        return_features: bool = True,
        skips: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hooks = {i: (lambda t, m=m: m(t, region, return_attention=False)[0]) for i, m in enumerate(self.decoder_memory)}
        for i, proj, skip in zip(self.memory_skips, self.skip_proj, skips):
            m = self.decoder_memory[i]
            hooks[i] = lambda t, m=m, proj=proj, skip=skip: m(t + proj(skip), region, return_attention=False)[0]
        return self.student_decoder(z, hooks, return_features=return_features)

    def _skip_detail(self, f: torch.Tensor) -> torch.Tensor:
        """The part of skip features ``f`` that a skip passes on: ``f`` minus its local mean with ``skip_highpass``."""
        k = self.skip_highpass
        if k == 0:
            return f
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.spatial_dims]
        local = pool(F.pad(f, [k // 2] * (2 * self.spatial_dims), mode="replicate"), k, stride=1)
        return f - local

    def _can_decode_tokens(self, z: torch.Tensor) -> bool:
        """Whether the eval pass can run the in-painting output and the student decoder in block tokens (CPU)."""
        return (
            not self.training
            and not self.memory_skips
            and not self.inpainting.training
            and not (torch.jit.is_tracing() or torch.jit.is_scripting())
            and self.inpainting.proj_out.weight.shape[2:].numel() == 1
            and self.student_decoder.supports_tokens(range(len(self.decoder_memory)), z.device)
        )

    def _map_only_channels(self) -> tuple[int, ...] | None:
        """The channels to decode under :attr:`map_only` (None: all of them)."""
        if self.training or not self.map_only or self.map_channels is None or self.map_mode not in ("recon", "distill"):
            return None
        if self.discriminator is not None and self.window_score:
            return None
        return self.map_channels

    def _student_tokens(
        self, z: torch.Tensor, region: torch.Tensor, out_channels: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eval fast path: in-painting, decoder memories and student decoder without leaving the block-token layout
        (see :meth:`ConvDecoder.forward_tokens`); the same reconstruction as :meth:`_student` up to float rounding.

        Returns ``(reconstruction, in-painted map)``; the map (block layout) only when the anomaly map uses it
        (``map_feature_weight > 0``), else None. ``out_channels`` decodes only those reconstruction channels.
        """
        h, _ = self.inpainting.inpaint_tokens(z, region, return_attention=False)  # (B, P, V, embed_dim)
        proj = self.inpainting.proj_out  # a 1x1 conv: a linear map per voxel
        tokens = F.linear(h, proj.weight.reshape(proj.out_channels, -1), proj.bias)
        block = _block_size(z.shape[2:], self.block_grid)
        hooks = {
            i: (lambda t, m=m: m.forward_tokens(t, region, return_attention=False)[0])
            for i, m in enumerate(self.decoder_memory)
        }
        recon = self.student_decoder.forward_tokens(tokens, self.block_grid, block, hooks, out_channels)
        inpainted = tokens_to_blocks(tokens, self.block_grid, block) if self.map_feature_weight > 0 else None
        return recon, inpainted

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> SimSIDTrainOutput | SimSIDOutput:
        """Run SimSID.

        Args:
            x: image windows ``(B, C, *roi)``.
            region: optional ``(B,)`` long body-region index in ``[0, prod(region_grid))``.

        Returns:
            :class:`SimSIDTrainOutput` in training mode, :class:`SimSIDOutput` in eval mode.
        """
        region = self._check_input(x, region)
        skips: list[torch.Tensor] = []
        if self.memory_skips:
            feats = self.encode(x, return_features=True)
            z = feats[-1]
            skips = [self._skip_detail(feats[len(feats) - 2 - i]) for i in self.memory_skips]
        else:
            z = self.encode(x)
        if not self.training:
            self._check_map_mode()
        only = self._map_only_channels()
        if self._can_decode_tokens(z):
            student_recon, inpainted = self._student_tokens(z, region, only)
        else:
            inpainted = self.inpainting(z, region)
            student_recon, student_feats = self._student(inpainted, region, return_features=self.training, skips=skips)
            if only is not None:
                student_recon = _select_channels(student_recon, only)
        if self.training:
            teacher_recon, teacher_feats = self.teacher_decoder(z.detach())
            return SimSIDTrainOutput(teacher_recon, student_recon, teacher_feats, student_feats)
        if self.map_mode == "distill":
            reference, _ = self.teacher_decoder(z, return_features=False)
        else:
            reference = x
        compared = student_recon
        if self.map_channels is not None:  # with ``only``, the reconstruction holds these channels already
            reference = _select_channels(reference, self.map_channels)
            compared = student_recon if only is not None else _select_channels(student_recon, self.map_channels)
        amap = self._error_map(reference, compared)
        if self.map_feature_weight > 0:
            ferr = (inpainted - z).pow(2).mean(1, keepdim=True)
            ferr = F.interpolate(ferr, size=x.shape[2:], mode=_INTERP[self.spatial_dims], align_corners=False)
            amap = amap + self.map_feature_weight * ferr
        if self.map_mode in ("head", "combined"):
            prob = torch.sigmoid(self.head_logits(x, student_recon))
            if self.map_mode == "head":
                amap = prob
            else:
                scale = self.recon_scale if float(self.recon_scale) > 0 else self.recon_scale.new_ones(())
                amap = 0.5 * amap / scale + 0.5 * prob
        if self.discriminator is not None and self.window_score:
            score = -self.discriminate(student_recon)
        else:
            score = amap.flatten(1).mean(1)
        return SimSIDOutput(student_recon, amap, score)

    def _error_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """``mean_c |x - recon|`` ``(B, 1, *S)``, of local means with ``map_sigma > 0``."""
        if self.map_sigma > 0:  # no module: the state dict (and old checkpoints) stay as they are
            err = x - recon
            k = gaussian_1d(torch.tensor(self.map_sigma), truncated=3.0, normalize=True).to(err.device, torch.float32)
            err = separable_filtering(err.float(), [k] * self.spatial_dims, mode="replicate")
            return err.abs_().mean(1, keepdim=True)
        exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
        if exporting or ((x.requires_grad or recon.requires_grad) and torch.is_grad_enabled()):
            return (x - recon).abs().mean(1, keepdim=True)
        # eager, without gradients: one window at a time through a reused buffer, which stays in cache (a full-size
        # difference of all windows is a fresh allocation, written and read twice). Not while tracing: the loop would
        # be recorded for the example's batch size.
        amap = torch.empty((x.shape[0], 1, *x.shape[2:]), dtype=torch.result_type(x, recon), device=x.device)
        buf = torch.empty(x.shape[1:], dtype=amap.dtype, device=x.device)
        for i in range(x.shape[0]):
            torch.mean(torch.sub(x[i], recon[i], out=buf).abs_(), 0, keepdim=True, out=amap[i])
        return amap

    def discriminate(self, img: torch.Tensor) -> torch.Tensor:
        """Discriminator logits ``(B,)`` (higher = more realistic)."""
        if self.discriminator is None:
            raise RuntimeError("this SimSID was built with with_discriminator=False.")
        return self.discriminator(img).reshape(-1)


def _select_channels(t: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """``t[:, channels]``; a view when the channels are consecutive."""
    first = channels[0]
    if list(channels) == list(range(first, first + len(channels))):
        return t.narrow(1, first, len(channels))
    return t[:, list(channels)]
