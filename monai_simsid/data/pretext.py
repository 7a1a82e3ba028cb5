"""A cached, regenerable dataset of CutPaste pretext samples built from preprocessed normal scans."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils.misc import MAX_SEED
from torch.utils.data import Dataset

from monai_simsid.data.exclusion import EXCLUDE_KEY
from monai_simsid.transforms.anomaly.pretext import PRETEXT_LABEL_KEY, CutPastePretextd
from monai_simsid.transforms.body.dictionary import RandBodyWindowsd

__all__ = ["PretextDataset"]


class PretextDataset(Dataset):
    """``num_samples`` pre-generated CutPaste pretext samples (window, label), regenerated on demand.

    Windows are sampled inside the body of the preprocessed normal scans with
    :class:`~monai_simsid.transforms.body.RandBodyWindowsd` (scans used in turn, so each contributes
    ``num_samples / len(items)`` windows, rounded) and turned into pretext samples by ``pretext_transform``
    (default :class:`~monai_simsid.transforms.anomaly.pretext.CutPastePretextd`: 0 normal, 1 cut-paste, 2 scar).
    Everything is generated at construction and by :meth:`regenerate`, and is a deterministic function of the
    seed: the same seed gives identical samples, another seed new ones. With few normal scans, regenerating
    every few epochs (:class:`~monai_simsid.handlers.RegeneratePretextHandler`) keeps the classifier from
    memorising a fixed set of synthetic anomalies.

    Each sample is a dict with ``image_key`` ``(C, *roi_size)``, ``"region"`` (int64 scalar), ``"window_start"``,
    ``label_key`` (int64 scalar) and, when the pretext transform writes one, its change mask. The cache holds
    ``num_samples`` windows in memory (about ``num_samples * prod(roi_size) * 4`` bytes per image channel).

    Args:
        items: preprocessed normal scans: dicts with ``image_key`` ``(C, *S)`` and ``body_key`` ``(1, *S)``.
        roi_size: window size.
        num_samples: number of cached samples ``K``.
        seed: seed of the initial samples.
        region_grid: body-region grid of the region index (as in the SimSID pipeline).
        pretext_transform: dict transform applied to each window; it must write ``label_key``. Reseeded with
            ``set_random_state`` when it is ``Randomizable``. Default: ``CutPastePretextd(image_key, label_key)``.
        image_key, body_key, label_key: dictionary keys.
        pad_value: value used to pad images smaller than the window.

    Raises:
        ValueError: on empty ``items``, ``num_samples < 1`` or items missing the image / body.
    """

    def __init__(
        self,
        items: Sequence[Mapping[Hashable, Any]],
        roi_size: Sequence[int],
        num_samples: int = 256,
        seed: int = 0,
        region_grid: Sequence[int] | None = None,
        pretext_transform: Callable | None = None,
        image_key: str = "image",
        body_key: str = "body",
        label_key: str = PRETEXT_LABEL_KEY,
        pad_value: float = -1.0,
    ) -> None:
        items = list(items)
        if not items:
            raise ValueError("PretextDataset needs at least one normal scan.")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        for i, item in enumerate(items):
            if image_key not in item or body_key not in item:
                raise ValueError(f"item {i} needs '{image_key}' and '{body_key}' (run the preprocessing first).")
        self.items = items
        self.roi_size = tuple(int(r) for r in roi_size)
        self.num_samples = int(num_samples)
        self.region_grid = tuple(region_grid) if region_grid is not None else (3,) * len(self.roi_size)
        self.image_key = image_key
        self.body_key = body_key
        self.label_key = label_key
        self.pad_value = float(pad_value)
        self.pretext_transform = (
            CutPastePretextd(image_key, label_key=label_key) if pretext_transform is None else pretext_transform
        )
        self.seed = int(seed)
        self.samples: list[dict[str, Any]] = []
        self.regenerate(self.seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        return dict(self.samples[index])

    def counts_per_scan(self) -> list[int]:
        """How many samples each scan contributes (scans in turn)."""
        n = len(self.items)
        return [self.num_samples // n + (1 if j < self.num_samples % n else 0) for j in range(n)]

    def regenerate(self, seed: int | None = None) -> PretextDataset:
        """Rebuild all ``num_samples`` samples from ``seed`` (None: the current seed + 1); returns ``self``."""
        self.seed = self.seed + 1 if seed is None else int(seed)
        seeds = np.random.SeedSequence(self.seed).generate_state(2 * len(self.items))
        has_seed = hasattr(self.pretext_transform, "set_random_state")
        keep = (self.image_key, "region", "window_start")
        samples: list[dict[str, Any]] = []
        for j, (item, count) in enumerate(zip(self.items, self.counts_per_scan())):
            if count == 0:
                continue
            sampler = RandBodyWindowsd(
                keys=[self.image_key], roi_size=self.roi_size, num_samples=count, region_grid=self.region_grid,
                body_key=self.body_key, pad_value=self.pad_value,
            )
            sampler.set_random_state(int(seeds[2 * j]) % MAX_SEED)
            if has_seed:
                self.pretext_transform.set_random_state(int(seeds[2 * j + 1]) % MAX_SEED)  # type: ignore[union-attr]
            src = {self.image_key: item[self.image_key], self.body_key: item[self.body_key], EXCLUDE_KEY: item.get(EXCLUDE_KEY)}
            for window in sampler(src):
                window = {k: window[k] for k in keep}
                out = dict(self.pretext_transform(window))
                if self.label_key not in out:
                    raise ValueError(f"pretext_transform did not write '{self.label_key}'.")
                out.pop(self.body_key, None)
                out[self.image_key] = torch.as_tensor(out[self.image_key]).float()
                out[self.label_key] = torch.as_tensor(out[self.label_key]).long().reshape(())
                samples.append(out)
        self.samples = samples
        return self

    def labels(self) -> torch.Tensor:
        """``(num_samples,)`` pretext labels of the cached samples."""
        return torch.stack([s[self.label_key] for s in self.samples])
