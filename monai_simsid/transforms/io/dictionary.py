"""Dictionary versions of the loading transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_simsid.transforms.io.array import LoadCT, check_mask_matches

__all__ = ["LoadCTd", "LoadCTD", "LoadCTDict"]


class LoadCTd(MapTransform):
    """Dictionary version of :class:`LoadCT`.

    The first key is the CT image; the others (e.g. a lesion ``label``, an ``exclude`` region) are loaded as masks and must match the
    image's shape and affine.

    Args:
        keys: keys to load; the first one is the image.
        label_keys: keys loaded as masks (no CT checks); defaults to every key but the first.
        check_ct: check that the image intensities look like Hounsfield units.
        allow_missing_keys: skip keys that are absent (normal scans have no label).
        require_bone: the HU check also asks for a value above 100 HU (False for a small VOI inside the lung).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection | None = None,
        check_ct: bool = True,
        allow_missing_keys: bool = True,
        require_bone: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = set(self.keys[1:] if label_keys is None else ([label_keys] if isinstance(label_keys, str) else label_keys))
        self.image_loader = LoadCT(check_ct=check_ct, require_bone=require_bone)
        self.label_loader = LoadCT(is_label=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = None
        for key in self.key_iterator(d):
            if d[key] is None:
                d.pop(key)
                continue
            path = d[key]
            if key in self.label_keys:
                img = self.label_loader(path)
                if ref is not None:
                    check_mask_matches(img, ref, path, str(key))
            else:
                img = self.image_loader(path)
                ref = img
            d[key] = img
        return d


LoadCTD = LoadCTDict = LoadCTd
