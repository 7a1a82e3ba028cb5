"""A simsid_ct network with random weights and the bundle's settings, for speed benchmarks (no checkpoint needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai_simsid.apps.config import preset_config_files

__all__ = ["PLACEHOLDER_CALIBRATION", "untrained_simsid"]

#: a calibration that makes a predictor run; its thresholds mean nothing (speed does not depend on them)
PLACEHOLDER_CALIBRATION = {
    "scan_threshold": 1.0, "scan_std": 1.0, "voxel_threshold": 0.5, "voxel_scale": 0.1, "fpr": 0.05,
    "voxel_fpr": 0.001, "source": "none (random weights)", "topk_fraction": 0.001,
}


def untrained_simsid(preset: str = "cpu", overrides: Mapping[str, Any] | None = None):
    """The bundle's SimSID with random weights, as a trained checkpoint would give it.

    Args:
        preset: ``"cpu"`` (``train.json``) or ``"gpu"`` (``train.json`` + ``gpu.json``).
        overrides: model-config keys to replace.

    Returns:
        ``(network, calibration, model_config, preprocessing_settings)``: the settings are what the training config
        stores in a checkpoint's ``meta`` (the HU windows in particular, so that the input has the network's channels).
    """
    from monai.bundle import ConfigParser

    from monai_simsid.networks.nets import SimSID

    parser = ConfigParser()
    parser.read_config(preset_config_files("simsid_ct", preset))
    cfg = {**parser.get_parsed_content("model_config"), **(overrides or {})}
    pre = dict(parser.get_parsed_content("calibration#extra_meta#preprocessing"))  # what training saves in meta
    return SimSID(**cfg), dict(PLACEHOLDER_CALIBRATION), cfg, pre
