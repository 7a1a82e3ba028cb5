"""GANomaly baseline, patch-wise and with encoder transfer learning (dimension-agnostic).

Akcay et al., "GANomaly: Semi-Supervised Anomaly Detection via Adversarial Training" (ACCV 2018), trained
on fixed-size windows (patch-wise GANomaly); the first encoder can be initialised from another model's
encoder (TL-GANomaly), e.g. a CutPaste pretext network.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from typing import NamedTuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer

from monai_simsid.networks.blocks.convolutions import ConvDecoder, ConvEncoder, DEFAULT_ACT, check_network_args
from monai_simsid.networks.nets.autoencoder import _check_window
from monai_simsid.networks.nets.discriminator import SimSIDDiscriminator

__all__ = ["GANomaly", "GANomalyOutput", "GANomalyTrainOutput", "extract_encoder_state_dict"]

_NESTED_KEYS = ("state_dict", "model", "net", "network", "model_state_dict")


class GANomalyTrainOutput(NamedTuple):
    """Training-mode result of :class:`GANomaly`: ``reconstruction`` x̂, ``latent`` z = G_E(x) and
    ``latent_hat`` ẑ = E(x̂), both ``(B, latent_dim, 1, ..., 1)``."""

    reconstruction: torch.Tensor
    latent: torch.Tensor
    latent_hat: torch.Tensor


class GANomalyOutput(NamedTuple):
    """Eval-mode result of :class:`GANomaly`.

    Attributes:
        reconstruction: x̂, same shape as the input.
        anomaly_map: ``(B, 1, *S)``: ``|x - x̂|`` (mean over channels) ``+ map_latent_weight * score``
            broadcast over the window.
        score: ``(B,)`` latent distance ``mean((z - ẑ) ** 2)`` per window (the GANomaly score).
    """

    reconstruction: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


def extract_encoder_state_dict(
    source: Mapping[str, torch.Tensor] | str | PathLike, prefix: str = "encoder."
) -> dict[str, torch.Tensor]:
    """Encoder weights (keys relative to a :class:`ConvEncoder`) from a state dict, checkpoint or path.

    Accepts a bare ``ConvEncoder`` state dict (``levels.*`` keys), a full model state dict whose encoder
    keys start with ``prefix`` (SimSID, :class:`ConvAutoEncoder`, :class:`CutPasteNet`,
    ``CutPasteNet.encoder_state_dict()``, GANomaly), a checkpoint dict nesting one under
    ``"state_dict"`` / ``"model"`` / ``"net"`` / ``"network"`` / ``"model_state_dict"``, or a path to any of
    these saved with ``torch.save``. ``DataParallel``'s ``module.`` prefix is stripped.
    """
    if isinstance(source, (str, PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise ValueError(f"expected a state dict, a checkpoint dict or a path, got {type(source).__name__}.")
    for key in _NESTED_KEYS:
        if isinstance(source.get(key), Mapping):
            source = source[key]
            break
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in source.items()}
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


class GANomaly(nn.Module):
    """GANomaly: encoder-decoder-encoder generator + discriminator.

    Generator: ``G_E`` = ``self.encoder`` (:class:`ConvEncoder`) + ``self.to_latent`` (a "global" conv
    whose kernel covers the whole bottleneck) -> ``z`` ``(B, latent_dim, 1, ..., 1)``; ``G_D`` =
    ``self.from_latent`` (transposed global conv) + ``self.decoder`` (:class:`ConvDecoder`) -> x̂;
    ``E`` = ``self.encoder_hat`` + ``self.to_latent_hat`` -> ẑ. Discriminator: a
    :class:`SimSIDDiscriminator`; :meth:`discriminate` returns its logits and last feature map (for the
    feature-matching adversarial loss).

    In eval mode the window score is the latent distance ``mean((z - ẑ) ** 2)`` and the voxel map is
    ``|x - x̂|.mean(channels) + map_latent_weight * score`` (the score broadcast over the window): the
    reconstruction error localises inside a window, the latent term lifts whole windows whose code is
    off, and overlapping windows blend it into a smooth map.

    The global latent convolutions fix the window size: inputs must be exactly ``roi_size``.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: image channels.
        channels: encoder channels per level (stride 2 each; the decoder uses them reversed).
        latent_dim: size of the latent vector z.
        map_latent_weight: weight of the broadcast latent score in the anomaly map (>= 0).
        roi_size: window size (an int for a cube); each side divisible by ``2 ** len(channels)`` and at
            least ``2 ** len(disc_channels)``.
        disc_channels: discriminator channels.
        norm: MONAI norm of encoders/decoder/discriminator, or None.
        out_act: optional activation on x̂ (e.g. ``"tanh"`` for [-1, 1] windows, as in the paper).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 100,
        map_latent_weight: float = 0.5,
        roi_size: int | Sequence[int] = 64,
        disc_channels: Sequence[int] = (16, 32, 64, 128, 256),
        norm: str | tuple | None = "batch",
        out_act: str | tuple | None = None,
    ) -> None:
        super().__init__()
        check_network_args(spatial_dims, in_channels, channels)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}.")
        if map_latent_weight < 0:
            raise ValueError(f"map_latent_weight must be >= 0, got {map_latent_weight}.")
        roi = (int(roi_size),) * spatial_dims if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
        factor = 2 ** len(channels)
        if len(roi) != spatial_dims or any(r < 1 or r % factor for r in roi):
            raise ValueError(
                f"roi_size must have {spatial_dims} positive sides divisible by 2**len(channels)={factor}, "
                f"got {roi_size}."
            )
        if len(disc_channels) == 0 or min(roi) < 2 ** len(disc_channels):
            raise ValueError(f"roi_size {roi} too small for a {len(disc_channels)}-conv discriminator.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.latent_dim = int(latent_dim)
        self.map_latent_weight = float(map_latent_weight)
        self.roi_size = roi
        self.factor = factor
        bottleneck = tuple(r // factor for r in roi)
        c = int(channels[-1])
        conv, convt = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]

        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, norm=norm)
        self.to_latent = conv(c, latent_dim, kernel_size=bottleneck)
        self.from_latent = nn.Sequential(
            convt(latent_dim, c, kernel_size=bottleneck, bias=norm is None),
            nn.Identity() if norm is None else get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=c),
            get_act_layer(DEFAULT_ACT),
        )
        self.decoder = ConvDecoder(spatial_dims, tuple(reversed(channels)), in_channels, in_channels=c, norm=norm,
                                   out_act=out_act)
        self.encoder_hat = ConvEncoder(spatial_dims, in_channels, channels, norm=norm)
        self.to_latent_hat = conv(c, latent_dim, kernel_size=bottleneck)
        self.discriminator = SimSIDDiscriminator(spatial_dims, in_channels, disc_channels, norm=norm)

    # ------------------------------------------------------------------ parameters / transfer learning
    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of G_E, G_D and E (everything but the discriminator), trainable or not."""
        return (p for n, p in self.named_parameters() if not n.startswith("discriminator."))

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The discriminator's parameters."""
        return self.discriminator.parameters()

    def load_encoder_from(
        self,
        source: Mapping[str, torch.Tensor] | str | PathLike,
        strict: bool = False,
        freeze: bool = False,
    ) -> nn.modules.module._IncompatibleKeys:
        """Initialise G_E's conv trunk (``self.encoder``) from another model's encoder (transfer learning).

        Args:
            source: encoder weights: ``CutPasteNet.encoder_state_dict()``, a SimSID / auto-encoder /
                GANomaly state dict (``encoder.*`` keys are used), a bare ``ConvEncoder`` state dict, a
                checkpoint dict or a path (see :func:`extract_encoder_state_dict`). The channels must match.
            strict: require the keys to match ``self.encoder`` exactly.
            freeze: set ``requires_grad=False`` on the loaded encoder (its BatchNorm running statistics
                still update in training mode unless the caller puts ``net.encoder`` in eval mode).

        Returns:
            The missing / unexpected keys reported by ``load_state_dict``.

        Raises:
            ValueError: if no key of ``source`` matches the encoder (nothing would be loaded).
        """
        sd = extract_encoder_state_dict(source)
        own = self.encoder.state_dict()
        if not set(sd) & set(own):
            raise ValueError("no encoder weights found in source (expected 'encoder.*' or 'levels.*' keys).")
        bad = [k for k in set(sd) & set(own) if sd[k].shape != own[k].shape]
        if bad:
            raise ValueError(f"encoder shape mismatch for {sorted(bad)[:3]}...: build GANomaly with the same channels.")
        result = self.encoder.load_state_dict(sd, strict=strict)
        self.freeze_encoder(freeze)
        return result

    def freeze_encoder(self, freeze: bool = True) -> None:
        """Set ``requires_grad = not freeze`` on G_E's conv trunk (``self.encoder``)."""
        for p in self.encoder.parameters():
            p.requires_grad_(not freeze)

    # ------------------------------------------------------------------ forward
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = G_E(x): ``(B, latent_dim, 1, ..., 1)``."""
        return self.to_latent(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ = G_D(z)."""
        return self.decoder(self.from_latent(z))[0]

    def _check(self, x: torch.Tensor) -> None:
        _check_window(x, self.spatial_dims, self.in_channels)
        if tuple(x.shape[2:]) != self.roi_size:
            raise ValueError(f"GANomaly was built for windows of {self.roi_size}, got {tuple(x.shape[2:])}.")

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> GANomalyTrainOutput | GANomalyOutput:
        """Run the generator.

        Args:
            x: windows ``(B, C, *roi_size)``.
            region: ignored (accepted for the common model contract).

        Returns:
            :class:`GANomalyTrainOutput` in training mode, :class:`GANomalyOutput` in eval mode.
        """
        self._check(x)
        z = self.encode(x)
        recon = self.decode(z)
        z_hat = self.to_latent_hat(self.encoder_hat(recon))
        if self.training:
            return GANomalyTrainOutput(recon, z, z_hat)
        score = (z - z_hat).pow(2).flatten(1).mean(1)
        amap = (x - recon).abs().mean(1, keepdim=True)
        if self.map_latent_weight > 0:
            amap = amap + self.map_latent_weight * score.reshape(-1, *([1] * (self.spatial_dims + 1)))
        return GANomalyOutput(recon, amap, score)

    def discriminate(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator ``(logits (B,), features)``: logits higher = more realistic; ``features`` is the
        last conv feature map, used by the feature-matching loss of :class:`~monai_simsid.losses.GANomalyLoss`."""
        d = self.discriminator
        if min(img.shape[2:]) < d.min_size:
            raise ValueError(f"input spatial size {tuple(img.shape[2:])} must be >= {d.min_size} per side.")
        feats = d.features(img)
        return d.fc(d.pool(feats).flatten(1)).reshape(-1), feats
