"""Handlers of CutPaste training: regenerate the pretext samples every N epochs, fit the Gaussian density."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils.misc import MAX_SEED

from monai_simsid.engines.cutpaste_trainer import fit_cutpaste_density

__all__ = ["DensityFitHandler", "RegeneratePretextHandler"]

logger = logging.getLogger(__name__)


class RegeneratePretextHandler:
    """Regenerate the CutPaste pretext samples every ``every_n_epochs`` epochs.

    With few normal scans a fixed set of synthetic anomalies is easy to memorise; fresh samples every N epochs
    guard against that. Epochs ``1..N`` use the samples the dataset was built with; after epoch ``b * N`` the
    samples are regenerated with seed ``seed + b``, so a run is reproducible and a resumed run (``state.epoch``
    restored before ``STARTED`` handlers run) gets the samples it had when it stopped. ``every_n_epochs=1``
    gives fresh samples every epoch.

    Args:
        dataset_or_transform: a :class:`~monai_simsid.data.pretext.PretextDataset` (anything with
            ``regenerate(seed)``), or a randomizable pretext transform of an on-the-fly pipeline (anything with
            ``set_random_state(seed)``, e.g. :class:`~monai_simsid.transforms.anomaly.pretext.CutPastePretextd`;
            with ``persistent_workers`` the workers' copies are not reseeded).
        every_n_epochs: regeneration period in epochs (>= 1).
        seed: base seed.

    Raises:
        ValueError: on ``every_n_epochs < 1`` or an object that can be neither regenerated nor reseeded.
    """

    def __init__(self, dataset_or_transform: Any, every_n_epochs: int = 1, seed: int = 0) -> None:
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if not (callable(getattr(dataset_or_transform, "regenerate", None))
                or callable(getattr(dataset_or_transform, "set_random_state", None))):
            raise ValueError(
                f"{type(dataset_or_transform).__name__} has neither regenerate(seed) nor set_random_state(seed)."
            )
        self.target = dataset_or_transform
        self.every_n_epochs = int(every_n_epochs)
        self.seed = int(seed)
        self.last_block = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self)

    def regenerate(self, block: int) -> None:
        """Regenerate / reseed for regeneration block ``block`` (seed ``seed + block``)."""
        seed = (self.seed + int(block)) % MAX_SEED
        if callable(getattr(self.target, "regenerate", None)):
            self.target.regenerate(seed)
        else:
            self.target.set_random_state(seed)
        self.last_block = int(block)
        logger.info("regenerated the pretext samples (seed %d)", seed)

    def _on_started(self, engine: Engine) -> None:
        block = int(engine.state.epoch) // self.every_n_epochs
        if block > 0 and block != self.last_block:
            self.regenerate(block)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= engine.state.max_epochs:
            return  # no epoch left to use the new samples
        self.regenerate(int(engine.state.epoch) // self.every_n_epochs)


class DensityFitHandler:
    """Fit a CutPaste network's Gaussian density on normal windows at the end of training (and before validation).

    Attached at ``COMPLETED``; list it *before* the calibration handler (Ignite runs handlers of one event in
    the order they were attached), so calibration scores with the fitted density. With ``every_n_epochs`` it
    also refits at ``EPOCH_COMPLETED(every=every_n_epochs)``: list it before the ``ValidationHandler`` and use
    the validation interval, since :class:`~monai_simsid.networks.nets.CutPasteNet` cannot run in eval mode
    without a density.

    Args:
        network: a :class:`~monai_simsid.networks.nets.CutPasteNet`.
        items: preprocessed normal training scans (dicts with ``image_key`` and ``body_key``).
        roi_size: training window size.
        num_windows_per_scan: windows sampled inside the body of each scan.
        seed: sampling seed (the same windows at every fit).
        every_n_epochs: also refit every this many epochs (None: only at the end).
        batch_size: windows per forward pass.
        image_key, body_key: dictionary keys.
        pad_value: value used to pad scans smaller than the window.

    Raises:
        ValueError: on empty ``items`` or ``every_n_epochs < 1``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        items: Sequence[Mapping[Hashable, Any]],
        roi_size: Sequence[int],
        num_windows_per_scan: int = 32,
        seed: int = 0,
        every_n_epochs: int | None = None,
        batch_size: int = 8,
        image_key: str = "image",
        body_key: str = "body",
        pad_value: float = -1.0,
    ) -> None:
        items = list(items)
        if not items:
            raise ValueError("DensityFitHandler needs at least one normal scan.")
        if every_n_epochs is not None and int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or None, got {every_n_epochs}.")
        if num_windows_per_scan < 1:
            raise ValueError(f"num_windows_per_scan must be >= 1, got {num_windows_per_scan}.")
        self.network = network
        self.items = items
        self.roi_size = tuple(int(r) for r in roi_size)
        self.num_windows_per_scan = int(num_windows_per_scan)
        self.seed = int(seed)
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.batch_size = int(batch_size)
        self.image_key = image_key
        self.body_key = body_key
        self.pad_value = float(pad_value)

    def attach(self, engine: Engine) -> None:
        if self.every_n_epochs is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> Any:
        device = engine.state.device if engine is not None and hasattr(engine.state, "device") else None
        density = fit_cutpaste_density(
            self.network, self.items, self.roi_size, self.num_windows_per_scan, self.seed, device,
            self.batch_size, self.image_key, self.body_key, self.pad_value,
        )
        logger.info("fitted the CutPaste density on %d normal scan(s)", len(self.items))
        return density
