"""``configs/multi_gpu_train.json``: two gloo processes launched with torchrun train the same weights as one process.

Two DDP processes with one window each must end where one process with both windows in a batch ends: DDP
averages the generator's gradients, our trainers average the discriminator's (it runs outside the DDP wrapper), and
:class:`~monai_simsid.data.seeded.SeededDataset` gives every item the same random window whichever process loads it.
Batch statistics are per process on CPU (SyncBatchNorm needs CUDA), so these runs use instance norm or none, and
plain SGD so that equal gradients mean equal weights.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config

from monai_simsid.apps.checkpoint import latest_checkpoint
from monai_simsid.data.synthetic import write_synthetic_dataset

#: what a gloo rank prints when it aborts at interpreter exit (std::terminate from a joinable thread)
EXIT_ABORT = "terminate called without an active exception"

COMMON = {
    "roi_size": [32, 32, 32],
    "num_samples": 1,
    "max_epochs": 2,  # two iterations: SimSID's adversarial generator term runs on the second
    "progress": False,
    "val_interval": 100,
    "target_spacing": [3.0, 3.0, 3.0],
}
NO_HANDLERS = {"train_handlers": []}
# plain SGD: the weights then differ exactly as much as the gradients do. (Adam divides by sqrt(v): a gradient that
# is zero up to rounding, like an attention key bias, becomes a full +-lr step of either sign.)
GAN_SGD = {
    "optimizer_g": {"_target_": "torch.optim.SGD", "params": "$@network_def.generator_parameters()", "lr": 0.05},
    "optimizer_d": {"_target_": "torch.optim.SGD", "params": "$@network_def.discriminator_parameters()", "lr": 0.05},
}
MODELS = {
    "autoencoder_ct": {
        **NO_HANDLERS,
        "channels": [4, 8],
        "model_config#latent_channels": 4,
        "model_config#norm": "instance",
        "optimizer": {"_target_": "torch.optim.SGD", "params": "$@network_def.parameters()", "lr": 0.05},
    },
    "simsid_ct": {
        **GAN_SGD,
        "channels": [4, 8],
        "model_config#embed_dim": 16,
        "model_config#num_heads": 2,
        "model_config#num_slots": 8,
        "model_config#norm": "instance",
        "model_config#disc_norm": "instance",
        "model_config#disc_channels": [4, 4, 4, 4, 4],
        "loss_weights#d": 1.0,  # the default 0.005 barely moves the discriminator in two steps
        "loss_weights#g_adv": 1.0,
        # the full handler list: validation on both ranks (distributed sampler, gathered metric), calibration and
        # best-model saving on rank 0
        "val_interval": 2,
    },
    "ganomaly_ct": {
        **NO_HANDLERS,
        **GAN_SGD,
        "channels": [4, 8],
        "model_config#latent_dim": 8,
        "model_config#norm": None,
        "model_config#disc_channels": [4, 4, 4, 4, 4],
    },
}
TOL = 5e-5  # float32 rounding of 2 x 1 vs 1 x 2 windows through the 3-channel SimSID reaches ~2e-5


@pytest.fixture(scope="module")
def two_scans(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_scans")
    return write_synthetic_dataset(out, num_normal=2, num_abnormal=0, size=40, spacing=3.0, seed=5, num_val_normal=0)


def _weights(ckpt_dir) -> dict[str, torch.Tensor]:
    path = latest_checkpoint(ckpt_dir)
    assert path is not None, f"no checkpoint in {ckpt_dir}"
    return torch.load(path, map_location="cpu", weights_only=False)["network"]


@pytest.mark.parametrize("bundle", sorted(MODELS))
def test_two_process_gloo_training_matches_one_process(bundle, two_scans, tmp_path):
    overrides = {**COMMON, **MODELS[bundle]}
    override_file = tmp_path / "small.json"
    override_file.write_text(json.dumps(overrides))

    # one process, both windows in one batch
    single_dir = tmp_path / "single"
    wf = ConfigWorkflow(
        config_file=[bundle_config(bundle, "train.json"), str(override_file)],
        workflow_type="train",
        datalist=str(two_scans),
        output_dir=str(single_dir),
        batch_size=2,
    )
    wf.initialize()
    initial = copy.deepcopy(wf.parser.get_parsed_content("network").state_dict())
    wf.run()
    wf.finalize()
    single = _weights(single_dir / "models")

    # two processes (torchrun, gloo), one window each
    ddp_dir = tmp_path / "ddp"
    configs = [bundle_config(bundle, "train.json"), bundle_config(bundle, "multi_gpu_train.json"), str(override_file)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
        "--datalist", str(two_scans), "--output_dir", str(ddp_dir), "--batch_size", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and EXIT_ABORT in proc.stderr:
        # on a loaded machine a gloo rank sometimes aborts at interpreter exit, after the process group was destroyed
        # and the run finished; a second launch must then succeed (a crash during training fails either way)
        shutil.rmtree(ddp_dir, ignore_errors=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = _weights(ddp_dir / "models")

    assert set(ddp) == set(single), "the DDP checkpoint must hold the unwrapped network (no 'module.' prefix)"
    moved = max(float((single[k].float() - initial[k].float()).abs().max()) for k in single if single[k].is_floating_point())
    assert moved > 10 * TOL, f"training barely moved the weights ({moved:.2e}); the comparison would be vacuous"
    for key in single:
        if not single[key].is_floating_point():
            continue
        diff = float((ddp[key].float() - single[key].float()).abs().max())
        assert diff <= TOL, f"{bundle}: {key} differs by {diff:.2e} between 2-process DDP and 1-process training"
    if "train_handlers" not in overrides:  # rank 0 validated, saved the best model and calibrated
        assert {"model.pt", "model_best_weights.pt"} <= {p.name for p in (ddp_dir / "models").iterdir()}
    if bundle == "autoencoder_ct":
        return
    disc = [k for k in single if k.startswith("discriminator.") and single[k].is_floating_point()]
    assert disc and max(float((single[k] - initial[k]).abs().max()) for k in disc) > 10 * TOL
