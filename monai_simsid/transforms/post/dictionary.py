"""Dictionary version of the anomaly-map post-processing."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_simsid.transforms.post.array import AnomalyPostprocess, extract_findings

__all__ = ["AnomalyPostprocessd", "AnomalyPostprocessD", "AnomalyPostprocessDict"]


class AnomalyPostprocessd(MapTransform):
    """Dictionary version of :class:`AnomalyPostprocess`.

    For each key, writes the uint8 label map under ``"{key}_{labels_postfix}"`` and, if ``findings_postfix`` is set,
    the list of findings (:func:`extract_findings` on the unsmoothed map) under ``"{key}_{findings_postfix}"``.

    Args:
        keys: keys of channel-first anomaly maps.
        body_key: optional key of a body mask restricting the anomalies.
        labels_postfix: postfix of the output label-map key.
        findings_postfix: postfix of the findings key, or ``None`` to skip the findings.
        smoothed_postfix: if set, the smoothed map is stored under ``"{key}_{smoothed_postfix}"``.
        sigma_mm, threshold, min_volume_mm3, spacing, connectivity: see :class:`AnomalyPostprocess`.
        affine_key: optional key of a 4x4 affine, used when the maps are not MetaTensors.
    """

    def __init__(
        self,
        keys: KeysCollection,
        body_key: str | None = None,
        labels_postfix: str = "labels",
        findings_postfix: str | None = "findings",
        smoothed_postfix: str | None = None,
        sigma_mm: float | Sequence[float] = 1.0,
        threshold: float = 0.5,
        min_volume_mm3: float = 100.0,
        spacing: Sequence[float] | None = None,
        connectivity: int | None = None,
        affine_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not labels_postfix:
            raise ValueError("labels_postfix must be a non-empty string")
        self.body_key = body_key
        self.labels_postfix = labels_postfix
        self.findings_postfix = findings_postfix
        self.smoothed_postfix = smoothed_postfix
        self.affine_key = affine_key
        self.transform = AnomalyPostprocess(sigma_mm, threshold, min_volume_mm3, spacing, connectivity)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        body = None
        if self.body_key is not None:
            if self.body_key not in d:
                raise ValueError(f"body mask key {self.body_key!r} is missing from the data")
            body = d[self.body_key]
        affine = d[self.affine_key] if self.affine_key is not None else None
        for key in self.key_iterator(d):
            img = d[key]
            labels = self.transform(img, body_mask=body, affine=affine)
            d[f"{key}_{self.labels_postfix}"] = labels
            smoothed = self.transform.last_smoothed
            if self.smoothed_postfix:
                sm = smoothed[None]
                d[f"{key}_{self.smoothed_postfix}"] = MetaTensor(sm, meta=dict(img.meta)) if isinstance(img, MetaTensor) else sm
            if self.findings_postfix:
                aff = affine if affine is not None else getattr(img, "affine", None)
                if aff is None:
                    aff = np.diag(list(self.transform.spacing) + [1.0]) if self.transform.spacing is not None else None
                d[f"{key}_{self.findings_postfix}"] = extract_findings(img, labels, aff)
        return d


AnomalyPostprocessD = AnomalyPostprocessDict = AnomalyPostprocessd
