"""Ignite/MONAI trainer for the convolutional auto-encoder baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.engines.base import AnomalyTrainer
from monai_simsid.losses.baselines import ReconstructionLoss

__all__ = ["ReconstructionTrainer"]


class ReconstructionTrainer(AnomalyTrainer):
    """Train a :class:`~monai_simsid.networks.nets.ConvAutoEncoder` on windows of normal scans.

    Each iteration runs the auto-encoder on the windows and takes one optimiser step on the reconstruction
    loss (:class:`~monai_simsid.losses.ReconstructionLoss`, L1 by default).

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key`` ``(B, 1, *roi)`` and optionally ``region_key`` ``(B,)``
            (e.g. a ``Dataset`` of preprocessed normal scans with ``RandBodyWindowsd`` as transform).
        network: a :class:`~monai_simsid.networks.nets.ConvAutoEncoder` (or any model returning a
            reconstruction, see :class:`ReconstructionLoss`).
        optimizer: optimiser over ``network.parameters()``.
        loss_function: ``loss(x, output) -> {"total": ..., ...}``; default ``ReconstructionLoss("l1")``.
        epoch_length: iterations per epoch (default: the loader's length).
        image_key, region_key: batch keys.
        train_handlers: Ignite handlers (checkpoints, stats, LR schedule, validation, calibration).
        amp: mixed precision on CUDA.
        key_train_metric, additional_metrics, metric_cmp_fn, non_blocking: as in MONAI's trainers.

    The iteration output is a dict of floats: ``"loss"`` plus the loss terms (``"recon"``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            raise ValueError("optimizer must be given.")
        super().__init__(device, max_epochs, train_data_loader, network, **kwargs)
        self.optimizer = optimizer
        self.loss_function = ReconstructionLoss() if loss_function is None else loss_function

    def _iteration(  # type: ignore[override]
        self, engine: ReconstructionTrainer, batchdata: dict[str, Any]
    ) -> dict[str, float]:
        x, region = self._windows(engine, batchdata)
        self.network.train()
        with self._autocast():
            out = self.network(x, region)
            terms = self.loss_function(x, out)
        total = terms["total"]
        self._step(total, self.optimizer)
        return self._report(terms, total)
