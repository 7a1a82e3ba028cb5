"""Common base of the anomaly-model trainers: optimiser steps with optional CUDA mixed precision."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import Trainer
from torch.optim import Optimizer

__all__ = ["AnomalyTrainer"]


class AnomalyTrainer(Trainer):
    """MONAI ``Trainer`` plus the optimiser-step plumbing shared by every model's trainer.

    Subclasses override ``_iteration`` (the way MONAI's ``GanTrainer`` does) and call :meth:`_autocast` around
    forward passes and :meth:`_step` for each optimiser. Mixed precision is used only when ``amp`` is set and the
    device is CUDA; on CPU everything runs in float32.
    """

    def __init__(self, *args: Any, device: str | torch.device, amp: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, device=device, amp=amp, **kwargs)
        use_cuda_amp = amp and torch.device(device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_cuda_amp else None
        self._autocast_device = torch.device(device).type if use_cuda_amp else None

    def _autocast(self):
        if self._autocast_device is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self._autocast_device)

    def _step(self, loss: torch.Tensor, optimizer: Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

