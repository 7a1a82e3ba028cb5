"""Label-free checkpoint selection: synthetic lesions in normal scans rank a seeing model above a blind one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_simsid.apps import selection
from monai_simsid.apps.selection import rank_checkpoints, synthetic_lesion_scores
from monai_simsid.inferers import AnomalyInferer


class _Deviation(torch.nn.Module):
    """Sees everything: the map is the distance from the normals' constant intensity."""

    def forward(self, x, region):
        amap = (x - 0.5).abs().mean(1, keepdim=True)
        return SimpleNamespace(anomaly_map=amap, score=amap.flatten(1).mean(1))


class _Blind(torch.nn.Module):
    """Sees nothing: a constant map."""

    def forward(self, x, region):
        amap = torch.ones_like(x[:, :1])
        return SimpleNamespace(anomaly_map=amap, score=amap.flatten(1).mean(1))


def _normals(n=2, size=(40, 36, 32), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = 0.5 + rng.normal(0, 0.01, (1, *size)).astype(np.float32)
        image[0, 0, 0, 0], image[0, -1, -1, -1] = 0.0, 1.0  # the intensity range (lesion contrast is a fraction of it)
        out.append({"image": torch.as_tensor(image), "body": torch.ones(1, *size)})
    return out


def _inferer():
    return AnomalyInferer(roi_size=(32, 32, 32), region_grid=(1, 1, 1), sw_batch_size=4, overlap=0.25)


def test_a_seeing_model_scores_high_and_a_blind_one_at_chance():
    normals = _normals()
    seeing = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(0, 1))
    blind = synthetic_lesion_scores(_Blind(), _inferer(), normals, seeds=(0, 1))
    assert seeing["num_lesion_cases"] == blind["num_lesion_cases"] == 4
    assert seeing["voxel_auroc"] > 0.8 and seeing["voxel_ap"] > 0.4  # the labels include the blurred rims
    assert seeing["sample_auroc"] == 1.0
    assert blind["voxel_auroc"] == pytest.approx(0.5)
    assert blind["voxel_ap"] < 0.05 and blind["sample_auroc"] == pytest.approx(0.5)


def test_the_same_lesions_for_every_call_and_other_lesions_for_other_seeds():
    normals = _normals()
    a = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(0,))
    b = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(0,))
    c = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(5,))
    assert a == b
    assert a["voxel_ap"] != c["voxel_ap"]
    assert all(float(torch.as_tensor(n["image"])[0, 1:-1].std()) < 0.05 for n in normals)  # the normals stay untouched


def test_an_excluded_region_of_a_normal_is_not_scored():
    """A bright spot in one normal makes it score like a lesion case; excluded, it no longer counts."""
    from monai.data import MetaTensor

    normals = _normals()
    normals[0]["image"][0, 18:22, 16:20, 14:18] = 1.0
    with_spot = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(0, 1))
    mask = torch.zeros(1, 40, 36, 32)
    mask[0, 18:22, 16:20, 14:18] = 1
    normals[0]["exclude"] = MetaTensor(mask, affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0])))
    excluded = synthetic_lesion_scores(_Deviation(), _inferer(), normals, seeds=(0, 1))
    assert with_spot["sample_auroc"] < 1.0 and excluded["sample_auroc"] == 1.0


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="normal"):
        synthetic_lesion_scores(_Blind(), _inferer(), [], seeds=(0,))
    with pytest.raises(ValueError, match="seed"):
        synthetic_lesion_scores(_Blind(), _inferer(), _normals(1), seeds=())


def _fake_predictors(monkeypatch, nets, seen):
    def load_predictor(bundle, path, device=None):
        return SimpleNamespace(network=nets[path], inferer=_inferer(), score_method="topk", calibration={},
                               preprocessing_settings={}, preprocessing=lambda e: seen.append(e["image"]) or _normals(1, seed=len(seen))[0])

    monkeypatch.setattr("monai_simsid.apps.inference.load_predictor", load_predictor)


def test_rank_checkpoints_puts_the_seeing_model_first_and_uses_validation_normals_only(monkeypatch, tmp_path):
    for name in ("train", "val_normal", "val_lesion", "val_lesion_mask"):
        (tmp_path / f"{name}.nii.gz").touch()  # the datalist checks that its files exist; the fake loader reads none
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({
        "training": [{"image": "train.nii.gz"}],
        "validation": [{"image": "val_normal.nii.gz"}, {"image": "val_lesion.nii.gz", "label": "val_lesion_mask.nii.gz"}],
    }))
    seen: list = []
    _fake_predictors(monkeypatch, {"blind.pt": _Blind(), "seeing.pt": _Deviation()}, seen)
    result = rank_checkpoints("simsid_ct", ["blind.pt", "seeing.pt"], dl, seeds=(0,))
    assert result["best"] == "seeing.pt"
    assert [r["checkpoint"] for r in result["ranking"]] == ["seeing.pt", "blind.pt"]
    assert [n.endswith("val_normal.nii.gz") for n in result["normals"]] == [True]
    assert len(seen) == 1 and seen[0].endswith("val_normal.nii.gz")  # preprocessed once, the lesion case never


def test_rank_checkpoints_falls_back_to_training_scans_and_checks_the_metric(monkeypatch, tmp_path, caplog):
    for name in ("a", "b"):
        (tmp_path / f"{name}.nii.gz").touch()
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}]}))
    _fake_predictors(monkeypatch, {"x.pt": _Deviation()}, [])
    with caplog.at_level("WARNING", logger=selection.__name__):
        result = rank_checkpoints("simsid_ct", ["x.pt"], dl, seeds=(0,), metric="sample_auroc")
    assert len(result["normals"]) == 2 and "training normals" in caplog.text
    with pytest.raises(ValueError, match="metric"):
        rank_checkpoints("simsid_ct", ["x.pt"], dl, metric="dice")
    with pytest.raises(ValueError, match="checkpoint"):
        rank_checkpoints("simsid_ct", [], dl)
