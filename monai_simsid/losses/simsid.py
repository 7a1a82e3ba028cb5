"""SimSID training losses."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "SimSIDLoss",
    "AdversarialLoss",
    "AnomalyHeadLoss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "masked_restoration_loss",
]


class SimSIDLoss(nn.Module):
    """Reconstruction + teacher + feature-distillation loss of SimSID.

    ``recon = MSE(student_recon, x)``, ``teacher = MSE(teacher_recon, x)``,
    ``distill = mean_l MSE(student_features[l], teacher_features[l].detach())`` and
    ``total = recon_weight * recon + teacher_weight * teacher + distill_weight * distill``
    (paper weights 10 / 0.01 / 0.001 by default).

    Args:
        recon_weight: weight of the student reconstruction term.
        teacher_weight: weight of the teacher reconstruction term.
        distill_weight: weight of the distillation term.
    """

    def __init__(self, recon_weight: float = 10.0, teacher_weight: float = 0.01, distill_weight: float = 0.001) -> None:
        super().__init__()
        if min(recon_weight, teacher_weight, distill_weight) < 0:
            raise ValueError("loss weights must be non-negative.")
        self.recon_weight, self.teacher_weight, self.distill_weight = recon_weight, teacher_weight, distill_weight

    def forward(self, x: torch.Tensor, output: Any) -> dict[str, torch.Tensor]:
        """``x``: input images; ``output``: a ``SimSIDTrainOutput``. Returns the terms and ``"total"``."""
        if len(output.student_features) != len(output.teacher_features):
            raise ValueError("student and teacher feature lists differ in length.")
        recon = F.mse_loss(output.student_recon, x)
        teacher = F.mse_loss(output.teacher_recon, x)
        if output.student_features:
            distill = torch.stack(
                [F.mse_loss(s, t.detach()) for s, t in zip(output.student_features, output.teacher_features)]
            ).mean()
        else:
            distill = recon.new_zeros(())
        total = self.recon_weight * recon + self.teacher_weight * teacher + self.distill_weight * distill
        return {"recon": recon, "teacher": teacher, "distill": distill, "total": total}


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, weight: float = 0.005) -> torch.Tensor:
    """``weight * (BCE(real, 1) + BCE(fake, 0))``; pass ``fake_logits`` of detached reconstructions."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return weight * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor, weight: float = 0.005) -> torch.Tensor:
    """``weight * BCE(fake, 1)``: the generator tries to make reconstructions look real."""
    return weight * F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class AdversarialLoss(nn.Module):
    """Holds the generator / discriminator adversarial weights (paper: 0.005 each)."""

    def __init__(self, generator_weight: float = 0.005, discriminator_weight: float = 0.005) -> None:
        super().__init__()
        if generator_weight < 0 or discriminator_weight < 0:
            raise ValueError("adversarial weights must be non-negative.")
        self.generator_weight, self.discriminator_weight = generator_weight, discriminator_weight

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return discriminator_loss(real_logits, fake_logits, self.discriminator_weight)

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return generator_adversarial_loss(fake_logits, self.generator_weight)

    def forward(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(fake_logits)


def masked_restoration_loss(recon: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between ``recon`` and the ``clean`` target over the voxels of ``mask`` ``(B, 1, *S)`` (0 if empty).

    The plain reconstruction term averages over every voxel, where synthetic anomalies are a small fraction; this
    term averages over the corrupted voxels only, so removing the anomaly carries weight of its own.
    """
    m = mask.to(recon.dtype).expand_as(recon)
    denom = m.sum()
    if float(denom) <= 0:
        return recon.new_zeros(()) + 0.0 * recon.sum()  # keep the graph connected
    return ((recon - clean) ** 2 * m).sum() / denom


class AnomalyHeadLoss(nn.Module):
    """BCE + soft Dice of the anomaly-head logits against the synthetic-anomaly mask.

    ``loss = bce_weight * BCE(logits, mask; pos_weight) + dice_weight * (1 - soft_dice)``; the soft Dice is computed
    over the whole batch (so windows without anomalies do not give undefined terms) with smoothing ``smooth``.

    Args:
        bce_weight: weight of the BCE term.
        dice_weight: weight of the soft-Dice term.
        pos_weight: BCE weight of the positive (anomalous) voxels.
        smooth: Dice smoothing constant.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, pos_weight: float = 1.0,
                 smooth: float = 1.0) -> None:
        super().__init__()
        if min(bce_weight, dice_weight, smooth) < 0 or pos_weight <= 0:
            raise ValueError("bce_weight, dice_weight and smooth must be >= 0 and pos_weight > 0.")
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)
        self.pos_weight, self.smooth = float(pos_weight), float(smooth)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = mask.to(logits.dtype)
        pw = logits.new_tensor(self.pos_weight)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
        prob = torch.sigmoid(logits)
        inter = (prob * target).sum()
        dice = (2 * inter + self.smooth) / (prob.sum() + target.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)
