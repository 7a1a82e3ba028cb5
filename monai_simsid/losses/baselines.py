"""Training losses of the baseline models (auto-encoder, CutPaste, GANomaly).

Each returns a dict of its terms plus ``"total"`` (the term to back-propagate), like :class:`SimSIDLoss`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_simsid.losses.simsid import discriminator_loss, generator_adversarial_loss

__all__ = ["ReconstructionLoss", "CutPasteLoss", "GANomalyLoss"]


def _recon(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.reconstruction


class ReconstructionLoss(nn.Module):
    """Reconstruction loss of the auto-encoder: ``L1`` (mean absolute error) or ``L2`` (MSE).

    Args:
        kind: ``"l1"`` or ``"l2"``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        kind = str(kind).lower()
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}.")
        self.kind = kind

    def forward(self, x: torch.Tensor, output: Any) -> dict[str, torch.Tensor]:
        """``x``: input windows; ``output``: an ``AutoEncoderTrainOutput`` (or the reconstruction tensor).

        Returns ``{"recon": loss, "total": loss}``.
        """
        recon = _recon(output)
        if recon.shape != x.shape:
            raise ValueError(f"reconstruction shape {tuple(recon.shape)} != input shape {tuple(x.shape)}.")
        loss = F.l1_loss(recon, x) if self.kind == "l1" else F.mse_loss(recon, x)
        return {"recon": loss, "total": loss}


class CutPasteLoss(nn.Module):
    """Cross-entropy of the CutPaste pretext classification (0 normal, 1 cut-paste, 2 scar).

    Args:
        label_smoothing: passed to :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def forward(self, output: Any, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``output``: a ``CutPasteTrainOutput`` (or logits ``(B, K)``); ``labels``: ``(B,)`` class indices.

        Returns ``{"ce": loss, "accuracy": batch accuracy (no grad), "total": loss}``.
        """
        logits = output if isinstance(output, torch.Tensor) else output.logits
        labels = torch.as_tensor(labels, device=logits.device).reshape(-1).long()
        if logits.dim() != 2 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"expected logits (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}."
            )
        ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"ce": ce, "accuracy": acc, "total": ce}


class GANomalyLoss(nn.Module):
    """Generator loss of GANomaly and its discriminator loss.

    Generator: ``adv = MSE(f(x̂), f(x).detach())`` (feature matching on the discriminator's last feature
    map), ``con = L1(x̂, x)`` (contextual), ``enc = MSE(ẑ, z)`` (latent) and
    ``total = adv_weight * adv + con_weight * con + enc_weight * enc`` (paper weights 1 / 50 / 1).
    Discriminator: ``BCE(real, 1) + BCE(fake, 0)`` via :func:`monai_simsid.losses.simsid.discriminator_loss`.

    Typical step::

        out = net(x)                                   # GANomalyTrainOutput (train mode)
        _, f_real = net.discriminate(x)
        _, f_fake = net.discriminate(out.reconstruction)
        g = loss(x, out, f_real, f_fake)["total"]      # generator optimiser step
        r, _ = net.discriminate(x)
        f, _ = net.discriminate(out.reconstruction.detach())
        d = loss.discriminator_loss(r, f)              # discriminator optimiser step

    Args:
        adv_weight: weight of the feature-matching adversarial term.
        con_weight: weight of the contextual (L1 reconstruction) term.
        enc_weight: weight of the latent (L2) term.
        disc_weight: weight of the discriminator BCE loss.
    """

    def __init__(
        self, adv_weight: float = 1.0, con_weight: float = 50.0, enc_weight: float = 1.0, disc_weight: float = 1.0
    ) -> None:
        super().__init__()
        if min(adv_weight, con_weight, enc_weight, disc_weight) < 0:
            raise ValueError("loss weights must be non-negative.")
        self.adv_weight, self.con_weight, self.enc_weight = float(adv_weight), float(con_weight), float(enc_weight)
        self.disc_weight = float(disc_weight)

    def forward(
        self, x: torch.Tensor, output: Any, real_features: torch.Tensor, fake_features: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Generator terms.

        Args:
            x: input windows.
            output: a ``GANomalyTrainOutput`` (``reconstruction``, ``latent``, ``latent_hat``).
            real_features: discriminator features of ``x`` (detached here).
            fake_features: discriminator features of ``output.reconstruction`` (not detached).

        Returns:
            ``{"adv", "con", "enc", "total"}``.
        """
        if output.reconstruction.shape != x.shape:
            raise ValueError(f"reconstruction shape {tuple(output.reconstruction.shape)} != input {tuple(x.shape)}.")
        if real_features.shape != fake_features.shape:
            raise ValueError("real and fake discriminator features differ in shape.")
        adv = F.mse_loss(fake_features, real_features.detach())
        con = F.l1_loss(output.reconstruction, x)
        enc = F.mse_loss(output.latent_hat, output.latent)
        total = self.adv_weight * adv + self.con_weight * con + self.enc_weight * enc
        return {"adv": adv, "con": con, "enc": enc, "total": total}

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """``disc_weight * (BCE(real, 1) + BCE(fake, 0))``; pass logits of detached reconstructions."""
        return discriminator_loss(real_logits, fake_logits, self.disc_weight)

    def generator_bce(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Optional non-saturating ``BCE(fake, 1)`` generator term (weighted by ``adv_weight``), for
        variants that use it instead of feature matching."""
        return generator_adversarial_loss(fake_logits, self.adv_weight)
