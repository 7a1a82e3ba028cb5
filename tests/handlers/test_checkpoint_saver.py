"""AtomicCheckpointSaver: epoch interval, minimum seconds between saves, final epoch always saved."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_simsid.handlers import AtomicCheckpointSaver


def _run(tmp_path, max_epochs=5, seconds_per_epoch=4.0, **kw):
    now = [0.0]
    engine = Engine(lambda e, b: now.__setitem__(0, now[0] + seconds_per_epoch))  # one iteration per epoch
    saver = AtomicCheckpointSaver(tmp_path, {"net": torch.nn.Linear(2, 2)}, n_saved=100, clock=lambda: now[0], **kw)
    saver.attach(engine)
    engine.run([0], max_epochs=max_epochs)
    return sorted(int(p.stem.split("=")[1]) for p in tmp_path.glob("checkpoint_epoch=*.pt"))


def test_every_epoch_by_default(tmp_path):
    assert _run(tmp_path) == [1, 2, 3, 4, 5]


def test_interval_saves_the_final_epoch_too(tmp_path):
    assert _run(tmp_path, save_interval=2) == [2, 4, 5]


def test_min_interval_skips_saves_but_keeps_the_first_and_the_final_epoch(tmp_path):
    # saves at t=4 (epoch 1); epochs 2 and 3 come 4 and 8 s later (skipped); epoch 4 after 12 s; epoch 5 is final
    assert _run(tmp_path, min_interval_s=10.0) == [1, 4, 5]


def test_interval_and_minimum_seconds_combine(tmp_path):
    assert _run(tmp_path, max_epochs=7, save_interval=2, min_interval_s=10.0) == [2, 6, 7]


def test_checkpoint_loads(tmp_path):
    _run(tmp_path, max_epochs=1)
    state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["weight"].shape == (2, 2)  # Ignite stores a single object's state dict as it is


def test_invalid_minimum_interval(tmp_path):
    with pytest.raises(ValueError, match="min_interval_s"):
        AtomicCheckpointSaver(tmp_path, {"net": torch.nn.Linear(2, 2)}, min_interval_s=-1)
