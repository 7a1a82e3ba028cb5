"""Export a trained bundle's network to TorchScript and ONNX, and check the exports against eager mode.

The exported graph takes ``(image (B, 1, *roi), region (B,) int64)`` and returns ``(reconstruction or embedding,
anomaly_map, score)`` in eval mode. The region input matters: SimSID reads the memory of each window's body region,
so a plain single-input export would silently use region 0 everywhere; hence this helper traces with both inputs.

MONAI's ``python -m monai.bundle ckpt_export`` traces a network with ONE input tensor. For it, every bundle's
``inference.json`` defines ``export_network_def``, a :class:`RegionPackedNetwork`: the same weights, one input
``(B, C + 1, *roi)`` whose last channel holds the window's region index (constant over the window).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_simsid.utils.atomic import atomic_path

__all__ = [
    "RegionPackedNetwork",
    "export_onnx",
    "export_torchscript",
    "input_channels",
    "load_bundle_network",
    "max_export_error",
    "pack_region",
]


def pack_region(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` windows and ``(B,)`` region indices -> ``(B, C + 1, *S)``, the region as a constant channel."""
    reg = region.to(image.dtype).reshape(-1, *([1] * (image.dim() - 1))).expand(-1, 1, *image.shape[2:])
    return torch.cat([image, reg], dim=1)


class RegionPackedNetwork(torch.nn.Module):
    """Single-input view of a network taking ``(image, region)``, for ``monai.bundle ckpt_export``.

    ``forward(packed)`` with ``packed = pack_region(image, region)`` returns ``tuple(net(image, region))`` in eval
    mode: ``(reconstruction or embedding, anomaly_map, score)``. ``state_dict``/``load_state_dict`` are the wrapped
    network's own (no ``net.`` prefix), so ``ckpt_export --key_in_ckpt network`` loads a ``model.pt`` into it.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def state_dict(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, packed: torch.Tensor):  # noqa: D102
        image = packed[:, :-1]
        region = packed[:, -1].reshape(packed.shape[0], -1)[:, 0].round().long()
        return tuple(self.net(image, region))


def load_bundle_network(bundle_name: str, ckpt_path: str | os.PathLike) -> tuple[torch.nn.Module, list[int]]:
    """A bundle's network with the checkpoint's weights (eval mode, CPU) and its window size."""
    from monai.bundle import ConfigParser

    from monai_simsid.apps.config import bundle_root

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_root(bundle_name), "configs", "inference.json"))
    parser["ckpt_path"] = str(ckpt_path)
    parser["device"] = "cpu"
    net = parser.get_parsed_content("network").eval()
    roi = parser.get_parsed_content("inferer").roi_size
    return net, list(roi)


def input_channels(net: torch.nn.Module) -> int:
    """Image channels a network takes (those of its first convolution; 1 if it has none)."""
    conv = next((m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
    return 1 if conv is None else int(conv.in_channels)


def _example(roi, batch: int = 2, seed: int = 0, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, *roi), generator=g) * 2 - 1, torch.zeros(batch, dtype=torch.long)


class _Tupled(torch.nn.Module):
    """Eval-mode wrapper returning a plain tuple (TorchScript and ONNX need no NamedTuple)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, region: torch.Tensor):  # noqa: D102
        return tuple(self.net(image, region))


def export_torchscript(net: torch.nn.Module, roi: list[int], path: str | os.PathLike) -> Path:
    """Trace ``net`` with (image, region) and save it atomically."""
    wrapped = _Tupled(net.eval())
    # the input checks of the networks trigger TracerWarnings; correctness is checked by max_export_error
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapped, _example(roi, channels=input_channels(net)), strict=False, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return Path(path)


def export_onnx(net: torch.nn.Module, roi: list[int], path: str | os.PathLike, opset: int = 17) -> Path:
    """Export ``net`` to ONNX (dynamic batch) atomically; needs the ``onnx`` package."""
    wrapped = _Tupled(net.eval())
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped, _example(roi, channels=input_channels(net)), str(tmp), input_names=["image", "region"],
            output_names=["output", "anomaly_map", "score"], opset_version=opset, dynamo=False,
            dynamic_axes={"image": {0: "batch"}, "region": {0: "batch"}, "output": {0: "batch"},
                          "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
        )
    return Path(path)


def max_export_error(net: torch.nn.Module, roi: list[int], path: str | os.PathLike, regions: Any = (1, 3)) -> float:
    """Largest absolute difference of the anomaly map and score between eager mode and an exported file."""
    image, _ = _example(roi, batch=len(regions), seed=1, channels=input_channels(net))
    region = torch.as_tensor(list(regions), dtype=torch.long)
    with torch.no_grad():
        ref = net.eval()(image, region)
    path = str(path)
    if path.endswith(".onnx"):
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = sess.run(None, {"image": image.numpy(), "region": region.numpy()})
        got_map, got_score = out[1], out[2]
    else:
        mod = torch.jit.load(path)
        with torch.no_grad():
            out = mod(image, region)
        got_map, got_score = out[1].numpy(), out[2].numpy()
    return float(max(np.abs(got_map - ref.anomaly_map.numpy()).max(), np.abs(got_score - ref.score.numpy()).max()))
