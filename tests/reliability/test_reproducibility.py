"""Reproducibility on CPU: same seed, same weights; same checkpoint and input, byte-identical map and report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config
from monai_simsid.apps.inference import load_predictor
from monai_simsid.data.datalist import load_datalist
from monai_simsid.export import read_slicer_segmentation

TINY_TRAIN = {"roi_size": [32, 32, 32], "num_samples": 2, "batch_size": 2, "epoch_length": 2, "max_epochs": 1, "progress": False, "val_interval": 1}


def _train(datalist, out):
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train", datalist=str(datalist), output_dir=str(out), **TINY_TRAIN)
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "models" / "model.pt"


@pytest.fixture(scope="module")
def two_trainings(synthetic_dataset, tmp_path_factory):
    return _train(synthetic_dataset, tmp_path_factory.mktemp("a")), _train(synthetic_dataset, tmp_path_factory.mktemp("b"))


def _differences(a, b, path="calibration") -> list[str]:
    """Paths at which two nested calibrations differ (tensors and arrays compared element for element)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} vs {sorted(b)}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        same = type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))
        return [] if same else [path]
    return [] if a == b else [path]


def test_same_seed_gives_identical_weights_and_calibration(two_trainings):
    a, b = (torch.load(p, weights_only=False) for p in two_trainings)
    assert a["network"].keys() == b["network"].keys()
    different = [k for k in a["network"] if not torch.equal(a["network"][k], b["network"][k])]
    assert not different, f"weights differ between two runs with the same seed: {different[:5]}"
    assert "fusion" in a["calibration"]  # the default calibration holds the descriptor bank (tensors)
    assert not _differences(a["calibration"], b["calibration"]), _differences(a["calibration"], b["calibration"])


def test_same_checkpoint_and_input_give_identical_outputs(two_trainings, synthetic_dataset, tmp_path):
    item = load_datalist(synthetic_dataset, "test")[-1]
    case = item["image"].split("/")[-1].split(".")[0]
    outs = []
    # two predictors (one per checkpoint file, so nothing is shared through the predictor cache)
    for i, ckpt in enumerate(two_trainings):
        predictor = load_predictor("simsid_ct", ckpt, device="cpu", write_png=False)
        out = tmp_path / f"run{i}"
        assert predictor.run([{"image": item["image"]}], out)["done"] == [case]
        outs.append(out / case / case)
    for suffix in ("_anomaly_map.nii.gz", "_anomaly_mask.nii.gz", "_report.json"):
        a, b = (open(f"{o}{suffix}", "rb").read() for o in outs)
        assert a == b, f"{suffix} differs between two runs"
    # the Slicer segmentation's gzip stream carries a time stamp: compare its content
    (seg_a, aff_a), (seg_b, aff_b) = (read_slicer_segmentation(f"{o}_anomaly.seg.nrrd") for o in outs)
    assert np.array_equal(seg_a, seg_b) and np.array_equal(aff_a, aff_b)
    report = json.loads(open(f"{outs[0]}_report.json").read())
    assert "created" not in report and "timings_s" not in report
    timings = json.loads(open(f"{outs[0]}_timings.json").read())
    assert set(timings) == {"preprocess_s", "model_s", "postprocess_s", "write_s"}


def test_repeated_prediction_is_bit_identical(two_trainings, synthetic_dataset):
    item = load_datalist(synthetic_dataset, "test")[0]
    predictor = load_predictor("simsid_ct", two_trainings[0], device="cpu", write_png=False)
    p1, p2 = predictor.predict(item), predictor.predict(item)
    assert np.array_equal(p1.anomaly_map, p2.anomaly_map) and p1.raw_score == p2.raw_score
