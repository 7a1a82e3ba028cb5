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


def test_kill_9_mid_training_then_resume(synthetic_dataset, tmp_path):
    """A training process killed with SIGKILL after its first checkpoint resumes to the uninterrupted weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    straight = _train(synthetic_dataset, tmp_path / "straight", max_epochs=4)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle_config("simsid_ct", "train.json"),
           "--datalist", str(synthetic_dataset), "--output_dir", str(out), "--max_epochs", "4"]
    for k, v in SMALL.items():
        cmd += [f"--{k}", str(v)]
    # the killed process must compute like this one: same intra-op thread count (other tests change it)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not list((out / "models").glob("checkpoint_epoch=*.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "models" / "model.pt").exists(), "the run finished before it could be killed"
    resumed = _train(synthetic_dataset, out, max_epochs=4, resume=True)
    worst = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight if straight[k].is_floating_point())
    assert worst <= 1e-4, f"largest weight difference {worst:.3g}"


def test_training_with_a_bad_scan_fails_with_one_line(tmp_path, ct_file):
    import json
    import subprocess
    import sys

    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [{"image": "empty.nii.gz"}]}))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle_config("simsid_ct", "train.json"),
           "--datalist", str(dl), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "empty.nii.gz" in lines[0] and "file is empty" in lines[0]
    assert "Traceback" not in proc.stderr
