"""Dictionary version of :class:`~monai_simsid.transforms.intensity.array.HUWindows`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from .array import HUWindows

__all__ = ["HUWindowsd", "HUWindowsD", "HUWindowsDict"]


class HUWindowsd(MapTransform):
    """Dictionary version of :class:`HUWindows`: ``keys`` become one channel per HU window.

    Args:
        keys: keys of the HU images.
        windows: ``[[low, high], ...]`` in HU.
        allow_missing_keys: do not raise on missing keys.
    """

    def __init__(self, keys: KeysCollection, windows: Sequence[Sequence[float]], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = HUWindows(windows)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


HUWindowsD = HUWindowsDict = HUWindowsd
