"""Resume equivalence: 2 epochs in one go vs a run stopped after epoch 1 and resumed to 2 give the same weights."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from conftest import bundle_config

SMALL = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "progress": False, "val_interval": 1}


def _train(datalist, out, stop_after_epoch=None, **kw):
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(datalist), output_dir=str(out), **{**SMALL, **kw})
    wf.initialize()
    if stop_after_epoch is not None:  # an interrupted run: same config, stopped after the epoch's checkpoint
        trainer = wf.parser.get_parsed_content("trainer")
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
    wf.run()
    wf.finalize()
    return torch.load(out / "models" / "model.pt", weights_only=False)["network"]


def test_resumed_training_matches_uninterrupted_training(synthetic_dataset, tmp_path):
    straight = _train(synthetic_dataset, tmp_path / "straight", max_epochs=2)
    _train(synthetic_dataset, tmp_path / "resumed", stop_after_epoch=1, max_epochs=2)
    resumed = _train(synthetic_dataset, tmp_path / "resumed", max_epochs=2, resume=True)
    worst = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight if straight[k].is_floating_point())
    assert worst <= 1e-5, f"largest weight difference {worst:.3g}"
