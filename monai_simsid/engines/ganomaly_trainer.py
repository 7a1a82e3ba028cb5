"""Ignite/MONAI trainer for GANomaly: a generator step and a discriminator step per iteration."""

from __future__ import annotations

import logging
from typing import Any

import ignite.distributed as idist
import torch
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.engines.base import AnomalyTrainer, frozen
from monai_simsid.losses.baselines import GANomalyLoss

__all__ = ["GANomalyTrainer", "reinitialize_module"]

logger = logging.getLogger(__name__)

#: discriminator-loss threshold below which the GANomaly paper re-initialises D.
PAPER_REINIT_THRESHOLD = 1e-5


def reinitialize_module(module: torch.nn.Module) -> int:
    """Call ``reset_parameters()`` on every sub-module that has one; returns how many were reset."""
    count = 0
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
            count += 1
    return count


class GANomalyTrainer(AnomalyTrainer):
    """Train :class:`~monai_simsid.networks.nets.GANomaly` on windows of normal scans.

    Each iteration (the way MONAI's ``GanTrainer`` and :class:`SimSIDTrainer` split their steps):

    1. generator step (``g_optimizer``): :class:`~monai_simsid.losses.GANomalyLoss`: adversarial feature
       matching on the discriminator's last feature map + contextual L1 + latent L2;
    2. discriminator step (``d_optimizer``): ``BCE(D(x), 1) + BCE(D(x̂.detach()), 0)``;
    3. optionally, as in the GANomaly paper, re-initialise the discriminator when its loss falls below
       ``reinit_d_below`` (it has won and no longer gives the generator a useful signal).

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key`` ``(B, 1, *roi_size)`` (exactly the network's
            ``roi_size``) and optionally ``region_key``.
        network: a :class:`~monai_simsid.networks.nets.GANomaly`.
        g_optimizer: optimiser over ``network.generator_parameters()``.
        d_optimizer: optimiser over ``network.discriminator_parameters()``.
        loss_function: a :class:`GANomalyLoss` (anything with ``__call__(x, out, f_real, f_fake)`` and
            ``discriminator_loss(real_logits, fake_logits)``); default ``GANomalyLoss()`` (weights 1 / 50 / 1).
        reinit_d_below: re-initialise the discriminator (``reset_parameters`` of its layers) when its loss is
            below this value; ``True`` uses the paper's ``1e-5``; ``None`` / ``False`` disables it.
        epoch_length: iterations per epoch (default: the loader's length).
        image_key, region_key: batch keys.
        train_handlers: Ignite handlers (checkpoints, stats, LR schedule, validation, calibration).
        amp: mixed precision on CUDA.
        key_train_metric, additional_metrics, metric_cmp_fn, non_blocking: as in MONAI's trainers.

    The iteration output is a dict of floats: ``"loss"`` (the generator total), ``"adv"``, ``"con"``, ``"enc"``,
    ``"d_loss"`` and ``"d_reinit"`` (1.0 when D was re-initialised at this iteration). ``self.num_d_reinits``
    counts the re-initialisations.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        loss_function: GANomalyLoss | None = None,
        reinit_d_below: float | bool | None = None,
        **kwargs: Any,
    ) -> None:
        if g_optimizer is None or d_optimizer is None:
            raise ValueError("GANomalyTrainer needs both g_optimizer and d_optimizer.")
        core = getattr(network, "module", network)  # DistributedDataParallel wraps the model
        if not hasattr(core, "discriminate") or getattr(core, "discriminator", None) is None:
            raise ValueError(f"network {type(network).__name__} has no discriminator (expected a GANomaly).")
        if reinit_d_below is True:
            reinit_d_below = PAPER_REINIT_THRESHOLD
        elif reinit_d_below is False:
            reinit_d_below = None
        if reinit_d_below is not None and not float(reinit_d_below) > 0:
            raise ValueError(f"reinit_d_below must be positive, True or None, got {reinit_d_below}.")
        super().__init__(device, max_epochs, train_data_loader, network, **kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss_function = GANomalyLoss() if loss_function is None else loss_function
        self.reinit_d_below = None if reinit_d_below is None else float(reinit_d_below)
        self.num_d_reinits = 0

    def _iteration(  # type: ignore[override]
        self, engine: GANomalyTrainer, batchdata: dict[str, Any]
    ) -> dict[str, float]:
        x, region = self._windows(engine, batchdata)
        net = self.network
        core = getattr(net, "module", net)  # DistributedDataParallel wraps the model
        net.train()

        # 1. generator: feature matching + contextual + latent
        with self._autocast():
            out = net(x, region)
            with torch.no_grad():
                _, f_real = core.discriminate(x)
            with frozen(core.discriminator):  # gradients reach the generator only
                _, f_fake = core.discriminate(out.reconstruction)
            terms = self.loss_function(x, out, f_real, f_fake)
        g_total = terms["total"]
        self._step(g_total, self.g_optimizer)

        # 2. discriminator: real windows vs detached reconstructions (zero_grad also drops the G-step's D grads)
        with self._autocast():
            real_logits, _ = core.discriminate(x)
            fake_logits, _ = core.discriminate(out.reconstruction.detach())
            d_loss = self.loss_function.discriminator_loss(real_logits, fake_logits)
        # the discriminator runs outside the DDP wrapper: its gradients are averaged over processes here
        self._step(d_loss, self.d_optimizer, sync=True)

        # 3. paper trick: a discriminator that has won is re-initialised
        d_value = float(d_loss.detach())
        world = idist.get_world_size()
        if world > 1:  # every process takes the same decision, on the mean loss
            d_value = float(idist.all_reduce(d_loss.detach().float().clone())) / world
        reinit = self.reinit_d_below is not None and d_value < self.reinit_d_below
        if reinit:
            reinitialize_module(core.discriminator)
            if world > 1:  # one set of fresh weights for all processes
                for t in core.discriminator.state_dict().values():
                    t.copy_(idist.broadcast(t, src=0))
            self.num_d_reinits += 1
            logger.info("discriminator loss %.3g < %.3g: re-initialised D", d_value, self.reinit_d_below)

        result = {k: float(v.detach()) for k, v in terms.items() if k != "total"}
        result.update({"loss": float(g_total.detach()), "d_loss": d_value, "d_reinit": float(reinit)})
        return result
