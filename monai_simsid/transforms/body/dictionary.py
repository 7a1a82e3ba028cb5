"""Dictionary versions of the body transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from monai_simsid.data.exclusion import EXCLUDE_KEY, EXCLUDE_MARGIN_MM, item_exclusion
from monai_simsid.transforms.body.array import BodyMask, body_bbox, region_index, sample_window_starts
from monai_simsid.utils.errors import InputError

__all__ = ["BodyMaskd", "BodyMaskD", "BodyMaskDict", "RandBodyWindowsd", "RandBodyWindowsD", "RandBodyWindowsDict"]


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
        mode: str = "threshold",
        outside: float | None = -950.0,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.body_key = body_key
        self.transform = BodyMask(threshold, opening_mm, spacing, axial_axis, mode, outside)

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


class RandBodyWindowsd(Randomizable, MapTransform):
    """Sample training windows centred inside the body, each tagged with its body-region index.

    Returns a list of ``num_samples`` dictionaries (MONAI's multi-sample convention), each with the cropped
    ``keys``, ``region`` (an int64 tensor: the cell of ``region_grid`` the window centre lies in, in the frame
    of the body bounding box) and ``window_start``. Arrays smaller than the window are padded first (images with
    ``pad_value``, masks with 0).

    Args:
        keys: keys to crop (the image first, then masks).
        roi_size: window size.
        num_samples: windows per scan.
        region_grid: body-region grid ((1, 1, 1) gives region 0 everywhere).
        body_key: key of the body mask.
        pad_value: value used to pad the image (the first key).
        exclude_key: key of an optional mask of voxels no window may hold (a region of a normal scan to leave out,
            see :mod:`monai_simsid.data.exclusion`), grown by ``exclude_margin_mm``; it is not passed on.
        exclude_margin_mm: how far (mm) the exclusion mask is grown.

    Raises:
        InputError: naming the scan, when its exclusion mask leaves no window.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        num_samples: int = 4,
        region_grid: Sequence[int] = (3, 3, 3),
        body_key: str = "body",
        pad_value: float = -1.0,
        allow_missing_keys: bool = False,
        exclude_key: str | None = EXCLUDE_KEY,
        exclude_margin_mm: float = EXCLUDE_MARGIN_MM,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.exclude_key = exclude_key
        self.exclude_margin_mm = float(exclude_margin_mm)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if len(roi_size) != len(region_grid):
            raise ValueError("roi_size and region_grid must have the same length.")
        self.roi_size = tuple(int(r) for r in roi_size)
        self.num_samples = num_samples
        self.region_grid = tuple(int(r) for r in region_grid)
        self.body_key = body_key
        self.pad_value = pad_value
        self._starts: np.ndarray | None = None

    def randomize(self, body: np.ndarray, exclude: np.ndarray | None = None) -> None:
        self._starts = sample_window_starts(body, self.roi_size, self.num_samples, self.R, exclude)

    def _pad(self, x: torch.Tensor, value: float) -> torch.Tensor:
        pads = []
        for r, s in zip(reversed(self.roi_size), reversed(x.shape[1:])):
            diff = max(r - s, 0)
            pads += [diff // 2, diff - diff // 2]
        return torch.nn.functional.pad(x, pads, value=value) if any(pads) else x

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        first = self.first_key(d)
        exclude = None
        mask = d.pop(self.exclude_key, None) if self.exclude_key is not None else None
        if mask is not None:  # grown in the scan's grid, then padded like the body
            grown = item_exclusion({"image": d[first], EXCLUDE_KEY: mask}, None, self.exclude_margin_mm)
            exclude = self._pad(torch.from_numpy(grown[None].astype(np.float32)), 0.0)[0].numpy() > 0.5
        body = self._pad(torch.as_tensor(d[self.body_key]).float(), 0.0)
        arrays = {k: self._pad(torch.as_tensor(d[k]).float(), self.pad_value if k == first else 0.0) for k in self.key_iterator(d)}
        arrays[self.body_key] = body
        body_np = body[0].numpy() > 0.5
        bbox = body_bbox(body_np)
        try:
            self.randomize(body_np, exclude)
        except ValueError as err:
            meta = getattr(d[first], "meta", None) or {}
            raise InputError(meta.get("filename_or_obj", "<scan>"), str(err)) from None
        out = []
        for start in self._starts:  # type: ignore[union-attr]
            sl = (slice(None),) + tuple(slice(int(s), int(s) + r) for s, r in zip(start, self.roi_size))
            item = {k: v for k, v in d.items() if k not in arrays}
            for k, v in arrays.items():
                item[k] = v[sl].as_tensor() if hasattr(v, "as_tensor") else v[sl]
            item["region"] = torch.tensor(region_index(start, self.roi_size, bbox[0], bbox[1], self.region_grid))
            item["window_start"] = torch.as_tensor(start)
            out.append(item)
        return out


RandBodyWindowsD = RandBodyWindowsDict = RandBodyWindowsd
