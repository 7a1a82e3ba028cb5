"""CutPaste pretext-task transform: turn a normal training window into a labelled pretext sample."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable

from monai_simsid.transforms.anomaly.array import _RandAnomalyBase
from monai_simsid.transforms.anomaly.dictionary import RandSyntheticAnomalyd
from monai_simsid.utils.enums import AnomalyKeys

__all__ = ["CutPastePretextd", "CutPastePretextD", "CutPastePretextDict", "PRETEXT_LABEL_KEY"]

#: default key of the pretext class label written by :class:`CutPastePretextd`.
PRETEXT_LABEL_KEY = "pretext_label"

_DEFAULT_WEIGHTS = {"normal": 1.0, "cutpaste": 1.0, "scar": 1.0}


class CutPastePretextd(Randomizable, MapTransform):
    """Make a CutPaste pretext sample from a normal window: leave it normal, cut-paste a patch, or paint a scar.

    A thin wrapper around :class:`~monai_simsid.transforms.anomaly.RandSyntheticAnomalyd` with the 3-class
    defaults of the CutPaste pretext task. The class index (0 normal, 1 cut-paste, 2 scar, see
    :data:`~monai_simsid.transforms.anomaly.PRETEXT_CLASSES`) is written under ``label_key`` as an int64
    scalar tensor, so batches collate to ``(B,)`` labels for :class:`~monai_simsid.losses.CutPasteLoss`.
    Apply it after window sampling (e.g. after :class:`~monai_simsid.transforms.body.RandBodyWindowsd`; MONAI's
    ``Compose`` maps it over the list of windows).

    Args:
        keys: image key(s) to modify (the same anomaly is applied to every key).
        label_key: where the pretext class index is written.
        weights: kind -> sampling weight (kinds from ``PRETEXT_CLASSES``); the network's ``num_classes`` must
            exceed the largest class index used (3 for the default normal / cut-paste / scar).
        transforms: optional configured random transforms per kind (e.g. ``{"scar": RandScar(sheet_prob=0)}``).
        mask_key: where the change mask is written (None: not kept in the output).
        restrict_key: optional key of a mask (e.g. ``"body"``) that must contain the anomaly centre.
        allow_missing_keys: don't raise for missing keys.

    Example::

        t = CutPastePretextd("image")
        t.set_random_state(0)
        out = t({"image": torch.rand(1, 32, 32, 32)})  # out["pretext_label"] in {0, 1, 2}

    Raises:
        ValueError: on an empty ``label_key`` or invalid weights / transforms.
    """

    def __init__(
        self,
        keys: KeysCollection = AnomalyKeys.IMAGE.value,
        label_key: Hashable = PRETEXT_LABEL_KEY,
        weights: Mapping[str, float] | None = None,
        transforms: Mapping[str, _RandAnomalyBase] | None = None,
        mask_key: Hashable | None = AnomalyKeys.MASK.value,
        restrict_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if label_key is None or label_key == "":
            raise ValueError("label_key must be a non-empty key.")
        self.label_key = label_key
        self.mask_key = mask_key
        self._tmp_mask_key = "__pretext_mask__"
        self.anomaly = RandSyntheticAnomalyd(
            keys,
            weights=dict(_DEFAULT_WEIGHTS if weights is None else weights),
            transforms=transforms,
            mask_key=self._tmp_mask_key if mask_key is None else mask_key,
            label_key=label_key,
            restrict_key=restrict_key,
            prob=1.0,
            allow_missing_keys=allow_missing_keys,
        )

    @property
    def last_class(self) -> int:
        """Class index of the last sample."""
        return self.anomaly.last_class

    @property
    def last_params(self) -> dict[str, Any] | None:
        """Parameters of the last applied anomaly (``None`` for a normal sample)."""
        return self.anomaly.last_params

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.anomaly.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Randomness is drawn by the inner :class:`RandSyntheticAnomalyd` at call time."""

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, Any]:
        d = self.anomaly(data)
        if self.mask_key is None:
            d.pop(self._tmp_mask_key, None)
        if self.label_key in d:
            d[self.label_key] = torch.as_tensor(int(d[self.label_key]), dtype=torch.long)
        return d


CutPastePretextD = CutPastePretextDict = CutPastePretextd
