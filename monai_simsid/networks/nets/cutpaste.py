"""CutPaste self-supervised baseline (dimension-agnostic).

Pretext task: classify windows as normal (0), cut-paste (1) or scar (2). Downstream: a Gaussian density
(:class:`~monai_simsid.networks.blocks.density.GaussianDensity`) fitted to the embeddings of normal windows
scores new windows by Mahalanobis distance. The encoder can be exported for transfer learning
(e.g. into :class:`~monai_simsid.networks.nets.ganomaly.GANomaly`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Pool

from monai_simsid.networks.blocks.convolutions import ConvEncoder, check_network_args
from monai_simsid.networks.blocks.density import GaussianDensity
from monai_simsid.networks.nets.autoencoder import _check_window

__all__ = ["CutPasteNet", "CutPasteOutput", "CutPasteTrainOutput", "GaussianDensity"]


class CutPasteTrainOutput(NamedTuple):
    """Training-mode result of :class:`CutPasteNet`: class ``logits`` (B, num_classes), ``embedding`` (B, D)."""

    logits: torch.Tensor
    embedding: torch.Tensor


class CutPasteOutput(NamedTuple):
    """Eval-mode result of :class:`CutPasteNet`.

    Attributes:
        embedding: ``(B, embed_dim)`` window embeddings.
        anomaly_map: ``(B, 1, *S)``: each window's Mahalanobis distance, constant over the window (the
            overlapping sliding window turns these per-window values into a voxel map).
        score: ``(B,)`` Mahalanobis distance to the fitted density (higher = more anomalous).
    """

    embedding: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


class CutPasteNet(nn.Module):
    """CutPaste classifier + Gaussian density estimator.

    ``ConvEncoder`` -> global average pooling -> projection head MLP
    (``Linear(C, C) -> BatchNorm1d -> ReLU -> Linear(C, embed_dim)``) = embedding -> ``Linear`` classifier.
    ``self.density`` (a :class:`GaussianDensity` on the embedding) must be fitted on normal windows with
    :meth:`fit_density` before eval-mode calls; its buffers live in the ``state_dict``.

    Args:
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        in_channels: image channels.
        channels: encoder channels per level (stride 2 each).
        embed_dim: embedding dimension (projection head output, density dimension).
        num_classes: pretext classes (3: normal, cut-paste, scar; 2 for the binary variant).
        norm: MONAI norm name/tuple of the encoder, or None.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        embed_dim: int = 128,
        num_classes: int = 3,
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        check_network_args(spatial_dims, in_channels, channels)
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.encoder = ConvEncoder(spatial_dims, in_channels, channels, norm=norm)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        c = int(channels[-1])
        self.head = nn.Sequential(
            nn.Linear(c, c, bias=False), nn.BatchNorm1d(c), nn.ReLU(inplace=True), nn.Linear(c, embed_dim)
        )
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.density = GaussianDensity(embed_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Window embeddings ``(B, embed_dim)`` (gradients flow; wrap in ``torch.no_grad()`` to fit)."""
        _check_window(x, self.spatial_dims, self.in_channels)
        return self.head(self.pool(self.encoder(x)).flatten(1))

    @torch.no_grad()
    def fit_density(self, embeddings: torch.Tensor) -> GaussianDensity:
        """Fit ``self.density`` to embeddings ``(N, embed_dim)`` of normal windows (see :meth:`embed`)."""
        return self.density.fit(embeddings)

    def encoder_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The encoder weights with ``encoder.``-prefixed keys (as in SimSID / auto-encoder / GANomaly
        state dicts), detached copies, for :meth:`GANomaly.load_encoder_from`."""
        return OrderedDict(("encoder." + k, v.detach().clone()) for k, v in self.encoder.state_dict().items())

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> CutPasteTrainOutput | CutPasteOutput:
        """Classify / score windows.

        Args:
            x: windows ``(B, C, *roi)``.
            region: ignored (accepted for the common model contract).

        Returns:
            :class:`CutPasteTrainOutput` in training mode; :class:`CutPasteOutput` in eval mode.

        Raises:
            RuntimeError: in eval mode if the density has not been fitted.
        """
        if not self.training and not self.density.is_fitted:
            raise RuntimeError(
                "CutPasteNet needs a fitted density in eval mode: call net.fit_density(embeddings of normal "
                "windows) (or load a state_dict holding one) first."
            )
        emb = self.embed(x)
        if self.training:
            return CutPasteTrainOutput(self.classifier(emb), emb)
        score = self.density(emb)
        amap = score.reshape(-1, *([1] * (self.spatial_dims + 1))).expand(-1, 1, *x.shape[2:]).contiguous()
        return CutPasteOutput(emb, amap, score)
