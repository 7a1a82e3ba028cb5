"""Ignite engines."""

from __future__ import annotations

from .cutpaste_trainer import CutPasteTrainer, embed_normal_windows, fit_cutpaste_density
from .evaluator import AnomalyEvaluator
from .ganomaly_trainer import GANomalyTrainer
from .reconstruction_trainer import ReconstructionTrainer
from .simsid_trainer import SimSIDTrainer

__all__ = ["AnomalyEvaluator", "SimSIDTrainer"]
__all__ += [
    "CutPasteTrainer",
    "GANomalyTrainer",
    "ReconstructionTrainer",
    "embed_normal_windows",
    "fit_cutpaste_density",
]
