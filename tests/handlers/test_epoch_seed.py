"""EpochSeedHandler: the samples of an epoch depend on (seed, epoch, item) only, not on data-loader workers or resume."""

from __future__ import annotations

import numpy as np
import pytest
from ignite.engine import Engine
from monai.data import DataLoader
from monai.transforms import Randomizable

from monai_simsid.data.seeded import SeededDataset
from monai_simsid.handlers import EpochSeedHandler

SEED = 3


class _Draw(Randomizable):
    """One random number per item (stands in for a random window sampler)."""

    def __call__(self, index):
        return {"i": index, "v": np.float32(self.R.rand())}


def _run(
    num_workers: int, epoch_length: int | None, max_epochs: int = 3, start_epoch: int = 0, restart_data: bool = True
):
    """Train-like run over 6 items in batches of 2; returns ``[(epoch, item indices, values), ...]``."""
    ds = SeededDataset(list(range(6)), _Draw(), seed=SEED)
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=num_workers)
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, b["i"].tolist(), np.round(b["v"].numpy(), 6).tolist())))
    EpochSeedHandler(SEED, [ds], restart_data=restart_data).attach(engine)
    if start_epoch:  # what a resumed run's checkpoint loader restores
        length = epoch_length or len(loader)
        engine.load_state_dict({"epoch": start_epoch, "max_epochs": max_epochs, "epoch_length": length})
    engine.run(loader, max_epochs=max_epochs, epoch_length=epoch_length)
    return seen


@pytest.mark.parametrize("epoch_length", [None, 2, 5])
def test_workers_draw_the_serial_samples(epoch_length):
    serial = _run(0, epoch_length)
    assert len({tuple(v) for _, _, v in serial}) == len(serial)  # the draws are not all alike
    assert _run(2, epoch_length) == serial


@pytest.mark.parametrize("epoch_length", [None, 2])
def test_resumed_run_draws_the_uninterrupted_samples(epoch_length):
    full = _run(0, epoch_length)
    resumed = _run(0, epoch_length, start_epoch=1)
    assert resumed == [b for b in full if b[0] > 1]


def test_without_restart_workers_keep_stale_seeds():
    """The failure the restart prevents: an epoch ending mid-pass leaves prefetched items seeded by the old epoch."""
    serial = _run(0, 2, restart_data=False)
    assert _run(2, 2, restart_data=False) != serial
