"""Common base of the anomaly-model trainers: shared arguments, batch unpacking and optimiser steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import default_metric_cmp_fn
from torch.optim import Optimizer

__all__ = ["AnomalyTrainer", "batch_windows"]


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


class AnomalyTrainer(Trainer):
    """MONAI ``Trainer`` plus what every anomaly-model trainer shares.

    Subclasses override ``_iteration`` (the way MONAI's ``GanTrainer`` does), get the batch with
    :meth:`_windows`, wrap forward passes in :meth:`_autocast` and call :meth:`_step` for each optimiser. Mixed
    precision is used only when ``amp`` is set and the device is CUDA; on CPU everything runs in float32. The
    iteration output is a dict of floats (``decollate`` is off).

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key`` ``(B, 1, *roi)`` and optionally ``region_key`` ``(B,)``.
        network: the model being trained.
        epoch_length: iterations per epoch (default: the loader's length).
        image_key, region_key: batch keys.
        train_handlers: Ignite handlers (checkpoints, stats, LR schedule, validation, calibration).
        amp: mixed precision on CUDA.
        key_train_metric, additional_metrics, metric_cmp_fn, non_blocking: as in MONAI's trainers.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
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
        self.image_key = image_key
        self.region_key = region_key
        use_cuda_amp = amp and torch.device(device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_cuda_amp else None
        self._autocast_device = torch.device(device).type if use_cuda_amp else None

    def _windows(self, engine: Trainer, batchdata: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batch_windows(batchdata, self.image_key, self.region_key, engine.state.device, self.non_blocking)

    @staticmethod
    def _report(terms: dict[str, torch.Tensor], total: torch.Tensor, **extra: torch.Tensor) -> dict[str, float]:
        """The iteration output: every loss term (but ``"total"``) and ``"loss"`` as floats, plus ``extra``."""
        result = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
        result.update({k: float(v.detach()) for k, v in extra.items()})
        result["loss"] = float(total.detach())
        return result

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
