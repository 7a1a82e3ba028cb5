"""Dictionary version of :class:`~monai_simsid.transforms.acquisition.array.SimulateSliceThickness`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from .array import SimulateSliceThickness

__all__ = ["SimulateSliceThicknessd", "SimulateSliceThicknessD", "SimulateSliceThicknessDict"]


class SimulateSliceThicknessd(MapTransform):
    """Dictionary version of :class:`SimulateSliceThickness`: the images of ``keys`` re-acquired with thicker slices.

    Apply it to images, not to label masks (it interpolates).

    Args:
        keys: keys of channel-first images.
        thickness_mm, axis, pixdim, offset: see :class:`SimulateSliceThickness`.
        allow_missing_keys: do not raise on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        thickness_mm: float,
        axis: int = 2,
        pixdim: Sequence[float] | None = None,
        offset: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SimulateSliceThickness(thickness_mm, axis, pixdim, offset)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


SimulateSliceThicknessD = SimulateSliceThicknessDict = SimulateSliceThicknessd
