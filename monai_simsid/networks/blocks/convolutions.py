"""Generic skip-free convolutional encoder / decoder stacks (dimension-agnostic).

These are shared by SimSID-3D and the baseline models (autoencoder, GANomaly). They deliberately have
no skip connections: skips would let anomalous content bypass the bottleneck and leak into the
reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = ["ConvEncoder", "ConvDecoder", "DEFAULT_ACT"]

DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.2})


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

    Each level is ``conv(k3, stride s) -> norm -> act -> conv(k3) -> norm -> act``; level ``i`` outputs
    ``channels[i]`` channels at ``1 / prod(strides[: i + 1])`` of the input resolution.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: number of input channels.
        channels: output channels of each level.
        strides: stride of the first conv of each level (an int applies to all levels).
        norm: MONAI norm name/tuple (e.g. ``"batch"``, ``("group", {"num_groups": 8})``) or None.
        act: MONAI activation name/tuple or None.

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
    ) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        self.strides = _check_common(spatial_dims, channels, strides)
        self.spatial_dims = spatial_dims
        self.channels = tuple(int(c) for c in channels)
        conv = Conv[Conv.CONV, spatial_dims]
        bias = norm is None
        levels = []
        prev = in_channels
        for c, s in zip(self.channels, self.strides):
            levels.append(
                nn.Sequential(
                    conv(prev, c, kernel_size=3, stride=s, padding=1, bias=bias),
                    _norm(norm, spatial_dims, c),
                    _act(act),
                    conv(c, c, kernel_size=3, stride=1, padding=1, bias=bias),
                    _norm(norm, spatial_dims, c),
                    _act(act),
                )
            )
            prev = c
        self.levels = nn.ModuleList(levels)

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def downsample_factor(self) -> int:
        """Total down-sampling factor per axis (``2 ** len(channels)`` for the default strides)."""
        return math.prod(self.strides)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Encode ``x``; return the bottleneck, or the list of all level outputs if ``return_features``."""
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats if return_features else x


def _up_kernel_padding(stride: int, overlapping: bool = True) -> tuple[int, int]:
    if stride == 1:
        return 3, 1
    if overlapping and stride % 2 == 0:
        return 2 * stride, stride // 2  # e.g. k4 s2 p1: exact x2
    return stride, 0  # kernel == stride: non-overlapping, 8x cheaper in 3D


class ConvDecoder(nn.Module):
    """Skip-free transposed-convolution decoder.

    Level ``i`` maps ``in_channels`` (level 0) or ``channels[i - 1]`` to ``channels[i]`` with a
    transposed conv (k4 s2 p1 for stride 2) + norm + act; a final conv maps ``channels[-1]`` to
    ``out_channels``. Callables ("hooks", e.g. memory blocks) can be applied after chosen levels.

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
            ``stride`` (k2 s2: no overlap, about 8x fewer multiply-adds in 3D; the CPU default).
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
    ) -> None:
        super().__init__()
        self.strides = _check_common(spatial_dims, channels, strides)
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}.")
        if out_kernel_size not in (1, 3):
            raise ValueError(f"out_kernel_size must be 1 or 3, got {out_kernel_size}.")
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
            k, p = _up_kernel_padding(s, overlapping_up)
            levels.append(
                nn.Sequential(
                    convt(prev, c, kernel_size=k, stride=s, padding=p, bias=bias),
                    _norm(norm, spatial_dims, c),
                    _act(act),
                )
            )
            prev = c
        self.levels = nn.ModuleList(levels)
        self.final = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](prev, out_channels, kernel_size=out_kernel_size, padding=out_kernel_size // 2),
            _act(out_act),
        )

    @property
    def upsample_factor(self) -> int:
        return math.prod(self.strides)

    def forward(
        self, x: torch.Tensor, hooks: Mapping[int, Callable[[torch.Tensor], torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode ``x``.

        Args:
            x: code of shape (B, in_channels, *S).
            hooks: optional ``{level_index: callable}``; the callable replaces that level's output.

        Returns:
            ``(output, features)`` where ``features[i]`` is level ``i``'s output (after its hook).
        """
        hooks = hooks or {}
        bad = [i for i in hooks if not 0 <= int(i) < len(self.levels)]
        if bad:
            raise ValueError(f"hook levels {bad} out of range for {len(self.levels)} decoder levels.")
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x)
            if i in hooks:
                x = hooks[i](x)
            feats.append(x)
        return self.final(x), feats
