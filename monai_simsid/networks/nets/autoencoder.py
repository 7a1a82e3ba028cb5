"""Convolutional auto-encoder baseline (dimension-agnostic).

The classic reconstruction baseline for CT anomaly detection: a skip-free ConvNet encoder squeezes the
window through a bottleneck, a DeConvNet decoder reconstructs it, and the voxel anomaly map is the
absolute reconstruction error (its window mean is the MAE score that is later thresholded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from monai_simsid.networks.blocks.convolutions import ConvDecoder, ConvEncoder, check_network_args

__all__ = ["ConvAutoEncoder", "AutoEncoderOutput", "AutoEncoderTrainOutput"]


class AutoEncoderTrainOutput(NamedTuple):
    """Training-mode result of :class:`ConvAutoEncoder`."""

    reconstruction: torch.Tensor


class AutoEncoderOutput(NamedTuple):
    """Eval-mode result of :class:`ConvAutoEncoder`.

    Attributes:
        reconstruction: reconstruction, same shape as the input.
        anomaly_map: ``(B, 1, *S)`` absolute reconstruction error averaged over channels.
        score: ``(B,)`` mean of ``anomaly_map`` per window (the MAE).
    """

    reconstruction: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


def _check_window(x: torch.Tensor, spatial_dims: int, in_channels: int, factor: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, in_channels, *S)`` with each side divisible by ``factor``."""
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected a (B, {in_channels}, {spatial_dims} spatial dims) input, got {tuple(x.shape)}."
        )
    if any(s % factor for s in x.shape[2:]):
        raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be divisible by {factor} per side.")


class ConvAutoEncoder(nn.Module):
    """Skip-free convolutional auto-encoder.

    ``ConvEncoder`` (``len(channels)`` stride-2 levels) -> optional 1x1 conv to ``latent_channels`` ->
    ``ConvDecoder`` (the channels reversed) -> reconstruction. There are no skip connections, so
    everything has to pass the bottleneck at ``1 / 2 ** len(channels)`` resolution.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: image channels (also the reconstruction channels).
        channels: encoder channels per level (the decoder uses them reversed).
        latent_channels: if given, a 1x1 conv squeezes the bottleneck to this many channels (a tighter
            bottleneck); None keeps ``channels[-1]``.
        norm: MONAI norm name/tuple or None.
        out_act: optional activation on the reconstruction (e.g. ``"sigmoid"`` for [0, 1] windows).

    The encoder is stored as ``self.encoder`` so its weights (``encoder.*`` keys) are interchangeable
    with SimSID's / GANomaly's encoders of the same ``channels``.

    Example::

        net = ConvAutoEncoder(3).eval()
        out = net(torch.rand(2, 1, 64, 64, 64))  # out.anomaly_map: (2, 1, 64, 64, 64), out.score: (2,)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_channels: int | None = None,
        norm: str | tuple | None = "batch",
        out_act: str | tuple | None = None,
    ) -> None:
        super().__init__()
        check_network_args(spatial_dims, in_channels, channels)
        if latent_channels is not None and int(latent_channels) < 1:
            raise ValueError(f"latent_channels must be positive or None, got {latent_channels}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, norm=norm)
        self.factor = self.encoder.downsample_factor
        code = channels[-1]
        if latent_channels is None:
            self.bottleneck: nn.Module = nn.Identity()
        else:
            code = int(latent_channels)
            self.bottleneck = Conv[Conv.CONV, spatial_dims](channels[-1], code, kernel_size=1)
        self.decoder = ConvDecoder(
            spatial_dims, tuple(reversed(channels)), in_channels, in_channels=code, norm=norm, out_act=out_act
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck code ``(B, latent_channels or channels[-1], *S / 2**len(channels))``."""
        return self.bottleneck(self.encoder(x))

    def forward(
        self, x: torch.Tensor, region: torch.Tensor | None = None
    ) -> AutoEncoderTrainOutput | AutoEncoderOutput:
        """Reconstruct ``x``.

        Args:
            x: windows ``(B, C, *roi)``; each side divisible by ``2 ** len(channels)``.
            region: ignored (accepted for the common model contract).

        Returns:
            :class:`AutoEncoderTrainOutput` in training mode, :class:`AutoEncoderOutput` in eval mode.
        """
        _check_window(x, self.spatial_dims, self.in_channels, self.factor)
        recon, _ = self.decoder(self.encode(x))
        if self.training:
            return AutoEncoderTrainOutput(recon)
        amap = (x - recon).abs().mean(1, keepdim=True)
        return AutoEncoderOutput(recon, amap, amap.flatten(1).mean(1))
