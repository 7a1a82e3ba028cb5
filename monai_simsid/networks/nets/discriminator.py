"""SimSID discriminator (dimension-agnostic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = ["SimSIDDiscriminator"]


class SimSIDDiscriminator(nn.Module):
    """Strided-conv discriminator producing one realism logit per image.

    ``len(channels)`` convs (k4, stride 2, padding 1) with LeakyReLU(0.2); inner convs (all but the first
    and the last) are normalised. Then global average pooling and a linear layer to one logit. Works for
    any input whose sides are at least ``2 ** len(channels)`` (32 for the default).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        channels: output channels of each conv.
        norm: MONAI norm name/tuple for the inner convs, or None.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or len(channels) == 0 or any(int(c) < 1 for c in channels):
            raise ValueError(f"invalid in_channels={in_channels} or channels={channels}.")
        self.min_size = 2 ** len(channels)
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            inner = 0 < i < len(channels) - 1 and norm is not None
            layers.append(conv(prev, c, kernel_size=4, stride=2, padding=1, bias=not inner))
            if inner:
                layers.append(get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=c))
            layers.append(get_act_layer(("leakyrelu", {"negative_slope": 0.2})))
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Linear(prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, *S) -> logits (B, 1)."""
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be >= {self.min_size} per side.")
        h = self.features(x)
        return self.fc(self.pool(h).flatten(1))
