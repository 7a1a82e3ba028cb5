"""Ignite/MONAI trainer for SimSID: a generator step with distillation and an adversarial discriminator step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines.utils import default_metric_cmp_fn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.engines.base import AnomalyTrainer
from monai_simsid.losses.simsid import AdversarialLoss, SimSIDLoss

__all__ = ["SimSIDTrainer"]


class SimSIDTrainer(AnomalyTrainer):
    """Train SimSID on windows of normal scans.

    Each iteration (the way MONAI's ``GanTrainer`` splits its steps):

    1. generator step: reconstruction + teacher + distillation loss (:class:`~monai_simsid.losses.SimSIDLoss`), plus
       the generator's adversarial loss every ``adv_every`` iterations;
    2. discriminator step: real windows vs detached student reconstructions.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key`` ``(B, 1, *roi)`` and ``region_key`` ``(B,)``.
        network: a :class:`~monai_simsid.networks.nets.SimSID`.
        g_optimizer: optimiser over ``network.generator_parameters()``.
        d_optimizer: optimiser over ``network.discriminator_parameters()`` (None: no adversarial training).
        loss_function: the generator's reconstruction/distillation loss.
        adversarial_loss: adversarial weights.
        adv_every: run the generator's adversarial term every this many iterations (paper: 2).
        epoch_length: iterations per epoch (default: the loader's length).
        image_key, region_key: batch keys.
        train_handlers: Ignite handlers (checkpoints, stats, LR schedule, validation, calibration).
        amp: mixed precision on CUDA.
        key_train_metric, additional_metrics, metric_cmp_fn: as in MONAI's trainers.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer | None = None,
        loss_function: Callable | None = None,
        adversarial_loss: AdversarialLoss | None = None,
        adv_every: int = 2,
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
        if adv_every < 1:
            raise ValueError(f"adv_every must be >= 1, got {adv_every}.")
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
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss_function = SimSIDLoss() if loss_function is None else loss_function
        self.adversarial_loss = AdversarialLoss() if adversarial_loss is None else adversarial_loss
        self.adv_every = adv_every
        self.image_key = image_key
        self.region_key = region_key
    def _iteration(self, engine: SimSIDTrainer, batchdata: dict[str, Any]) -> dict[str, float]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        x = batchdata[self.image_key].to(engine.state.device, non_blocking=self.non_blocking).float()
        region = batchdata.get(self.region_key)
        region = None if region is None else torch.as_tensor(region).to(engine.state.device).long().reshape(-1)
        net = self.network
        core = getattr(net, "module", net)  # DistributedDataParallel wraps the model
        net.train()
        has_disc = self.d_optimizer is not None and getattr(core, "discriminator", None) is not None

        with self._autocast():
            out = net(x, region)
            terms = self.loss_function(x, out)
            g_total = terms["total"]
            g_adv = torch.zeros((), device=x.device)
            if has_disc and engine.state.iteration % self.adv_every == 0:
                g_adv = self.adversarial_loss.generator_loss(core.discriminate(out.student_recon))
                g_total = g_total + g_adv
        self._step(g_total, self.g_optimizer)

        d_loss = torch.zeros((), device=x.device)
        if has_disc:
            with self._autocast():
                d_loss = self.adversarial_loss.discriminator_loss(
                    core.discriminate(x), core.discriminate(out.student_recon.detach())
                )
            self._step(d_loss, self.d_optimizer)  # type: ignore[arg-type]

        result = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
        result.update({"loss": float(g_total.detach()), "g_adv": float(g_adv.detach()), "d_loss": float(d_loss.detach())})
        return result
