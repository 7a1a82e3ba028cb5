"""Ignite/MONAI trainer for the CutPaste baseline, and the Gaussian-density fit that follows its training."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils.misc import MAX_SEED
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from monai_simsid.data.exclusion import EXCLUDE_KEY
from monai_simsid.engines.base import AnomalyTrainer
from monai_simsid.losses.baselines import CutPasteLoss
from monai_simsid.networks.blocks.density import GaussianDensity
from monai_simsid.transforms.anomaly.pretext import PRETEXT_LABEL_KEY
from monai_simsid.transforms.body.dictionary import RandBodyWindowsd

__all__ = ["CutPasteTrainer", "embed_normal_windows", "fit_cutpaste_density"]


class CutPasteTrainer(AnomalyTrainer):
    """Train a :class:`~monai_simsid.networks.nets.CutPasteNet` on the 3-class pretext task.

    Each batch holds pretext windows and their class labels (0 normal, 1 cut-paste, 2 scar) under
    ``label_key``, produced in the data pipeline: a
    :class:`~monai_simsid.data.pretext.PretextDataset` (cached samples, regenerated every N epochs by
    :class:`~monai_simsid.handlers.pretext.RegeneratePretextHandler`) or a window sampler followed by
    :class:`~monai_simsid.transforms.anomaly.pretext.CutPastePretextd`. Batches without labels are turned into
    pretext batches here when ``pretext_transform`` is given (applied per window, seeded by ``seed``).
    Each iteration takes one optimiser step on :class:`~monai_simsid.losses.CutPasteLoss`.

    The density used for scoring is not trained here: fit it after training with :func:`fit_cutpaste_density`
    (or :class:`~monai_simsid.handlers.pretext.DensityFitHandler`, which also refits before validation).

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``image_key`` ``(B, 1, *roi)`` and ``label_key`` ``(B,)``.
        network: a :class:`~monai_simsid.networks.nets.CutPasteNet`.
        optimizer: optimiser over ``network.parameters()``.
        loss_function: ``loss(output, labels) -> {"total": ..., ...}``; default ``CutPasteLoss()``.
        label_key: batch key of the pretext class labels.
        pretext_transform: optional dict transform (e.g. ``CutPastePretextd(image_key)``) used to build labels
            per window for batches without ``label_key``; None: such batches raise ``ValueError``.
        seed: seed of ``pretext_transform``.
        epoch_length: iterations per epoch (default: the loader's length).
        image_key, region_key: batch keys.
        train_handlers: Ignite handlers (pretext regeneration, density fit, checkpoints, stats, validation,
            calibration).
        amp: mixed precision on CUDA.
        key_train_metric, additional_metrics, metric_cmp_fn, non_blocking: as in MONAI's trainers.

    The iteration output is a dict of floats: ``"loss"`` plus the loss terms (``"ce"``, ``"accuracy"``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable | None = None,
        label_key: str = PRETEXT_LABEL_KEY,
        pretext_transform: Callable | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            raise ValueError("optimizer must be given.")
        super().__init__(device, max_epochs, train_data_loader, network, **kwargs)
        self.optimizer = optimizer
        self.loss_function = CutPasteLoss() if loss_function is None else loss_function
        self.label_key = label_key
        self.pretext_transform = pretext_transform
        if pretext_transform is not None and hasattr(pretext_transform, "set_random_state"):
            pretext_transform.set_random_state(int(seed) % MAX_SEED)

    def _make_pretext(self, batchdata: dict[str, Any]) -> dict[str, Any]:
        """Apply ``pretext_transform`` to each window of a batch without labels."""
        if self.pretext_transform is None:
            raise ValueError(
                f"batch has no '{self.label_key}' key: build the loader on a PretextDataset or add "
                "CutPastePretextd to the pipeline, or give the trainer a pretext_transform."
            )
        images = torch.as_tensor(batchdata[self.image_key])
        windows, labels = [], []
        for img in images:
            out = self.pretext_transform({self.image_key: img.detach().cpu()})
            windows.append(torch.as_tensor(out[self.image_key]).float())
            labels.append(int(out[self.label_key]))
        d = dict(batchdata)
        d[self.image_key] = torch.stack(windows)
        d[self.label_key] = torch.tensor(labels, dtype=torch.long)
        return d

    def _iteration(  # type: ignore[override]
        self, engine: CutPasteTrainer, batchdata: dict[str, Any]
    ) -> dict[str, float]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        if self.label_key not in batchdata:
            batchdata = self._make_pretext(batchdata)
        x, region = self._windows(engine, batchdata)
        labels = torch.as_tensor(batchdata[self.label_key]).to(engine.state.device).long().reshape(-1)
        self.network.train()
        with self._autocast():
            out = self.network(x, region)
            terms = self.loss_function(out, labels)
        total = terms["total"]
        self._step(total, self.optimizer)
        return self._report(terms, total)


@torch.no_grad()
def embed_normal_windows(
    network: torch.nn.Module,
    items: Sequence[Mapping[Hashable, Any]],
    roi_size: Sequence[int],
    num_windows_per_scan: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    image_key: str = "image",
    body_key: str = "body",
    pad_value: float = -1.0,
) -> torch.Tensor:
    """Eval-mode embeddings ``(N, D)`` of windows sampled inside the body of normal scans.

    Windows are drawn with :class:`~monai_simsid.transforms.body.RandBodyWindowsd` (seeded per scan from
    ``seed``) and embedded with ``network.embed`` in eval mode (BatchNorm running statistics, as at inference);
    the network's training flag is restored afterwards.

    Raises:
        ValueError: on empty ``items``, bad counts or items without the image / body.
    """
    items = list(items)
    if not items:
        raise ValueError("need at least one normal scan to embed.")
    if num_windows_per_scan < 1 or batch_size < 1:
        raise ValueError(f"num_windows_per_scan and batch_size must be >= 1, got {num_windows_per_scan}, {batch_size}.")
    if not hasattr(network, "embed"):
        raise ValueError(f"network {type(network).__name__} has no embed() method (expected a CutPasteNet).")
    if device is None:
        device = next(network.parameters()).device
    seeds = np.random.SeedSequence(int(seed)).generate_state(len(items))
    was_training = network.training
    network.eval()
    embeddings = []
    try:
        for item, s in zip(items, seeds):
            if image_key not in item or body_key not in item:
                raise ValueError(f"items need '{image_key}' and '{body_key}' (run the preprocessing first).")
            sampler = RandBodyWindowsd(
                keys=[image_key], roi_size=roi_size, num_samples=num_windows_per_scan,
                region_grid=(1,) * len(roi_size), body_key=body_key, pad_value=pad_value,
            )
            sampler.set_random_state(int(s) % MAX_SEED)
            windows = sampler({image_key: item[image_key], body_key: item[body_key], EXCLUDE_KEY: item.get(EXCLUDE_KEY)})
            x = torch.stack([torch.as_tensor(w[image_key]).float() for w in windows])
            for i in range(0, x.shape[0], batch_size):
                embeddings.append(network.embed(x[i : i + batch_size].to(device)).float().cpu())
    finally:
        network.train(was_training)
    return torch.cat(embeddings)


def fit_cutpaste_density(
    network: torch.nn.Module,
    items: Sequence[Mapping[Hashable, Any]],
    roi_size: Sequence[int],
    num_windows_per_scan: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    image_key: str = "image",
    body_key: str = "body",
    pad_value: float = -1.0,
) -> GaussianDensity:
    """Fit a CutPaste network's Gaussian density on windows of normal scans (see :func:`embed_normal_windows`).

    Call after training (and before calibration / evaluation): ``network.fit_density`` stores the mean and
    precision as buffers, so the fitted density is saved with the network's ``state_dict``.

    Args:
        network: a :class:`~monai_simsid.networks.nets.CutPasteNet`.
        items: preprocessed normal training scans (dicts with ``image_key`` and ``body_key``).
        roi_size: window size (the training window size).
        num_windows_per_scan: windows sampled inside the body of each scan.
        seed: sampling seed.
        device: where to embed (default: the network's device).
        batch_size: windows per forward pass.
        image_key, body_key: dictionary keys.
        pad_value: value used to pad scans smaller than the window.

    Returns:
        The fitted ``network.density``.

    Raises:
        ValueError: if fewer than 2 windows would be embedded, or on the errors of :func:`embed_normal_windows`.
    """
    if not hasattr(network, "fit_density"):
        raise ValueError(f"network {type(network).__name__} has no fit_density() method (expected a CutPasteNet).")
    if len(list(items)) * int(num_windows_per_scan) < 2:
        raise ValueError("the density needs at least 2 windows: raise num_windows_per_scan or give more scans.")
    emb = embed_normal_windows(
        network, items, roi_size, num_windows_per_scan, seed, device, batch_size, image_key, body_key, pad_value
    )
    return network.fit_density(emb.to(next(network.parameters()).device))
