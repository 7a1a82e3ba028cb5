"""Ignite engines."""

from __future__ import annotations

from .evaluator import AnomalyEvaluator
from .simsid_trainer import SimSIDTrainer

__all__ = ["AnomalyEvaluator", "SimSIDTrainer"]
