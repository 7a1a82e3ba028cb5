"""SimSID training losses."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SimSIDLoss", "AdversarialLoss", "discriminator_loss", "generator_adversarial_loss"]


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
