"""The simsid_ct training bundle, run through MONAI's ConfigWorkflow with small overrides."""

from __future__ import annotations

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from conftest import bundle_config

SMALL = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "progress": False, "val_interval": 1}


def _workflow(datalist, out, **kw):
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(datalist), output_dir=str(out), **{**SMALL, **kw})
    wf.initialize()
    return wf


def test_two_iterations_write_a_calibrated_checkpoint_then_resume(synthetic_dataset, tmp_path):
    wf = _workflow(synthetic_dataset, tmp_path, max_epochs=1)
    wf.run()
    wf.finalize()
    ckpt = torch.load(tmp_path / "models" / "model.pt", weights_only=False)
    assert ckpt["meta"]["bundle"] == "simsid_ct"
    assert ckpt["meta"]["model_config"]["roi_size"] == [32, 32, 32]
    cal = ckpt["calibration"]
    assert cal["voxel_scale"] > 0 and cal["scan_std"] > 0 and "validation normal" in cal["source"]
    assert any(k.startswith("inpainting.") for k in ckpt["network"])
    assert list((tmp_path / "models").glob("checkpoint_*.pt"))

    # resume: continue to epoch 2; only the second epoch's iterations run
    wf2 = _workflow(synthetic_dataset, tmp_path, max_epochs=2, resume=True)
    trainer = wf2.parser.get_parsed_content("trainer")
    ran = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ran.append(e.state.iteration))
    wf2.run()
    assert wf2.parser.get_parsed_content("resume_handler").loaded_path is not None
    assert ran == [3, 4]
    assert trainer.state.epoch == 2
    wf2.finalize()


def test_hu_windows_are_applied_identically_in_training_and_inference(synthetic_dataset, tmp_path):
    from monai_simsid.apps.inference import load_predictor
    from monai_simsid.data.datalist import load_datalist

    windows = [[-1000, -400], [-160, 240], [-1000, 500]]
    wf = _workflow(synthetic_dataset, tmp_path, max_epochs=1, epoch_length=1, val_interval=10, hu_windows=windows,
                   image_pad_mode="constant")
    wf.run()
    train_pre = wf.parser.get_parsed_content("preprocessing")
    wf.finalize()
    ckpt = tmp_path / "models" / "model.pt"
    meta = torch.load(ckpt, weights_only=False)["meta"]
    assert meta["preprocessing"]["hu_windows"] == windows and meta["model_config"]["in_channels"] == 3
    assert meta["preprocessing"]["image_pad_mode"] == "constant"  # an override is saved and used at inference
    predictor = load_predictor("simsid_ct", ckpt, device="cpu")
    assert predictor.preprocessing_settings["image_pad_mode"] == "constant"
    case = load_datalist(synthetic_dataset, "test")[0]
    a = train_pre({"image": case["image"]})["image"]
    b = predictor.preprocessing({"image": case["image"]})["image"]
    assert a.shape[0] == 3
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0)
    assert predictor.predict({"image": case["image"]}).anomaly_map.ndim == 3


def test_speed_switches_are_wired(synthetic_dataset, tmp_path):
    wf = _workflow(synthetic_dataset, tmp_path, max_epochs=1, epoch_length=1, train_handlers=[], channels_last=True, compile="eager")
    net = wf.parser.get_parsed_content("network")
    assert net.encoder.levels[1][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    wf.run()
    out = wf.parser.get_parsed_content("trainer").state.output
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    wf.finalize()


def test_defaults_lung_window_map_and_replicate_padding(synthetic_dataset, tmp_path):
    wf = _workflow(synthetic_dataset, tmp_path, max_epochs=1, epoch_length=1, val_interval=10)
    lung_window = wf.parser.get_parsed_content("hu_windows")[0]
    assert lung_window[1] <= -400  # channel 0 is the lung window
    wf.run()
    wf.finalize()
    meta = torch.load(tmp_path / "models" / "model.pt", weights_only=False)["meta"]
    cfg = meta["model_config"]
    assert cfg["map_channels"] == [0]
    assert meta["preprocessing"]["image_pad_mode"] == "replicate"  # no artificial air edge where the scan is cut
    from monai_simsid.networks.nets import SimSID

    net = SimSID(**cfg).eval()
    x = torch.rand(1, cfg["in_channels"], *cfg["roi_size"])
    with torch.no_grad():
        out = net(x)
    expected = (x[:, :1] - out.reconstruction[:, :1]).abs()
    assert torch.allclose(out.anomaly_map, expected, atol=1e-6)


def test_skips_preset_merges_and_trains(synthetic_dataset, tmp_path):
    from monai_simsid.apps.inference import load_predictor
    from monai_simsid.data.datalist import load_datalist

    files = [bundle_config("simsid_ct", "train.json"), bundle_config("simsid_ct", "skips.json")]
    wf = ConfigWorkflow(config_file=files, workflow_type="train", datalist=str(synthetic_dataset), output_dir=str(tmp_path),
                        **{**SMALL, "max_epochs": 1, "epoch_length": 1, "val_interval": 10})
    wf.initialize()
    trainer = wf.parser.get_parsed_content("trainer")
    assert trainer.restore_weight == 10.0
    assert wf.parser.get_parsed_content("optimizer_g").param_groups[0]["lr"] == 1e-3
    net = wf.parser.get_parsed_content("network")
    assert net.memory_skips == (0, 1) and len(net.skip_proj) == 2
    wf.run()
    assert "restore" in trainer.state.output
    wf.finalize()
    ckpt = tmp_path / "models" / "model.pt"
    assert torch.load(ckpt, weights_only=False)["meta"]["model_config"]["memory_skips"] == [0, 1]
    predictor = load_predictor("simsid_ct", ckpt, device="cpu")  # inference rebuilds the skips from the checkpoint
    case = load_datalist(synthetic_dataset, "test")[0]
    assert predictor.predict({"image": case["image"]}).anomaly_map.ndim == 3


def test_an_excluded_region_of_a_training_normal_is_never_in_a_window(synthetic_dataset, tmp_path):
    """A datalist ``exclude`` mask rides through the bundle's preprocessing into model space; the training windows
    of that scan keep clear of it (grown by its margin), and training and calibration run."""
    import json

    import nibabel as nib
    import numpy as np

    from monai_simsid.data.exclusion import item_exclusion

    data = json.loads(synthetic_dataset.read_text())
    first = synthetic_dataset.parent / data["training"][0]["image"]
    ref = nib.load(str(first))
    mask = np.zeros(ref.shape, np.uint8)
    centre = np.asarray(ref.shape) // 2
    mask[tuple(slice(c - 2, c + 2) for c in centre)] = 1
    nib.save(nib.Nifti1Image(mask, ref.affine), str(tmp_path / "exclude.nii.gz"))
    data["training"][0] = {"image": str(first), "exclude": str(tmp_path / "exclude.nii.gz")}
    for section in ("training", "validation", "test"):
        for e in data[section]:
            for key in ("image", "label"):
                if e.get(key):
                    e[key] = str((synthetic_dataset.parent / e[key]).resolve())
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(data))
    wf = _workflow(datalist, tmp_path / "out", max_epochs=1, epoch_length=1, val_interval=10)
    item = wf.parser.get_parsed_content("train_items")[0]
    grown = item_exclusion(item)
    assert grown is not None and grown.sum() > float(item["exclude"].sum()) > 0
    dataset = wf.parser.get_parsed_content("train_dataset")
    roi = np.asarray(SMALL["roi_size"])
    for _ in range(10):
        for window in dataset[0]:
            s = window["window_start"].numpy()
            assert not grown[tuple(slice(a, a + r) for a, r in zip(s, roi))].any() and "exclude" not in window
    wf.run()
    wf.finalize()
    assert (tmp_path / "out" / "models" / "model.pt").is_file()
