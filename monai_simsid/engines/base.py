"""Common base of the anomaly-model trainers: shared arguments, batch unpacking and optimiser steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ignite.distributed as idist
import torch
from monai.engines import Trainer
from monai.engines.utils import default_metric_cmp_fn
from torch.optim import Optimizer

__all__ = ["AnomalyTrainer", "average_gradients", "batch_windows", "frozen"]


@contextmanager
def frozen(module: torch.nn.Module | None) -> Iterator[None]:
    """Switch off ``requires_grad`` of ``module``'s parameters inside the block (the classic GAN generator step).

    Gradients still flow through the module to its input, but no gradient is computed for its own parameters. In
    a ``DistributedDataParallel`` generator step this also keeps the discriminator's parameters out of the
    generator's backward pass (DDP would otherwise see them both "unused" and "ready").
    """
    params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all processes (no-op in a single process).

    For modules whose forward pass does not go through the ``DistributedDataParallel`` wrapper (the discriminator
    step of the GAN trainers calls the discriminator directly). Uses Ignite's ``idist`` (one all-reduce of the
    flattened gradients). A parameter without a gradient on this process takes part with zeros.
    """
    world = idist.get_world_size()
    if world < 2:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    flat = idist.all_reduce(flat) / world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


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

    def _step(self, loss: torch.Tensor, optimizer: Optimizer, sync: bool = False) -> None:
        """Backward + step of ``optimizer``; ``sync``: average its gradients over processes first (for modules run
        outside the DDP wrapper, see :func:`average_gradients`)."""
        optimizer.zero_grad(set_to_none=True)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if sync:
                average_gradients(params)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if sync:
                average_gradients(params)
            optimizer.step()
