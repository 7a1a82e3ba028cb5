"""Losses."""

from __future__ import annotations

from .baselines import CutPasteLoss, GANomalyLoss, ReconstructionLoss
from .simsid import AdversarialLoss, SimSIDLoss, discriminator_loss, generator_adversarial_loss

__all__ = ["AdversarialLoss", "SimSIDLoss", "discriminator_loss", "generator_adversarial_loss"]
__all__ += ["CutPasteLoss", "GANomalyLoss", "ReconstructionLoss"]
