"""The baseline bundles (autoencoder_ct, cutpaste_ct, ganomaly_ct): train 2 iterations, then run inference.

Each bundle is trained once (module-scoped fixture) through MONAI's ConfigWorkflow with small overrides, like
test_simsid_ct_train.py; inference.json then has to write the same contract files as simsid_ct.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config
from monai_simsid.apps.inference import load_predictor
from monai_simsid.data.datalist import load_datalist

BUNDLES = ("autoencoder_ct", "cutpaste_ct", "ganomaly_ct")
SMALL = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "progress": False,
         "val_interval": 1, "max_epochs": 1}
# CutPaste draws its own pretext windows: keep their number and the density fit small
EXTRA = {"cutpaste_ct": {"pretext_samples": 8, "batch_size": 4, "density_windows_per_scan": 4, "regenerate_every": 3}}
# the parameter name that only each model has (checks the right network was trained and saved)
MODEL_KEY = {"autoencoder_ct": "bottleneck.", "cutpaste_ct": "density.", "ganomaly_ct": "encoder_hat."}


def _train_workflow(bundle, datalist, out, **kw):
    wf = ConfigWorkflow(config_file=bundle_config(bundle, "train.json"), workflow_type="train", datalist=str(datalist),
                        output_dir=str(out), **{**SMALL, **EXTRA.get(bundle, {}), **kw})
    wf.initialize()
    return wf


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    """bundle name -> path of its model.pt, each bundle trained for 2 iterations (trained lazily, once)."""
    cache: dict[str, object] = {}

    def _get(bundle):
        if bundle not in cache:
            out = tmp_path_factory.mktemp(bundle)
            wf = _train_workflow(bundle, synthetic_dataset, out)
            wf.run()
            wf.finalize()
            cache[bundle] = out / "models" / "model.pt"
        return cache[bundle]

    return _get


def _version(bundle: str) -> str:
    with open(bundle_config(bundle, "metadata.json")) as f:
        return json.load(f)["version"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_two_iterations_write_a_calibrated_checkpoint(bundle, trained):
    path = trained(bundle)
    ckpt = torch.load(path, weights_only=False)
    meta = ckpt["meta"]
    assert meta["bundle"] == bundle and meta["version"] == _version(bundle)
    assert meta["roi_size"] == [32, 32, 32] and meta["iteration"] == 2
    cal = ckpt["calibration"]
    assert cal["voxel_scale"] > 0 and cal["scan_std"] > 0 and "validation normal" in cal["source"]
    assert any(k.startswith(MODEL_KEY[bundle]) for k in ckpt["network"])
    assert list(path.parent.glob("checkpoint_*.pt"))
    # the window layout the thresholds were calibrated with travels with them, and inference uses it
    defaults = ConfigWorkflow(config_file=bundle_config(bundle, "train.json"), workflow_type="train").parser
    assert meta["sw_overlap"] == defaults["sw_overlap"] and meta["sw_margin"] == 0
    inferer = load_predictor(bundle, path).inferer
    assert inferer.overlap == meta["sw_overlap"] and inferer.margin == (0, 0, 0)
    if bundle == "ganomaly_ct":
        assert meta["model_config"]["roi_size"] == [32, 32, 32]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_writes_the_contract_files(bundle, trained, synthetic_dataset, tmp_path):
    case = next(c for c in load_datalist(synthetic_dataset, "test") if c.get("label"))
    src = nib.load(case["image"])
    (tmp_path / "in").mkdir()
    nib.save(src, str(tmp_path / "in" / "case.nii.gz"))
    out = tmp_path / "out"
    wf = ConfigWorkflow(config_file=bundle_config(bundle, "inference.json"), workflow_type="infer",
                        ckpt_path=str(trained(bundle)), dataset_dir=str(tmp_path / "in"), output_dir=str(out),
                        write_png=False)
    wf.initialize()
    result = wf.run()
    wf.finalize()
    assert result[0]["done"] == ["case"]
    folder = out / "case"
    for suffix in ("_anomaly_map.nii.gz", "_anomaly_mask.nii.gz", "_anomaly.seg.nrrd", "_report.json"):
        assert (folder / f"case{suffix}").is_file(), suffix
    amap = nib.load(str(folder / "case_anomaly_map.nii.gz"))
    assert amap.shape == src.shape
    np.testing.assert_allclose(amap.affine, src.affine, atol=1e-5)
    data = np.asarray(amap.dataobj)
    assert 0.0 <= data.min() and data.max() <= 1.0 and data.max() > 0
    assert nib.load(str(folder / "case_anomaly_mask.nii.gz")).shape == src.shape
    report = json.loads((folder / "case_report.json").read_text())
    assert report["bundle"]["name"] == bundle and 0 <= report["score"] <= 1
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "case,score,label,findings" and rows[1].startswith("case,")


def test_inference_refuses_another_bundles_checkpoint(trained, tmp_path):
    wf = ConfigWorkflow(config_file=bundle_config("ganomaly_ct", "inference.json"), workflow_type="infer",
                        ckpt_path=str(trained("autoencoder_ct")), dataset_dir=str(tmp_path), output_dir=str(tmp_path))
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    assert "autoencoder_ct" in repr(info.value) or "autoencoder_ct" in repr(info.value.__cause__)


def test_cutpaste_wires_regeneration_density_and_overlap(synthetic_dataset, tmp_path):
    wf = _train_workflow("cutpaste_ct", synthetic_dataset, tmp_path, regenerate_every=4, val_interval=3)
    parser = wf.parser
    handlers = parser.get_parsed_content("train_handlers")
    names = [type(h).__name__ for h in handlers]
    regen = handlers[names.index("RegeneratePretextHandler")]
    assert regen.every_n_epochs == 4 == parser["regenerate_every"]
    assert regen.target is parser.get_parsed_content("train_dataset")
    density = handlers[names.index("DensityFitHandler")]
    assert density.every_n_epochs == 3
    # the density is fitted before validation and before calibration (same-event handlers run in list order)
    assert names.index("DensityFitHandler") < names.index("ValidationHandler") < names.index("CalibrationHandler")
    assert len(parser.get_parsed_content("train_dataset")) == EXTRA["cutpaste_ct"]["pretext_samples"]
    labels = parser.get_parsed_content("train_dataset").labels()
    assert set(labels.tolist()) <= {0, 1, 2}
    # defaults: 64^3 windows, and enough overlap at inference for a smooth map
    defaults = ConfigWorkflow(config_file=bundle_config("cutpaste_ct", "train.json"), workflow_type="train").parser
    assert defaults["roi_size"] == [64, 64, 64] and defaults["sw_overlap"] >= 0.5
    assert defaults["inferer"]["overlap"] == "@sw_overlap"  # inference reads it back from the checkpoint


@pytest.mark.parametrize("freeze", [False, True])
def test_ganomaly_transfer_learning_from_cutpaste(freeze, trained, synthetic_dataset, tmp_path):
    source = trained("cutpaste_ct")
    wf = _train_workflow("ganomaly_ct", synthetic_dataset, tmp_path, pretrained_encoder=str(source),
                         freeze_encoder=freeze)
    net = wf.parser.get_parsed_content("network")
    cp = torch.load(source, weights_only=False)["network"]
    enc = net.encoder.state_dict()
    assert enc and all(torch.equal(v.cpu(), cp["encoder." + k]) for k, v in enc.items())
    assert all(p.requires_grad is (not freeze) for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.encoder_hat.parameters())
    # the optimiser is built over the same (initialised) network
    opt = wf.parser.get_parsed_content("optimizer_g")
    assert any(p is next(net.encoder.parameters()) for g in opt.param_groups for p in g["params"])


def test_ganomaly_without_pretrained_encoder_keeps_its_own_init(synthetic_dataset, tmp_path):
    wf = _train_workflow("ganomaly_ct", synthetic_dataset, tmp_path)
    assert wf.parser["pretrained_encoder"] is None and wf.parser["freeze_encoder"] is False
    net = wf.parser.get_parsed_content("network")
    assert all(p.requires_grad for p in net.parameters())
