"""Building the shared preprocessing chain and inverting model-space maps back to the input geometry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from monai_simsid.apps.config import shared_config_path

__all__ = ["build_preprocessing", "invert_to_input", "load_preprocessing_config"]


def load_preprocessing_config(**overrides: Any) -> ConfigParser:
    """The parsed ``configs/preprocessing.json`` with top-level keys overridden (e.g. ``target_spacing=[2, 2, 2]``)."""
    parser = ConfigParser()
    parser.read_config(str(shared_config_path("preprocessing")))
    for key, value in overrides.items():
        if key not in parser.get():
            raise ValueError(f"unknown preprocessing setting '{key}' (known: {sorted(parser.get())}).")
        parser[key] = value
    return parser


def build_preprocessing(**overrides: Any) -> Compose:
    """Instantiate the shared preprocessing chain.

    Args:
        overrides: top-level settings of ``configs/preprocessing.json`` (``target_spacing``, ``hu_window``,
            ``pad_divisor``, ``check_ct``, ...). ``None`` values are ignored, so bundle configs can pass optional
            settings through.

    Returns:
        a ``Compose`` that maps ``{"image": path[, "label": path]}`` to model-space tensors plus a ``body`` mask.
    """
    parser = load_preprocessing_config(**{k: v for k, v in overrides.items() if v is not None})
    return Compose(parser.get_parsed_content("transforms"))


def invert_to_input(
    pred: torch.Tensor,
    data: Mapping[str, Any],
    preprocessing: Compose,
    image_key: str = "image",
    nearest: bool = False,
) -> MetaTensor:
    """Map a model-space map back to the geometry of the input file.

    Args:
        pred: channel-first map on the preprocessed image's grid.
        data: the preprocessed dictionary (its image carries the applied operations).
        preprocessing: the chain that produced ``data``.
        image_key: the key of the preprocessed image.
        nearest: nearest-neighbour interpolation (for masks).

    Returns:
        a MetaTensor with the input's shape and affine (outside the cropped region it is 0).
    """
    img = data[image_key]
    if tuple(pred.shape[1:]) != tuple(img.shape[1:]):
        raise ValueError(f"map shape {tuple(pred.shape[1:])} differs from the image shape {tuple(img.shape[1:])}.")
    pred = MetaTensor(torch.as_tensor(pred).detach().cpu().float(), meta=dict(img.meta))
    inverter = Invertd(keys="pred", transform=preprocessing, orig_keys=image_key, nearest_interp=nearest, to_tensor=True)
    out = inverter({"pred": pred, image_key: img})["pred"]
    return out
