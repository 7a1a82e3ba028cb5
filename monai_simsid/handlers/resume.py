"""Resume training from the newest checkpoint in a folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from monai_simsid.apps.checkpoint import latest_checkpoint

__all__ = ["ResumeHandler"]

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
