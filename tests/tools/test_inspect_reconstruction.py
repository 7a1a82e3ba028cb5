"""tools/inspect_reconstruction.py: per-channel lesion vs body statistics of a model's reconstruction."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import load_tool
from monai_simsid.inferers import AnomalyInferer
from monai_simsid.networks.nets.simsid import SimSIDOutput


def _tool():
    return load_tool("inspect_reconstruction")


class _FlatRecon(torch.nn.Module):
    """Reconstructs every voxel as 0.1 in channel 0 and exactly in channel 1 (a model that leaks channel 1)."""

    def forward(self, x, region):
        recon = x.clone()
        recon[:, 0] = 0.1
        return SimSIDOutput(recon, (x - recon).abs().mean(1, keepdim=True), x.flatten(1).mean(1))


def test_lesion_statistics_per_channel(tmp_path):
    tool = _tool()
    shape = (40, 36, 32)
    image = torch.zeros(2, *shape)
    image[:, 10:20, 10:20, 10:20] = 1.0  # the lesion is bright in both channels
    body = torch.ones(1, *shape)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    lab = np.zeros(shape, dtype=np.uint8)
    lab[10:20, 10:20, 10:20] = 1
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "lab.nii.gz"))
    predictor = SimpleNamespace(
        prepare=lambda item: {"image": image, "body": body, "model_affine": affine},
        inferer=AnomalyInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25),
        network=_FlatRecon(),
        device=torch.device("cpu"),
    )
    stats, arrays = tool.inspect(predictor, "img", str(tmp_path / "lab.nii.gz"))
    assert stats["lesion_voxels_model_grid"] == 1000
    c0, c1 = stats["channels"]
    assert c0["input_lesion"] == pytest.approx(1.0) and c0["input_rest"] == pytest.approx(0.0)
    assert c0["recon_lesion"] == pytest.approx(0.1, abs=1e-5) and c0["error_lesion"] == pytest.approx(0.9, abs=1e-5)
    assert c0["error_rest"] == pytest.approx(0.1, abs=1e-5)
    assert c1["error_lesion"] == pytest.approx(0.0, abs=1e-5)  # the leaking channel shows no lesion error
    assert arrays["lesion"].sum() == 100  # the slice with the most lesion voxels
    tool.save_png(arrays, str(tmp_path / "x.png"))
    assert (tmp_path / "x.png").stat().st_size > 1000
