"""Atomic resume checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

__all__ = ["AtomicCheckpointSaver"]


class AtomicCheckpointSaver:
    """Save the training state every ``save_interval`` epochs, atomically, as ``<file_prefix>_epoch=<N>.pt``.

    MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), so a process killed while saving leaves a
    truncated file that a resume would then try to load. This thin wrapper uses Ignite's ``Checkpoint`` with an
    atomic ``DiskSaver`` (temporary file in the same folder, then rename) and keeps the ``n_saved`` newest files.

    Args:
        save_dir: output folder.
        save_dict: objects with ``state_dict`` (network, optimisers, schedulers, the trainer).
        file_prefix: file name prefix.
        save_interval: epochs between checkpoints (the final epoch always saves).
        n_saved: how many checkpoints to keep.
        epoch_level: kept for config compatibility with MONAI's ``CheckpointSaver``; only epoch level is supported.
        min_interval_s: skip a due checkpoint when fewer seconds than this have passed since the last one (the
            first due epoch and the final epoch always save). With short epochs and a large model (a few scans, the
            GPU preset writes about 1 GB of weights and optimiser state) saving every epoch costs more than
            training; a resume then repeats at most this many seconds of training. 0 saves every due epoch.
        clock: time source (tests).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping,
        file_prefix: str = "checkpoint",
        save_interval: int = 1,
        n_saved: int = 1,
        epoch_level: bool = True,
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}.")
        if not epoch_level:
            raise ValueError("AtomicCheckpointSaver saves at epoch level only.")
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self._last_save: float | None = None
        os.makedirs(save_dir, exist_ok=True)
        self.checkpoint = Checkpoint(
            to_save=self.save_dict,
            save_handler=DiskSaver(str(save_dir), require_empty=False, atomic=True),
            filename_prefix=file_prefix,
            filename_pattern="{filename_prefix}_epoch={global_step}.{ext}",
            n_saved=n_saved,
            global_step_transform=lambda engine, _: engine.state.epoch,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        final = engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs
        if not final:
            if engine.state.epoch % self.save_interval:
                return
            if self._last_save is not None and self.clock() - self._last_save < self.min_interval_s:
                return
        self.checkpoint(engine)
        self._last_save = self.clock()
