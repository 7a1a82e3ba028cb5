"""Ignite/MONAI trainer for SimSID: a generator step with distillation and an adversarial discriminator step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.engines.base import AnomalyTrainer, frozen
from monai_simsid.losses.simsid import AdversarialLoss, AnomalyHeadLoss, SimSIDLoss, masked_restoration_loss
from monai_simsid.transforms.anomaly.batch import BatchAnomalyCorruption

__all__ = ["SimSIDTrainer"]


class SimSIDTrainer(AnomalyTrainer):
    """Train SimSID on windows of normal scans.

    Each iteration (the way MONAI's ``GanTrainer`` splits its steps):

    1. generator step: reconstruction + teacher + distillation loss (:class:`~monai_simsid.losses.SimSIDLoss`), plus
       the generator's adversarial loss every ``adv_every`` iterations;
    2. discriminator step: real windows vs detached student reconstructions.

    Synthetic-anomaly supervision (off by default; on when ``restore_weight > 0`` or ``head_weight > 0``): each
    iteration a copy of the normal windows is corrupted by ``corruption`` (a
    :class:`~monai_simsid.transforms.anomaly.batch.BatchAnomalyCorruption`, seeded with ``(corruption_seed,
    engine iteration)`` so runs are reproducible; by default half of the windows stay clean) and the network sees the
    corrupted windows ``x_in`` with the change mask ``m``:

    * ``restore_weight > 0`` (restoration): the SimSID loss targets the CLEAN windows (``recon = MSE(student(x_in),
      x)``, same for the teacher) and ``restore = MSE(student(x_in), x)`` over the corrupted voxels only is added with
      weight ``restore_weight``; the student learns to remove anomalies, so ``|x - recon|`` is high where the input
      departs from normal anatomy;
    * ``restore_weight == 0``: the SimSID loss targets ``x_in`` itself (plain reconstruction of what it sees);
    * ``head_weight > 0``: ``head = head_loss(network.head_logits(x_in, recon), m)`` (BCE + soft Dice) is added with
      weight ``head_weight``; the network needs ``anomaly_head=True``. The reconstruction fed to the head is detached
      when ``head_detach`` (head trained alone on top of the generator), else the head loss is an auxiliary loss of
      the whole generator. The network's ``recon_scale`` (for ``map_mode="combined"``) is updated from the error on
      the uncorrupted voxels.

    The discriminator always sees the clean windows as real. The iteration output then also has ``"restore"`` and
    ``"head"``.

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
        restore_weight: weight of the masked restoration term (0: no restoration objective).
        head_weight: weight of the anomaly-head loss (0: the head, if any, is not trained).
        head_loss: the head loss (default :class:`~monai_simsid.losses.simsid.AnomalyHeadLoss`).
        head_detach: detach the reconstruction fed to the head.
        corruption: a ``BatchAnomalyCorruption``, or a mapping of its keyword arguments (default: its defaults).
        corruption_seed: base seed of the corruption (a mapping's own ``seed`` wins).
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
        restore_weight: float = 0.0,
        head_weight: float = 0.0,
        head_loss: Callable | None = None,
        head_detach: bool = False,
        corruption: BatchAnomalyCorruption | Mapping[str, Any] | None = None,
        corruption_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if adv_every < 1:
            raise ValueError(f"adv_every must be >= 1, got {adv_every}.")
        if restore_weight < 0 or head_weight < 0:
            raise ValueError(f"restore_weight and head_weight must be >= 0, got {restore_weight} and {head_weight}.")
        core = getattr(network, "module", network)
        if head_weight > 0 and getattr(core, "anomaly_head", None) is None:
            raise ValueError("head_weight > 0 needs a network built with anomaly_head=True.")
        super().__init__(device, max_epochs, train_data_loader, network, **kwargs)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.loss_function = SimSIDLoss() if loss_function is None else loss_function
        self.adversarial_loss = AdversarialLoss() if adversarial_loss is None else adversarial_loss
        self.adv_every = adv_every
        self.restore_weight = float(restore_weight)
        self.head_weight = float(head_weight)
        self.head_loss = AnomalyHeadLoss() if head_loss is None else head_loss
        self.head_detach = bool(head_detach)
        if corruption is None or isinstance(corruption, Mapping):
            corruption = BatchAnomalyCorruption(**{"seed": int(corruption_seed), **dict(corruption or {})})
        self.corruption = corruption

    @property
    def supervised(self) -> bool:
        """Whether synthetic-anomaly supervision is on."""
        return self.restore_weight > 0 or self.head_weight > 0

    def _iteration(self, engine: SimSIDTrainer, batchdata: dict[str, Any]) -> dict[str, float]:  # type: ignore[override]
        x, region = self._windows(engine, batchdata)
        net = self.network
        core = getattr(net, "module", net)  # DistributedDataParallel wraps the model
        net.train()
        has_disc = self.d_optimizer is not None and getattr(core, "discriminator", None) is not None

        x_in, mask = x, None
        if self.supervised:
            x_in, mask, _ = self.corruption(x, seed=int(engine.state.iteration))
        target = x if self.restore_weight > 0 else x_in

        with self._autocast():
            out = net(x_in, region)
            terms = self.loss_function(target, out)
            g_total = terms["total"]
            extra: dict[str, torch.Tensor] = {}
            if self.supervised:
                restore = torch.zeros((), device=x.device)
                if self.restore_weight > 0:
                    restore = masked_restoration_loss(out.student_recon, x, mask)
                    g_total = g_total + self.restore_weight * restore
                head = torch.zeros((), device=x.device)
                if self.head_weight > 0:
                    recon = out.student_recon.detach() if self.head_detach else out.student_recon
                    head = self.head_loss(core.head_logits(x_in, recon), mask)
                    g_total = g_total + self.head_weight * head
                extra = {"restore": restore, "head": head}
            g_adv = torch.zeros((), device=x.device)
            if has_disc and engine.state.iteration % self.adv_every == 0:
                with frozen(core.discriminator):  # gradients reach the generator only
                    g_adv = self.adversarial_loss.generator_loss(core.discriminate(out.student_recon))
                g_total = g_total + g_adv
        self._step(g_total, self.g_optimizer)
        if mask is not None and getattr(core, "anomaly_head", None) is not None:
            with torch.no_grad():
                err = (out.student_recon.detach().float() - x_in.float()).abs().mean(1, keepdim=True)
                core.update_recon_scale(err[mask < 0.5])

        d_loss = torch.zeros((), device=x.device)
        if has_disc:
            with self._autocast():
                d_loss = self.adversarial_loss.discriminator_loss(
                    core.discriminate(x), core.discriminate(out.student_recon.detach())
                )
            # the discriminator runs outside the DDP wrapper: its gradients are averaged over processes here
            self._step(d_loss, self.d_optimizer, sync=True)  # type: ignore[arg-type]

        return self._report(terms, g_total, **extra, g_adv=g_adv, d_loss=d_loss)
