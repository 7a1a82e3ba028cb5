"""Resume training from the newest checkpoint in a folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader
from monai.utils import set_determinism

from monai_simsid.apps.checkpoint import latest_checkpoint

__all__ = ["EpochSeedHandler", "ResumeHandler"]

logger = logging.getLogger(__name__)


class ResumeHandler:
    """When ``enabled``, load the newest ``checkpoint_*.pt`` of ``ckpt_dir`` into ``load_dict`` at start.

    A thin wrapper over MONAI's ``CheckpointLoader`` (which restores model, optimisers, scheduler and the trainer's
    epoch/iteration); it only adds "find the newest checkpoint, if any".
    """

    def __init__(self, ckpt_dir: str | os.PathLike, load_dict: Mapping, enabled: bool = True, map_location: str | None = "cpu") -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = dict(load_dict)
        self.enabled = enabled
        self.map_location = map_location
        self.loaded_path: str | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.info("resume requested but no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return
        self.loaded_path = path
        CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location).attach(engine)


class EpochSeedHandler:
    """Seed every epoch from ``(seed, epoch)``, so a resumed run draws the same samples as an uninterrupted one.

    At each ``EPOCH_STARTED`` it calls MONAI's ``set_determinism(seed + epoch)`` (torch, numpy and Python RNGs: the
    DataLoader shuffle), then, for each of ``randomizables``, ``set_epoch(epoch)`` where it has one (a
    :class:`~monai_simsid.data.seeded.SeededDataset`, which seeds every item from ``(seed, epoch, index)``) or else
    ``set_random_state(seed + epoch)`` (a randomizable transform). Without it, a run resumed at epoch k would replay
    the random draws of epoch 1.

    When an epoch ends part-way through the data loader (``epoch_length`` not a multiple of ``len(loader)``), Ignite
    keeps that loader iterator for the next epoch, and its data-loader workers, forked earlier, would keep drawing
    with the previous epoch's seeds (a resumed run, which starts a fresh iterator, would draw differently again).
    The handler then restarts the data at every epoch start, after seeding, so each epoch draws from a fresh iterator
    whatever the number of workers and whether the run was resumed. With the default ``epoch_length`` (one pass per
    epoch) Ignite already does this and nothing changes.

    Args:
        seed: base seed.
        randomizables: datasets with ``set_epoch`` or randomizable transforms to re-seed each epoch.
        restart_data: restart a data iterator left over from the previous epoch (see above).
    """

    def __init__(self, seed: int, randomizables: Sequence = (), restart_data: bool = True) -> None:
        self.seed = int(seed)
        self.randomizables = list(randomizables)
        self.restart_data = bool(restart_data)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        s = self.seed + int(engine.state.epoch)
        set_determinism(seed=s)
        for t in self.randomizables:
            if hasattr(t, "set_epoch"):
                t.set_epoch(int(engine.state.epoch))
            else:
                t.set_random_state(s)
        if self.restart_data and self._epoch_ends_mid_pass(engine):
            engine.set_data(engine.state.dataloader)  # a fresh iterator: workers fork now, after the seeding above

    @staticmethod
    def _epoch_ends_mid_pass(engine: Engine) -> bool:
        """True after the first epoch when epochs do not end at the end of a pass over the loader."""
        data, length = engine.state.dataloader, engine.state.epoch_length
        if data is None or length is None or int(engine.state.epoch) <= 1 or not hasattr(data, "__len__"):
            return False
        n = len(data)
        return n > 0 and length % n != 0
