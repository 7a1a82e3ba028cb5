"""Atomic resume checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
        save_interval: epochs between checkpoints.
        n_saved: how many checkpoints to keep.
        epoch_level: kept for config compatibility with MONAI's ``CheckpointSaver``; only epoch level is supported.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping,
        file_prefix: str = "checkpoint",
        save_interval: int = 1,
        n_saved: int = 1,
        epoch_level: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        if not epoch_level:
            raise ValueError("AtomicCheckpointSaver saves at epoch level only.")
        self.save_dict = dict(save_dict)
        self.save_interval = save_interval
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
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.checkpoint)
