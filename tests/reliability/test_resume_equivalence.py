"""Resume equivalence: 2 epochs in one go vs 1 epoch then ``resume: true`` to 2 epochs give the same weights."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config

SMALL = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "progress": False, "val_interval": 1}


def _train(datalist, out, **kw):
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(datalist), output_dir=str(out), **{**SMALL, **kw})
    wf.initialize()
    wf.run()
    wf.finalize()
    return torch.load(out / "models" / "model.pt", weights_only=False)["network"]


@pytest.mark.xfail(
    strict=True,
    reason="resume restores model, memory, optimisers, schedulers and epoch/iteration but not the random state: "
    "train.json re-seeds (set_determinism, window_sampler.set_random_state) at start-up and the checkpoint holds no "
    "RNG state of the window sampler, the DataLoader shuffle or the corruption, so the resumed epoch draws the "
    "first epoch's windows again (likely cause, not isolated further)",
)
def test_resumed_training_matches_uninterrupted_training(synthetic_dataset, tmp_path):
    straight = _train(synthetic_dataset, tmp_path / "straight", max_epochs=2)
    _train(synthetic_dataset, tmp_path / "resumed", max_epochs=1)
    resumed = _train(synthetic_dataset, tmp_path / "resumed", max_epochs=2, resume=True)
    worst = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight if straight[k].is_floating_point())
    assert worst <= 1e-5, f"largest weight difference {worst:.3g}"
