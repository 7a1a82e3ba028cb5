"""TorchScript and ONNX exports of a trained bundle match eager mode, region input included."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import bundle_config
from monai_simsid.apps.export import export_onnx, export_torchscript, input_channels, load_bundle_network, max_export_error


@pytest.fixture(scope="module")
def ckpt(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_train")
    wf = ConfigWorkflow(config_file=bundle_config("simsid_ct", "train.json"), workflow_type="train",
                        datalist=str(synthetic_dataset), output_dir=str(out), roi_size=[32, 32, 32], num_samples=2,
                        batch_size=1, epoch_length=1, max_epochs=1, progress=False, val_interval=10)
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "models" / "model.pt"


def test_torchscript_and_onnx_match_eager(ckpt, tmp_path):
    net, roi = load_bundle_network("simsid_ct", ckpt)
    assert roi == [32, 32, 32]
    ts = export_torchscript(net, roi, tmp_path / "m.ts")
    assert max_export_error(net, roi, ts, regions=(1, 20)) < 1e-4
    pytest.importorskip("onnxruntime")
    onnx_path = export_onnx(net, roi, tmp_path / "m.onnx")
    assert max_export_error(net, roi, onnx_path, regions=(2, 26)) < 1e-4
    # the region is a real input of the exported graph, not a constant baked in by tracing
    mod = torch.jit.load(str(ts))
    x = torch.rand(1, input_channels(net), *roi)
    with torch.no_grad():
        a, b = mod(x, torch.tensor([0]))[1], mod(x, torch.tensor([13]))[1]
    assert not torch.allclose(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes left no temp file


def test_monai_ckpt_export_of_the_region_packed_network(ckpt, tmp_path):
    """``python -m monai.bundle ckpt_export export_network_def ...`` (here called in-process): one packed input."""
    from monai.bundle import ckpt_export

    from monai_simsid.apps.export import pack_region

    ts_path = tmp_path / "model.ts"
    channels = torch.load(ckpt, weights_only=False)["meta"]["model_config"]["in_channels"]
    ckpt_export(
        net_id="export_network_def", filepath=str(ts_path), ckpt_file=str(ckpt), ckpt_path=str(ckpt),
        config_file=bundle_config("simsid_ct", "inference.json"), meta_file=bundle_config("simsid_ct", "metadata.json"),
        key_in_ckpt="network", use_trace=True, input_shape=[1, channels + 1, 32, 32, 32],
    )  # fmt: skip
    net, roi = load_bundle_network("simsid_ct", ckpt)
    mod = torch.jit.load(str(ts_path))
    x, region = torch.rand(2, channels, *roi) * 2 - 1, torch.tensor([1, 20])
    with torch.no_grad():
        ref = net(x, region)
        out = mod(pack_region(x, region))
    assert float((out[1] - ref.anomaly_map).abs().max()) < 1e-4
    assert float((out[2] - ref.score).abs().max()) < 1e-4
    with torch.no_grad():  # the region channel is read, not baked in
        other = mod(pack_region(x, torch.tensor([0, 0])))[1]
    assert not torch.allclose(other, out[1])
