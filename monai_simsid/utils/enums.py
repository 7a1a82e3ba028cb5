"""Enumerations shared across monai-simsid."""

from __future__ import annotations

from enum import Enum

__all__ = ["AnomalyKeys", "StrEnum"]


class StrEnum(str, Enum):
    """A string enum whose members compare equal to their values."""

    def __str__(self) -> str:
        return self.value


class AnomalyKeys(StrEnum):
    """Dictionary keys used by data, transforms, engines and bundles.

    Attributes:
        IMAGE: the CT volume.
        LABEL: an optional lesion mask (absent for normal scans).
        BODY: the body mask computed during preprocessing.
        REGION: the body-normalised region index of a training window.
        MASK: the mask of voxels changed by a synthetic-anomaly transform.
        RECON: a model's reconstruction.
        MAP: a voxel anomaly map.
        SCORE: a scan or window anomaly score.
        NAME: the case name.
    """

    IMAGE = "image"
    LABEL = "label"
    BODY = "body"
    REGION = "region"
    MASK = "mask"
    RECON = "recon"
    MAP = "anomaly_map"
    SCORE = "score"
    NAME = "name"
