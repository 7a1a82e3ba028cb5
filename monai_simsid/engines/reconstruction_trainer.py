"""Ignite/MONAI trainer for the convolutional auto-encoder baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines.utils import default_metric_cmp_fn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.engines.base import AnomalyTrainer
from monai_simsid.losses.baselines import ReconstructionLoss

__all__ = ["ReconstructionTrainer", "batch_windows"]


def batch_windows(
    batchdata: dict[str, Any], image_key: str, region_key: str, device: torch.device | str, non_blocking: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Windows ``(B, C, *roi)`` (float, on ``device``) and region indices ``(B,)`` (or None) of a batch dict.

    Raises:
        ValueError: if the batch is missing or has no ``image_key``.
    """
    if batchdata is None:
        raise ValueError("must provide batch data for current iteration.")
    if image_key not in batchdata:
        raise ValueError(f"batch has no '{image_key}' key (keys: {sorted(map(str, batchdata))}).")
    x = torch.as_tensor(batchdata[image_key]).to(device, non_blocking=non_blocking).float()
    region = batchdata.get(region_key)
    region = None if region is None else torch.as_tensor(region).to(device).long().reshape(-1)
    return x, region


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
        epoch_length: int | None = None,
        image_key: str = "image",
        region_key: str = "region",
        train_handlers: Sequence | None = None,
        amp: bool = False,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        non_blocking: bool = False,
    ) -> None:
        if optimizer is None:
            raise ValueError("optimizer must be given.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_function = ReconstructionLoss() if loss_function is None else loss_function
        self.image_key = image_key
        self.region_key = region_key

    def _iteration(  # type: ignore[override]
        self, engine: ReconstructionTrainer, batchdata: dict[str, Any]
    ) -> dict[str, float]:
        device = engine.state.device
        x, region = batch_windows(batchdata, self.image_key, self.region_key, device, self.non_blocking)
        self.network.train()
        with self._autocast():
            out = self.network(x, region)
            terms = self.loss_function(x, out)
        total = terms["total"]
        self._step(total, self.optimizer)
        result = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
        result["loss"] = float(total.detach())
        return result
