"""Model checkpoints that carry their bundle identity, model config and calibration."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_simsid.utils.atomic import atomic_torch_save
from monai_simsid.utils.errors import InputError

__all__ = ["latest_checkpoint", "load_model_checkpoint", "load_weights", "save_model_checkpoint"]


def save_model_checkpoint(
    path: str | os.PathLike,
    network: torch.nn.Module,
    bundle_name: str,
    bundle_version: str,
    model_config: Mapping[str, Any],
    calibration: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{"network", "calibration", "meta"}`` atomically (temp file in the same folder, then rename)."""
    net = network.module if hasattr(network, "module") else network
    obj = {
        "network": net.state_dict(),
        "calibration": dict(calibration) if calibration is not None else None,
        "meta": {"bundle": bundle_name, "version": bundle_version, "model_config": _plain(model_config), **dict(extra or {})},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(obj, path)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_model_checkpoint(
    path: str | os.PathLike,
    network: torch.nn.Module | None = None,
    bundle_name: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a model checkpoint, check it belongs to this bundle and config, and load the weights into ``network``.

    Raises:
        InputError: missing or unreadable file, another bundle's checkpoint, or an incompatible model config.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "checkpoint file does not exist")
    try:
        ckpt = torch.load(str(p), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(p, f"cannot be read as a checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "network" not in ckpt or "meta" not in ckpt:
        raise InputError(p, "not a monai-simsid model checkpoint (no 'network'/'meta' entries)")
    meta = ckpt["meta"]
    if bundle_name is not None and meta.get("bundle") != bundle_name:
        raise InputError(p, f"checkpoint was trained by bundle '{meta.get('bundle')}', not '{bundle_name}'")
    if model_config is not None:
        saved = meta.get("model_config", {})
        diff = {k for k in set(saved) | set(model_config) if _plain(saved.get(k)) != _plain(model_config.get(k))}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {_plain(model_config.get(k))!r}" for k in sorted(diff))
            raise InputError(p, f"checkpoint model config is incompatible ({detail})")
    if network is not None:
        load_weights(network, ckpt, p)
    return ckpt


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "checkpoint_*.pt") -> str | None:
    """The resume checkpoint with the highest iteration/epoch number in ``folder`` (None if there is none)."""
    files = glob.glob(os.path.join(str(folder), pattern))
    if not files:
        return None

    def step(f: str) -> int:
        nums = re.findall(r"=(\d+)", os.path.basename(f))
        return int(nums[-1]) if nums else -1

    return max(files, key=lambda f: (step(f), os.path.getmtime(f)))


def load_weights(network: torch.nn.Module, checkpoint: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> torch.nn.Module:
    """Load a checkpoint's weights into ``network`` (clear error when they do not fit) and return it."""
    net = network.module if hasattr(network, "module") else network
    try:
        net.load_state_dict(checkpoint["network"])
    except RuntimeError as e:
        raise InputError(path, f"weights do not fit the network ({str(e).splitlines()[0][:200]})") from None
    return network
