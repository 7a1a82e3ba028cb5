"""Dictionary versions of the body transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_simsid.transforms.body.array import BodyMask

__all__ = ["BodyMaskd", "BodyMaskD", "BodyMaskDict"]


class BodyMaskd(MapTransform):
    """Dictionary version of :class:`BodyMask`: writes the mask of ``keys`` under ``body_key``.

    The mask is a MetaTensor that shares the image's geometry, so later spatial transforms can treat it like a
    label.
    """

    def __init__(
        self,
        keys: KeysCollection,
        body_key: str = "body",
        threshold: float = -500.0,
        opening_mm: float = 3.0,
        spacing: Sequence[float] | None = None,
        axial_axis: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.body_key = body_key
        self.transform = BodyMask(threshold, opening_mm, spacing, axial_axis)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = self.transform(d[key])
            if isinstance(d[key], MetaTensor) and not isinstance(mask, MetaTensor):
                mask = MetaTensor(mask, meta=dict(d[key].meta))
            if isinstance(mask, MetaTensor):
                mask.applied_operations = list(d[key].applied_operations)
            d[self.body_key] = mask
        return d


BodyMaskD = BodyMaskDict = BodyMaskd
