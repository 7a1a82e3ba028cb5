"""Generic skip-free convolutional encoder / decoder stacks (dimension-agnostic).

These are shared by SimSID-3D and the baseline models (autoencoder, GANomaly). They deliberately have
no skip connections: skips would let anomalous content bypass the bottleneck and leak into the
reconstruction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import SubpixelUpsample
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.utils import icnr_init, pixelshuffle

from monai_simsid.networks.blocks.memory import blocks_to_tokens

__all__ = ["ConvEncoder", "ConvDecoder", "DEFAULT_ACT", "UP_MODES"]

DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.2})

#: up-sampling modes of :class:`ConvDecoder` (see its ``up_mode`` argument).
UP_MODES = ("deconv", "shuffle")

# norms whose statistics treat the non-channel positions as an unordered set: they give the same result on a
# voxel-shuffled tensor and on the tensor before the shuffle viewed as (B, C, s**d * S0, S1, ...)
_SHUFFLE_INVARIANT_NORMS = (
    nn.Identity,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
# activations that act on each value alone (so they can be applied to any view of a tensor)
_ELEMENTWISE_ACTS = (
    nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.ReLU6, nn.Hardswish, nn.Hardtanh, nn.Softplus,
)
#: memory format of the eval-mode CPU encoder per spatial_dims (see :meth:`ConvEncoder.forward`)
_EVAL_CPU_FORMAT = {2: torch.channels_last, 3: torch.channels_last_3d}
#: voxels per chunk of the eval-mode fused decoder tail (its buffers then stay small, cache-resident)
_TAIL_CHUNK = 8192


@functools.lru_cache(maxsize=8)
def _shuffle_index(
    size: tuple[int, ...], strides: tuple[int, ...], out_channels: int, rows: int, grid: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Source positions of the voxel shuffles of :meth:`ConvDecoder._folded_tail` for one batch element (CPU, int64).

    The chunk loop writes a batch element as consecutive chunks of ``rows`` slabs along the first axis of ``size``
    (the last chunk may be shorter), each chunk ``(out_channels, sub-voxels of the last .. first level, voxels of the
    chunk)``. Entry ``j`` of the result is the position there of the value that the shuffles (``pixelshuffle`` by each
    of ``strides``, first to last, of the ``(out_channels * sub-voxels, *size)`` map) move to position ``j`` of the
    flattened ``(out_channels, *full-resolution size)`` output. It is built by running those very shuffles on the
    positions themselves. With a block ``grid``, the loop's voxels are in the block-token order of that grid (see
    :func:`~monai_simsid.networks.blocks.memory.blocks_to_tokens`) instead of the raster order of ``size``; the
    chunks are then runs of ``rows * prod(size[1:])`` consecutive voxels in that order.
    """
    d = len(size)
    expand = math.prod(s**d for s in strides)
    n = math.prod(size)
    chunk = rows * math.prod(size[1:])  # voxels per chunk
    pos = torch.arange(expand * n).view(1, expand, *size)
    for s in strides:
        pos = pixelshuffle(pos, d, s)
    pos = pos.reshape(-1)  # per output voxel: sub-voxel e and voxel v, as e * n + v
    e, v = pos // n, pos % n
    if grid is not None:  # v -> its place in the token order
        order = blocks_to_tokens(torch.arange(n).view(1, 1, *size), grid).reshape(-1)  # token t is voxel order[t]
        v = torch.empty_like(order).scatter_(0, order, torch.arange(n))[v]
    first = v // chunk * chunk  # the first voxel of v's chunk
    width = (first + chunk).clamp(max=n) - first  # voxels in v's chunk
    base = out_channels * expand * first + e * width + (v - first)
    channel = torch.arange(out_channels).reshape(-1, 1) * expand * width
    return (base + channel).reshape(-1).contiguous()


def _act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, in place on ``x`` (a fresh buffer) for the common activations."""
    if isinstance(act, nn.Identity):
        return x
    if isinstance(act, nn.LeakyReLU):
        return torch.nn.functional.leaky_relu_(x, act.negative_slope)
    if isinstance(act, nn.ReLU):
        return x.relu_()
    return act(x)


def check_network_args(spatial_dims: int, in_channels: int, channels: Sequence[int]) -> None:
    """The argument checks every network here shares (ValueError on bad values)."""
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}.")
    if len(channels) == 0 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}.")


def _check_common(spatial_dims: int, channels: Sequence[int], strides: int | Sequence[int]) -> tuple[int, ...]:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    if len(channels) == 0 or any(int(c) <= 0 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}.")
    if isinstance(strides, int):
        strides = (strides,) * len(channels)
    strides = tuple(int(s) for s in strides)
    if len(strides) != len(channels):
        raise ValueError(f"len(strides)={len(strides)} must equal len(channels)={len(channels)}.")
    if any(s < 1 for s in strides):
        raise ValueError(f"strides must be >= 1, got {strides}.")
    return strides


def _norm(norm, spatial_dims: int, channels: int) -> nn.Module:
    return nn.Identity() if norm is None else get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


def _act(act) -> nn.Module:
    return nn.Identity() if act is None else get_act_layer(act)


class ConvEncoder(nn.Module):
    """Plain strided convolutional encoder.

    Each level is ``conv(k3, stride s) -> norm -> act`` followed by ``convs_per_level - 1`` blocks of
    ``conv(k3) -> norm -> act``; level ``i`` outputs ``channels[i]`` channels at ``1 / prod(strides[: i + 1])`` of the
    input resolution. With ``convs_per_level=1`` the encoder has the depth of MONAI's ``AutoEncoder`` encoder
    (``num_res_units=0``), with half the convolutions of the default 2.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: number of input channels.
        channels: output channels of each level.
        strides: stride of the first conv of each level (an int applies to all levels).
        norm: MONAI norm name/tuple (e.g. ``"batch"``, ``("group", {"num_groups": 8})``) or None.
        act: MONAI activation name/tuple or None.
        convs_per_level: convolutions per level (>= 1): the strided one plus ``convs_per_level - 1`` at stride 1.

    Example::

        enc = ConvEncoder(3, 1, channels=(16, 32, 64, 128))
        z = enc(torch.zeros(2, 1, 64, 64, 64))  # (2, 128, 4, 4, 4)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: int | Sequence[int] = 2,
        norm: str | tuple | None = "batch",
        act: str | tuple | None = DEFAULT_ACT,
        convs_per_level: int = 2,
    ) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if int(convs_per_level) < 1:
            raise ValueError(f"convs_per_level must be >= 1, got {convs_per_level}.")
        self.convs_per_level = int(convs_per_level)
        self.strides = _check_common(spatial_dims, channels, strides)
        self.spatial_dims = spatial_dims
        self.channels = tuple(int(c) for c in channels)
        conv = Conv[Conv.CONV, spatial_dims]
        bias = norm is None
        levels = []
        prev = in_channels
        for c, s in zip(self.channels, self.strides):
            layers = []
            for j in range(self.convs_per_level):
                layers += [
                    conv(prev, c, kernel_size=3, stride=s if j == 0 else 1, padding=1, bias=bias),
                    _norm(norm, spatial_dims, c),
                    _act(act),
                ]
                prev = c
            levels.append(nn.Sequential(*layers))
        self.levels = nn.ModuleList(levels)

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def downsample_factor(self) -> int:
        """Total down-sampling factor per axis (``2 ** len(channels)`` for the default strides)."""
        return math.prod(self.strides)

    @staticmethod
    def _eval_level(level: nn.Sequential, x: torch.Tensor, fmt: torch.memory_format, first: bool) -> torch.Tensor:
        """One level in eval mode on CPU, in the ``fmt`` (channels-last) memory format.

        The first conv of the first level reads the few-channel input as it is, and its down-sampled output is
        converted to ``fmt``: about 1.4x faster than converting the input, with the same values. (Folding the batch
        norms into the convs saves about 1 ms per 4 windows of 64^3, but its rounding flips memory top-k choices
        downstream: about 0.4% of a trained model's lung2 map moved by up to 0.3. Not done.)
        """
        if first:
            return level[1:](level[0](x).contiguous(memory_format=fmt))
        return level(x)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Encode ``x``; return the bottleneck, or the list of all level outputs if ``return_features``.

        In eval mode on CPU (2D/3D, not tracing) the levels run in the channels-last memory format, for which oneDNN
        has much faster few-channel convolutions (see :meth:`_eval_level`); the outputs are returned contiguous (the
        same values up to float rounding).
        """
        fmt = _EVAL_CPU_FORMAT.get(self.spatial_dims)
        channels_last = (
            fmt is not None
            and not self.training
            and x.device.type == "cpu"
            and not (torch.jit.is_tracing() or torch.jit.is_scripting())
        )
        feats = []
        for i, level in enumerate(self.levels):
            x = self._eval_level(level, x, fmt, first=i == 0) if channels_last else level(x)
            feats.append(x)
        if channels_last:
            feats = [f.contiguous() for f in feats] if return_features else [x.contiguous()]
        return feats if return_features else feats[-1]


def _up_kernel_padding(stride: int, overlapping: bool = True) -> tuple[int, int]:
    if stride == 1:
        return 3, 1
    if overlapping and stride % 2 == 0:
        return 2 * stride, stride // 2  # e.g. k4 s2 p1: exact x2
    return stride, 0  # kernel == stride: non-overlapping, 8x cheaper in 3D


def _shuffle_up(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int, kernel_size: int, bias: bool
) -> nn.Module:
    """Conv (``kernel_size``) to ``out_channels * stride**spatial_dims`` channels + voxel shuffle.

    MONAI's :class:`~monai.networks.blocks.SubpixelUpsample` without its pad-pool blur, ICNR-initialised with a zero
    bias (so it starts as the conv followed by nearest-neighbour up-sampling: no checkerboard at initialisation).
    """
    conv = Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels * stride**spatial_dims, kernel_size=kernel_size, padding=kernel_size // 2, bias=bias
    )
    icnr_init(conv, stride)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)  # one value per sub-voxel group, like the ICNR weights
    return SubpixelUpsample(spatial_dims, in_channels, out_channels, stride, conv_block=conv, apply_pad_pool=False)


class ConvDecoder(nn.Module):
    """Skip-free up-sampling convolutional decoder.

    Level ``i`` maps ``in_channels`` (level 0) or ``channels[i - 1]`` to ``channels[i]`` with an up-sampling
    layer (see ``up_mode``) + norm + act; a final conv maps ``channels[-1]`` to ``out_channels``. Callables
    ("hooks", e.g. memory blocks) can be applied after chosen levels.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: output channels of each level (deepest first).
        out_channels: channels of the final output.
        in_channels: channels of the input code; defaults to ``channels[0]``.
        strides: up-sampling factor of each level.
        norm: MONAI norm name/tuple or None.
        act: MONAI activation name/tuple or None.
        out_kernel_size: kernel size of the final conv (1 or 3).
        out_act: optional activation after the final conv (e.g. ``"tanh"``, ``"sigmoid"``).
        overlapping_up: transposed convs with kernel ``2 * stride`` (k4 s2, smoother) instead of kernel
            ``stride`` (k2 s2: no overlap, about 8x fewer multiply-adds in 3D; the CPU default). With
            ``up_mode="shuffle"``: a k3 conv before the shuffle instead of a 1x1 one.
        up_mode: how levels with stride ``s > 1`` up-sample. ``"deconv"`` (default): a transposed conv (the
            layout of existing checkpoints). ``"shuffle"``: a conv to ``c * s**d`` channels followed by a voxel
            (pixel) shuffle, i.e. MONAI's :class:`~monai.networks.blocks.SubpixelUpsample` without pad-pool,
            ICNR-initialised (bias only when ``norm`` is None, as for the transposed convs). With
            ``overlapping_up=False`` the conv is 1x1, which spans the same maps as the k2-s2 transposed conv; with
            ``out_kernel_size=1`` as well, the eval-mode decoder runs its last level, norm, act and final conv
            before the shuffle (see :meth:`forward`), the fast CPU setting. Stride-1 levels are the same in both
            modes.

    Raises:
        ValueError: on invalid channels, strides, ``out_channels``, ``in_channels``, ``out_kernel_size`` or
            ``up_mode``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (128, 64, 32, 16),
        out_channels: int = 1,
        in_channels: int | None = None,
        strides: int | Sequence[int] = 2,
        norm: str | tuple | None = "batch",
        act: str | tuple | None = DEFAULT_ACT,
        out_kernel_size: int = 3,
        out_act: str | tuple | None = None,
        overlapping_up: bool = True,
        up_mode: str = "deconv",
    ) -> None:
        super().__init__()
        self.strides = _check_common(spatial_dims, channels, strides)
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}.")
        if out_kernel_size not in (1, 3):
            raise ValueError(f"out_kernel_size must be 1 or 3, got {out_kernel_size}.")
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}.")
        self.up_mode = up_mode
        self.out_kernel_size = int(out_kernel_size)
        self.spatial_dims = spatial_dims
        self.channels = tuple(int(c) for c in channels)
        self.in_channels = self.channels[0] if in_channels is None else int(in_channels)
        if self.in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        convt = Conv[Conv.CONVTRANS, spatial_dims]
        bias = norm is None
        levels = []
        prev = self.in_channels
        for c, s in zip(self.channels, self.strides):
            if up_mode == "shuffle" and s > 1:
                up = _shuffle_up(spatial_dims, prev, c, s, kernel_size=3 if overlapping_up else 1, bias=bias)
            else:
                k, p = _up_kernel_padding(s, overlapping_up)
                up = convt(prev, c, kernel_size=k, stride=s, padding=p, bias=bias)
            levels.append(nn.Sequential(up, _norm(norm, spatial_dims, c), _act(act)))
            prev = c
        self.levels = nn.ModuleList(levels)
        self.final = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](prev, out_channels, kernel_size=out_kernel_size, padding=out_kernel_size // 2),
            _act(out_act),
        )

    @property
    def upsample_factor(self) -> int:
        return math.prod(self.strides)

    def _can_fuse_tail(self) -> bool:
        """Whether the last level + final conv can run before the voxel shuffle (same result, less memory traffic)."""
        up, norm_layer = self.levels[-1][0], self.levels[-1][1]
        return (
            isinstance(up, SubpixelUpsample)
            and self.out_kernel_size == 1
            and isinstance(norm_layer, _SHUFFLE_INVARIANT_NORMS)
        )

    def _fused_tail(self, x: torch.Tensor) -> torch.Tensor:
        """Last level + final conv with the shuffle moved to the end, where it moves ``out_channels`` channels.

        The norm sees the pre-shuffle tensor as ``(B, c, s**d * S0, S1, ...)``: every channel holds the same values
        as after the shuffle, only in another order, so the statistics and the result are the same. The activation
        and the final 1x1 conv act voxel by voxel, so they commute with the shuffle. (On CPU with a foldable norm the
        decoder uses :meth:`_folded_tail` instead.)
        """
        up, norm_layer, act_layer = self.levels[-1]
        s, d, c = self.strides[-1], self.spatial_dims, self.channels[-1]
        sub = s**d
        conv = self.final[0]
        w_final = conv.weight.reshape(conv.out_channels, c)
        b, cin, *size = x.shape
        n = math.prod(size)
        if up.conv_block.weight.shape[2:].numel() == 1:  # 1x1 conv as a batched matmul (faster on CPU)
            h = torch.matmul(up.conv_block.weight.reshape(c * sub, cin), x.reshape(b, cin, n))
            if up.conv_block.bias is not None:
                h = h + up.conv_block.bias.reshape(1, -1, 1)
        else:
            h = up.conv_block(x)  # (B, c * sub, *S), channel = c_index * sub + sub-voxel
        h = act_layer(norm_layer(h.reshape(b, c, sub * size[0], *size[1:])))
        y = torch.matmul(w_final, h.reshape(b, c, -1))  # (B, out, sub * N)
        y = pixelshuffle(y.reshape(b, conv.out_channels * sub, *size), d, s)
        if conv.bias is not None:
            y = y + conv.bias.reshape(1, -1, *([1] * d)).to(y.dtype)
        return self.final[1](y)

    def _folded_chain(
        self, x: torch.Tensor, hooks: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor, nn.Module, int, int]] | None:
        """The trailing levels that :meth:`_folded_tail` can run, as ``(weight, bias, act, channels, stride)``.

        A level qualifies if it has no hook and is a voxel shuffle after a 1x1 conv, with an eval-mode batch norm
        (folded into the conv) or no norm, and an element-wise activation. Such levels act voxel by voxel before
        their shuffle, so a chain of them can run on the unshuffled voxels, with all the shuffles done at the end,
        at once, on the ``out_channels`` output. None if the last level does not qualify, off CPU, or while tracing
        (the chunk loops depend on the batch size and the volume; a traced export would bake them in).
        """
        if x.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
            return None
        chain: list[tuple[torch.Tensor, torch.Tensor, nn.Module, int, int]] = []
        for i in range(len(self.levels) - 1, -1, -1):
            up, norm_layer, act_layer = self.levels[i]
            if i in hooks or not isinstance(up, SubpixelUpsample) or not isinstance(act_layer, _ELEMENTWISE_ACTS):
                break
            folded = self._folded_up(up.conv_block, norm_layer, self.strides[i] ** self.spatial_dims)
            if folded is None:
                break
            chain.insert(0, (*folded, act_layer, self.channels[i], self.strides[i]))
        return chain or None

    def _folded_tail(
        self,
        x: torch.Tensor,
        chain: Sequence[tuple[torch.Tensor, torch.Tensor, nn.Module, int, int]],
        grid: Sequence[int] | None = None,
        block_size: Sequence[int] | None = None,
        out_channels: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The levels of ``chain`` (see :meth:`_folded_chain`) and the final 1x1 conv, then all their shuffles.

        Runs in chunks of whole slabs along the first spatial axis, about ``_TAIL_CHUNK`` voxels of the first level's
        output at a time, so no full-resolution hidden tensor is ever allocated (allocating and filling those
        dominates the CPU time of the full-resolution levels). The level ``l`` output of a chunk has its columns
        ordered ``(sub-voxel of l, ..., sub-voxel of the first level, voxel)``; the final conv (bias included) maps it
        to ``out_channels`` rows, written in place into a buffer of consecutive chunks, and the voxel shuffles of the
        levels, first to last, then move only those: as one gather per batch element with a cached index (see
        :func:`_shuffle_index`), the same values as ``pixelshuffle`` by each stride in turn.

        With a block ``grid`` and ``block_size``, ``x`` is a map in block tokens ``(B, P, V, C)`` (see
        :meth:`forward_tokens`); the gather then also undoes the token order. ``out_channels`` (indices) computes
        only those output channels, in that order (the final conv acts voxel by voxel, so they are the same values).
        """
        d = self.spatial_dims
        conv = self.final[0]
        w_final = conv.weight.reshape(conv.out_channels, chain[-1][3])
        b_final = (conv.bias if conv.bias is not None else w_final.new_zeros(conv.out_channels)).reshape(-1, 1)
        if out_channels is not None:
            keep = torch.as_tensor(list(out_channels), dtype=torch.long, device=w_final.device)
            w_final, b_final = w_final.index_select(0, keep), b_final.index_select(0, keep)
        out_c = w_final.shape[0]
        if grid is None:
            b, cin, *size = x.shape
            xs = x.reshape(b, cin, -1)
        else:
            b, _, _, cin = x.shape
            size = [g * m for g, m in zip(grid, block_size)]
            xs = x.reshape(b, -1, cin).transpose(1, 2)  # (B, C, voxels in token order): a view
        strides = [lvl[4] for lvl in chain]
        slab = math.prod(size[1:])  # voxels per index of the first spatial axis
        expand = math.prod(s**d for s in strides)
        rows = max(1, (_TAIL_CHUNK * strides[0] ** d) // (expand * slab))
        n = size[0] * slab
        y = x.new_empty(b, out_c * expand * n)  # chunks of (out, last .. first sub-voxel, voxel of the chunk)
        for i in range(b):
            for z0 in range(0, size[0], rows):
                cols = slice(z0 * slab, min(z0 + rows, size[0]) * slab)
                h = xs[i, :, cols]
                for w_up, b_up, act_layer, c, _ in chain:
                    h = _act_(act_layer, torch.addmm(b_up, w_up, h)).view(c, -1)
                start, stop = out_c * expand * cols.start, out_c * expand * cols.stop
                torch.addmm(b_final, w_final, h, out=y[i, start:stop].view(out_c, -1))
        # the shuffles of the levels, first to last (channels (out, last .. first sub-voxel): the first level's
        # sub-voxels are innermost), as one gather per batch element with a cached index: the same values as
        # ``pixelshuffle`` for each stride in turn, about 3x faster than those permuted copies on CPU
        index = _shuffle_index(tuple(size), tuple(strides), out_c, rows, None if grid is None else tuple(grid))
        out = y.new_empty(b, out_c, *(m * math.prod(strides) for m in size))
        for i in range(b):
            torch.index_select(y[i], 0, index, out=out[i].view(-1))
        return self.final[1](out)

    @staticmethod
    def _folded_up(conv: nn.Module, norm_layer: nn.Module, sub: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(weight, bias)`` of a 1x1 up-sampling conv (``sub`` sub-voxels per channel) with an eval batch norm
        folded in (None: not possible)."""
        if conv.weight.shape[2:].numel() != 1:
            return None
        w = conv.weight.reshape(conv.weight.shape[0], -1)
        bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
        if isinstance(norm_layer, nn.Identity):
            return w, bias[:, None]
        if not isinstance(norm_layer, nn.modules.batchnorm._BatchNorm) or norm_layer.training:
            return None
        if norm_layer.running_mean is None or norm_layer.running_var is None:
            return None
        scale = torch.rsqrt(norm_layer.running_var + norm_layer.eps)
        if norm_layer.weight is not None:
            scale = scale * norm_layer.weight
        shift = -norm_layer.running_mean * scale
        if norm_layer.bias is not None:
            shift = shift + norm_layer.bias
        scale, shift = scale.repeat_interleave(sub), shift.repeat_interleave(sub)
        return w * scale[:, None], (bias * scale + shift)[:, None]

    def forward(
        self,
        x: torch.Tensor,
        hooks: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        return_features: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode ``x``.

        Args:
            x: code of shape (B, in_channels, *S).
            hooks: optional ``{level_index: callable}``; the callable replaces that level's output.
            return_features: False returns an empty feature list; it lets ``up_mode="shuffle"`` with
                ``out_kernel_size=1`` run its last level and the final conv before the voxel shuffle when the last
                level has no hook (the same output up to float rounding, without full-resolution ``c``-channel
                tensors; see :meth:`_fused_tail`). On CPU, all the trailing hook-free 1x1-shuffle levels with a
                foldable norm then run together before their shuffles (see :meth:`_folded_tail`).

        Returns:
            ``(output, features)`` where ``features[i]`` is level ``i``'s output (after its hook).
        """
        hooks = hooks or {}
        bad = [i for i in hooks if not 0 <= int(i) < len(self.levels)]
        if bad:
            raise ValueError(f"hook levels {bad} out of range for {len(self.levels)} decoder levels.")
        last = len(self.levels) - 1
        fuse = not return_features and last not in hooks and self._can_fuse_tail()
        chain = self._folded_chain(x, hooks) if fuse else None
        feats = []
        for i, level in enumerate(self.levels):
            if chain is not None and i == len(self.levels) - len(chain):
                return self._folded_tail(x, chain), []
            if fuse and i == last:
                return self._fused_tail(x), []
            x = level(x)
            if i in hooks:
                x = hooks[i](x)
            if return_features:
                feats.append(x)
        return self.final(x), feats

    def _token_plan(
        self, hook_levels: Sequence[int], device: torch.device
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, nn.Module, int, int]], list] | None:
        """What :meth:`forward_tokens` runs: ``(levels before the folded chain, folded chain)``, or None if it cannot.

        Every level before the chain must be a 1x1 voxel-shuffle level with a foldable norm and an element-wise
        activation (its conv then acts voxel by voxel, and its shuffle stays inside each block); each is given as
        ``(weight, bias, act, channels, stride)`` with the weight's rows ordered (sub-voxel, channel).
        """
        last = len(self.levels) - 1
        if last in hook_levels or not self._can_fuse_tail():
            return None
        chain = self._folded_chain(torch.empty(0, device=device), dict.fromkeys(hook_levels))
        if chain is None:
            return None
        plan = []
        for i in range(len(self.levels) - len(chain)):
            up, norm_layer, act_layer = self.levels[i]
            s, c = self.strides[i], self.channels[i]
            sub = s**self.spatial_dims
            folded = self._folded_up(up.conv_block, norm_layer, sub) if isinstance(up, SubpixelUpsample) else None
            if folded is None or not isinstance(act_layer, _ELEMENTWISE_ACTS):
                return None
            w, bias = folded
            w = w.reshape(c, sub, -1).transpose(0, 1).reshape(sub * c, -1)
            plan.append((w, bias.reshape(c, sub).t().reshape(-1), act_layer, c, s))
        return plan, chain

    def supports_tokens(self, hook_levels: Sequence[int], device: torch.device | str) -> bool:
        """Whether :meth:`forward_tokens` can decode on ``device`` with hooks after ``hook_levels``."""
        return self._token_plan(hook_levels, torch.device(device)) is not None

    def forward_tokens(
        self,
        x: torch.Tensor,
        grid: Sequence[int],
        block_size: Sequence[int],
        hooks: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        out_channels: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Eval-mode CPU decoding of a code given in block tokens, without leaving the token layout until the end.

        ``x`` is ``(B, P, V, in_channels)``: the code split into ``grid`` blocks of ``block_size`` voxels (see
        :func:`~monai_simsid.networks.blocks.memory.blocks_to_tokens`). A 1x1 voxel-shuffle level maps each voxel to
        ``stride**d`` sub-voxels of the same block, so the levels before the folded chain (see :meth:`_token_plan`)
        run on tokens: a matmul with the norm folded in, the activation, and one permute inside each block, where
        the plain path runs the conv, a shuffle, and the hook's own conversions to and from tokens. The hooks take
        and return tokens ``(B, P, V, C)`` (e.g. :meth:`~monai_simsid.networks.blocks.memory.MemoryBlock.forward_tokens`).
        The folded chain reads the tokens as they are and its final gather undoes the token order. The output
        ``(B, out_channels, *S)`` equals :meth:`forward` with the same hooks in block layout, up to float rounding.
        ``out_channels`` (a list of indices) decodes only those output channels: the output is then
        ``forward(...)[0][:, out_channels]``, and the final conv and the last gather do that much less work.

        Raises:
            ValueError: when the decoder cannot run this way (see :meth:`supports_tokens`).
        """
        hooks = hooks or {}
        planned = self._token_plan(list(hooks), x.device) if not self.training else None
        if planned is None or torch.jit.is_tracing() or torch.jit.is_scripting():
            raise ValueError("this decoder cannot decode block tokens here (see ConvDecoder.supports_tokens).")
        plan, chain = planned
        d = self.spatial_dims
        b, p = x.shape[:2]
        block = [int(m) for m in block_size]
        for i, (w, bias, act_layer, c, s) in enumerate(plan):
            y = _act_(act_layer, torch.nn.functional.linear(x, w, bias))  # (B, P, V, sub-voxel * c)
            # inside each block: (voxel axes, sub-voxel axes, c) -> (axis 0 voxel, axis 0 sub-voxel, ..., c)
            y = y.view(b, p, *block, *([s] * d), c)
            y = y.permute(0, 1, *[k for a in range(d) for k in (2 + a, 2 + d + a)], 2 + 2 * d)
            block = [m * s for m in block]
            x = y.reshape(b, p, math.prod(block), c)
            if i in hooks:
                x = hooks[i](x)
        return self._folded_tail(x, chain, grid, block, out_channels)
