"""Several HU windows as image channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_tensor

__all__ = ["HUWindows", "check_hu_windows"]


def check_hu_windows(windows: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """Validate ``[[lo, hi], ...]`` (at least one window, ``lo < hi``) and return it as float pairs."""
    try:
        out = [(float(lo), float(hi)) for lo, hi in windows]
    except (TypeError, ValueError) as e:
        raise ValueError(f"hu_windows must be a list of [low, high] HU pairs, got {windows!r}.") from e
    if not out:
        raise ValueError("hu_windows must hold at least one [low, high] window.")
    bad = [w for w in out if not w[0] < w[1]]
    if bad:
        raise ValueError(f"each HU window needs low < high, got {bad}.")
    return out


class HUWindows(Transform):
    """Map a one-channel HU image to one channel per HU window, each scaled to ``[-1, 1]`` and clipped.

    One wide window (e.g. -1000..500 HU) squeezes lung parenchyma into a few grey levels; a lung window
    (-1000..-400) next to a soft-tissue window (-160..240) keeps both contrasts. With a single window the result
    equals MONAI's ``ScaleIntensityRange(lo, hi, -1, 1, clip=True)``. Metadata (MetaTensor, applied operations) is
    kept, so the spatial inversion of the preprocessing is unaffected.

    Args:
        windows: ``[[low, high], ...]`` in HU.
    """

    def __init__(self, windows: Sequence[Sequence[float]]) -> None:
        self.windows = check_hu_windows(windows)

    @property
    def num_channels(self) -> int:
        return len(self.windows)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """``img`` ``(1, *S)`` in HU -> ``(len(windows), *S)`` float32."""
        x = convert_to_tensor(img, track_meta=True)
        if x.shape[0] != 1:
            raise ValueError(f"HUWindows expects a one-channel HU image, got {x.shape[0]} channels.")
        x = x.float()
        chans = [((x - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0) for lo, hi in self.windows]
        return chans[0] if len(chans) == 1 else torch.cat(chans, dim=0)
