"""Synthetic-anomaly transforms (dictionary versions).

Each transform applies the same anomaly (parameters sampled once, from the first present key) to every key in
``keys`` (which must share the spatial shape) and writes the change mask, the union over keys, under ``mask_key``.
When ``mask_key`` already holds a mask of the same spatial shape the new mask is OR-ed into it (keeping its type
and dtype). Random versions that are skipped (``prob``) write an all-zero mask when ``mask_key`` is absent, so
batches always collate. ``restrict_key`` (e.g. ``"body"``) names an optional mask that must contain the anomaly
centre.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_numpy

from monai_simsid.transforms.anomaly.array import (
    CutPaste,
    EllipsoidLesion,
    ForeignPatchBlend,
    RandCutPaste,
    RandEllipsoidLesion,
    RandForeignPatchBlend,
    RandScar,
    RandSyntheticAnomaly,
    Scar,
    _empty_mask,
    _RandAnomalyBase,
    _check_prob,
    pretext_class_index,
)
from monai_simsid.utils.enums import AnomalyKeys

__all__ = [
    "CutPasted",
    "Scard",
    "ForeignPatchBlendd",
    "EllipsoidLesiond",
    "RandCutPasted",
    "RandScard",
    "RandForeignPatchBlendd",
    "RandEllipsoidLesiond",
    "RandSyntheticAnomalyd",
    "CutPasteD",
    "CutPasteDict",
    "ScarD",
    "ScarDict",
    "ForeignPatchBlendD",
    "ForeignPatchBlendDict",
    "EllipsoidLesionD",
    "EllipsoidLesionDict",
    "RandCutPasteD",
    "RandCutPasteDict",
    "RandScarD",
    "RandScarDict",
    "RandForeignPatchBlendD",
    "RandForeignPatchBlendDict",
    "RandEllipsoidLesionD",
    "RandEllipsoidLesionDict",
    "RandSyntheticAnomalyD",
    "RandSyntheticAnomalyDict",
]


def _merge_mask(d: dict, mask_key: Hashable, new: NdarrayOrTensor | None, like: NdarrayOrTensor) -> None:
    """Write ``new`` (or zeros shaped like ``like``) under ``mask_key``, OR-ed with an existing mask."""
    if new is None:
        new = _empty_mask(like)
    if mask_key not in d or d[mask_key] is None:
        d[mask_key] = new
        return
    old = d[mask_key]
    old_np = np.asarray(convert_to_numpy(old))
    new_np = np.asarray(convert_to_numpy(new))
    if old_np.shape[-new_np.ndim + 1:] != new_np.shape[1:]:
        raise ValueError(f"existing '{mask_key}' of shape {old_np.shape} does not match the image {new_np.shape}.")
    union = np.logical_or(old_np != 0, new_np != 0 if old_np.ndim == new_np.ndim else new_np[0] != 0)
    d[mask_key] = convert_to_dst_type(union.astype(old_np.dtype), old)[0]


def _union(a: NdarrayOrTensor, b: NdarrayOrTensor) -> NdarrayOrTensor:
    b = convert_to_dst_type(b, a)[0]
    return np.maximum(a, b) if isinstance(a, np.ndarray) else a.maximum(b)  # type: ignore[union-attr]


class _AnomalyMapd(MapTransform):
    """Apply a deterministic anomaly transform to every key and write the change mask."""

    def __init__(self, keys: KeysCollection, transform, mask_key: Hashable, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.mask_key = mask_key

    def _extra(self, d: dict) -> dict[str, Any]:
        return {}

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        union, first = None, None
        for key in self.key_iterator(d):
            d[key], m = self.transform(d[key], **self._extra(d))
            union = m if union is None else _union(union, m)
            first = d[key] if first is None else first
        if first is not None:
            _merge_mask(d, self.mask_key, union, first)
        return d


class CutPasted(_AnomalyMapd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.CutPaste` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        src_box: Sequence[Sequence[int]],
        dst_box: Sequence[Sequence[int]],
        flip_axes: Sequence[int] = (),
        rot90_k: int = 0,
        rot_axes: Sequence[int] = (0, 1),
        intensity_scale: float = 1.0,
        intensity_shift: float = 0.0,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        allow_missing_keys: bool = False,
    ) -> None:
        t = CutPaste(src_box, dst_box, flip_axes, rot90_k, rot_axes, intensity_scale, intensity_shift)
        super().__init__(keys, t, mask_key, allow_missing_keys)


class Scard(_AnomalyMapd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.Scar` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        kind: str = "tube",
        intensity: float = 1.0,
        thickness: float = 1.0,
        points: Sequence[Sequence[float]] | None = None,
        center: Sequence[float] | None = None,
        normal: Sequence[float] | None = None,
        extent: float | None = None,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        allow_missing_keys: bool = False,
    ) -> None:
        t = Scar(kind, intensity, thickness, points, center, normal, extent)
        super().__init__(keys, t, mask_key, allow_missing_keys)


class ForeignPatchBlendd(_AnomalyMapd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.ForeignPatchBlend`.

    Args:
        keys: keys of the images to modify.
        foreign_key: key of the image the patch is taken from.
        src_box, dst_box, alpha: see the array version.
        mask_key: where the change mask is written.
        allow_missing_keys: don't raise for missing ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        foreign_key: Hashable,
        src_box: Sequence[Sequence[int]],
        dst_box: Sequence[Sequence[int]],
        alpha: float = 1.0,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, ForeignPatchBlend(src_box, dst_box, alpha), mask_key, allow_missing_keys)
        self.foreign_key = foreign_key

    def _extra(self, d: dict) -> dict[str, Any]:
        if self.foreign_key not in d:
            raise ValueError(f"foreign_key '{self.foreign_key}' is not in the data.")
        return {"foreign": d[self.foreign_key]}


class EllipsoidLesiond(_AnomalyMapd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.EllipsoidLesion` (same arguments)."""

    def __init__(
        self,
        keys: KeysCollection,
        center: Sequence[float],
        radii: Sequence[float],
        intensity: float,
        roughness: float = 0.25,
        edge_seed: int = 0,
        edge_width: float = 1.0,
        intensity_mode: str = "absolute",
        mask_key: Hashable = AnomalyKeys.MASK.value,
        allow_missing_keys: bool = False,
    ) -> None:
        t = EllipsoidLesion(center, radii, intensity, roughness, edge_seed, edge_width, intensity_mode)
        super().__init__(keys, t, mask_key, allow_missing_keys)


class _RandAnomalyd(RandomizableTransform, MapTransform):
    """Sample an anomaly once (inner random transform), apply it to every key and write the change mask."""

    def __init__(
        self,
        keys: KeysCollection,
        transform: _RandAnomalyBase | RandSyntheticAnomaly,
        prob: float,
        mask_key: Hashable,
        restrict_key: Hashable | None,
        allow_missing_keys: bool,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=_check_prob(prob, "prob"))
        self.transform = transform
        self.transform.prob = 1.0
        self.mask_key = mask_key
        self.restrict_key = restrict_key

    @property
    def last_params(self) -> dict[str, Any] | None:
        """Parameters of the last applied anomaly (``None`` when skipped)."""
        return self.transform.last_params if self._do_transform else None

    def get_params(self) -> dict[str, Any] | None:
        return None if self.last_params is None else dict(self.last_params)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def _restrict(self, d: dict) -> NdarrayOrTensor | None:
        if self.restrict_key is None:
            return None
        if self.restrict_key not in d:
            if self.allow_missing_keys:
                return None
            raise KeyError(f"restrict_key '{self.restrict_key}' is not in the data.")
        return d[self.restrict_key]

    def _randomize_inner(self, img: NdarrayOrTensor, d: dict) -> None:
        self.transform.randomize(img, self._restrict(d))  # type: ignore[call-arg]

    def _apply_inner(self, img: NdarrayOrTensor, d: dict):
        return self.transform(img, randomize=False)  # type: ignore[call-arg]

    def _post(self, d: dict) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first_key = self.first_key(d)
        self.randomize(None)
        if first_key == ():
            return d
        if self._do_transform:
            self._randomize_inner(d[first_key], d)  # type: ignore[index]
        union = None
        for key in self.key_iterator(d):
            if not self._do_transform:
                continue
            d[key], m = self._apply_inner(d[key], d)
            union = m if union is None else _union(union, m)
        _merge_mask(d, self.mask_key, union, d[first_key])  # type: ignore[index]
        self._post(d)
        return d


class RandCutPasted(_RandAnomalyd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.RandCutPaste`.

    Args:
        keys: keys of the images to modify (same anomaly for all).
        mask_key: where the change mask is written (OR-ed with an existing mask).
        restrict_key: optional key of a mask (e.g. the body mask) containing the paste centre.
        prob: probability of applying the transform.
        box_size_range, max_aspect, flip_prob, rot_prob, intensity_scale_range, intensity_shift_range:
            see the array version.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        restrict_key: Hashable | None = None,
        prob: float = 1.0,
        box_size_range: Sequence[float] = (0.05, 0.25),
        max_aspect: float = 3.0,
        flip_prob: float = 0.5,
        rot_prob: float = 0.5,
        intensity_scale_range: Sequence[float] = (0.9, 1.1),
        intensity_shift_range: Sequence[float] = (0.02, 0.1),
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandCutPaste(1.0, box_size_range, max_aspect, flip_prob, rot_prob, intensity_scale_range,
                         intensity_shift_range)
        super().__init__(keys, t, prob, mask_key, restrict_key, allow_missing_keys)


class RandScard(_RandAnomalyd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.RandScar` (see :class:`RandCutPasted`
    for ``keys``, ``mask_key``, ``restrict_key``, ``prob`` and ``allow_missing_keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        restrict_key: Hashable | None = None,
        prob: float = 1.0,
        sheet_prob: float = 0.3,
        num_points_range: Sequence[int] = (2, 5),
        length_range: Sequence[float] = (0.2, 0.6),
        curvature: float = 0.5,
        thickness_range: Sequence[float] = (1.0, 3.0),
        extent_range: Sequence[float] = (0.1, 0.3),
        intensity_range: Sequence[float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandScar(1.0, sheet_prob, num_points_range, length_range, curvature, thickness_range, extent_range,
                     intensity_range)
        super().__init__(keys, t, prob, mask_key, restrict_key, allow_missing_keys)


class RandEllipsoidLesiond(_RandAnomalyd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.RandEllipsoidLesion` (see
    :class:`RandCutPasted` for ``keys``, ``mask_key``, ``restrict_key``, ``prob`` and ``allow_missing_keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        restrict_key: Hashable | None = None,
        prob: float = 1.0,
        radius_range: Sequence[float] = (0.05, 0.15),
        max_aspect: float = 2.0,
        roughness_range: Sequence[float] = (0.0, 0.3),
        edge_width_range: Sequence[float] = (0.5, 2.0),
        intensity_mode: str = "relative",
        intensity_range: Sequence[float] = (0.1, 0.5),
        polarity: str = "both",
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandEllipsoidLesion(1.0, radius_range, max_aspect, roughness_range, edge_width_range, intensity_mode,
                                intensity_range, polarity)
        super().__init__(keys, t, prob, mask_key, restrict_key, allow_missing_keys)


class _ForeignSourceMixin:
    """Resolve the foreign image from ``foreign_key`` or a random entry of ``foreign_sources``."""

    foreign_key: Hashable | None
    foreign_sources: list[NdarrayOrTensor] | None
    _foreign: NdarrayOrTensor | None

    def _init_foreign(self, foreign_key, foreign_sources) -> None:
        if foreign_sources is not None:
            foreign_sources = list(foreign_sources)
            if len(foreign_sources) == 0:
                raise ValueError("foreign_sources must not be empty.")
        self.foreign_key = foreign_key
        self.foreign_sources = foreign_sources
        self._foreign = None

    def _pick_foreign(self, d: dict, required: bool) -> NdarrayOrTensor | None:
        self._foreign = None
        if self.foreign_key is not None and self.foreign_key in d:
            self._foreign = d[self.foreign_key]
        elif self.foreign_sources is not None:
            self._foreign = self.foreign_sources[int(self.R.randint(len(self.foreign_sources)))]  # type: ignore
        elif required:
            raise ValueError(f"no foreign image: foreign_key '{self.foreign_key}' missing and no foreign_sources.")
        return self._foreign


class RandForeignPatchBlendd(_ForeignSourceMixin, _RandAnomalyd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.RandForeignPatchBlend`.

    The foreign image is ``data[foreign_key]`` when present, else a random entry of ``foreign_sources`` (a list of
    channel-first images); one of the two is required. See :class:`RandCutPasted` for the other arguments.
    """

    def __init__(
        self,
        keys: KeysCollection,
        foreign_key: Hashable | None = None,
        foreign_sources: Sequence[NdarrayOrTensor] | None = None,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        restrict_key: Hashable | None = None,
        prob: float = 1.0,
        box_size_range: Sequence[float] = (0.05, 0.25),
        max_aspect: float = 3.0,
        alpha_range: Sequence[float] = (0.3, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        if foreign_key is None and foreign_sources is None:
            raise ValueError("give foreign_key or foreign_sources.")
        t = RandForeignPatchBlend(1.0, box_size_range, max_aspect, alpha_range)
        _RandAnomalyd.__init__(self, keys, t, prob, mask_key, restrict_key, allow_missing_keys)
        self._init_foreign(foreign_key, foreign_sources)

    def _randomize_inner(self, img, d):
        self.transform.randomize(img, self._pick_foreign(d, True), self._restrict(d))  # type: ignore[call-arg]

    def _apply_inner(self, img, d):
        return self.transform(img, foreign=self._foreign, randomize=False)  # type: ignore[call-arg]


class RandSyntheticAnomalyd(_ForeignSourceMixin, _RandAnomalyd):
    """Dictionary version of :class:`~monai_simsid.transforms.anomaly.array.RandSyntheticAnomaly`.

    Args:
        keys: keys of the images to modify (same anomaly for all).
        weights, transforms: see the array version.
        mask_key: where the change mask is written.
        label_key: if given, the pretext class index (0 normal, 1 cut-paste, 2 scar, 3 foreign, 4 ellipsoid) is
            written there as an ``int``.
        restrict_key: optional key of a mask containing the anomaly centre.
        foreign_key, foreign_sources: source of the foreign image for the ``"foreign"`` kind.
        prob: probability of applying any anomaly (otherwise class 0).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        weights: Mapping[str, float] | None = None,
        transforms: Mapping[str, _RandAnomalyBase] | None = None,
        mask_key: Hashable = AnomalyKeys.MASK.value,
        label_key: Hashable | None = None,
        restrict_key: Hashable | None = None,
        foreign_key: Hashable | None = None,
        foreign_sources: Sequence[NdarrayOrTensor] | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandSyntheticAnomaly(weights, transforms, prob=1.0)
        _RandAnomalyd.__init__(self, keys, t, prob, mask_key, restrict_key, allow_missing_keys)
        self._init_foreign(foreign_key, foreign_sources)
        self.label_key = label_key

    @property
    def last_kind(self) -> str:
        return self.transform.last_kind if self._do_transform else "normal"  # type: ignore[union-attr]

    @property
    def last_class(self) -> int:
        return pretext_class_index(self.last_kind)

    def _randomize_inner(self, img, d):
        foreign = self._pick_foreign(d, False)
        self.transform.randomize(img, self._restrict(d), foreign)  # type: ignore[call-arg]

    def _apply_inner(self, img, d):
        return self.transform(img, foreign=self._foreign, randomize=False)  # type: ignore[call-arg]

    def _post(self, d: dict) -> None:
        if self.label_key is not None:
            d[self.label_key] = self.last_class


CutPasteD = CutPasteDict = CutPasted
ScarD = ScarDict = Scard
ForeignPatchBlendD = ForeignPatchBlendDict = ForeignPatchBlendd
EllipsoidLesionD = EllipsoidLesionDict = EllipsoidLesiond
RandCutPasteD = RandCutPasteDict = RandCutPasted
RandScarD = RandScarDict = RandScard
RandForeignPatchBlendD = RandForeignPatchBlendDict = RandForeignPatchBlendd
RandEllipsoidLesionD = RandEllipsoidLesionDict = RandEllipsoidLesiond
RandSyntheticAnomalyD = RandSyntheticAnomalyDict = RandSyntheticAnomalyd
