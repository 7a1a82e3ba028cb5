"""Several HU windows as image channels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_tensor

__all__ = ["HUWindows", "check_hu_windows", "hu_from_windows"]


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


def hu_from_windows(image: NdarrayOrTensor, windows: Sequence[Sequence[float]]) -> np.ndarray:
    """HU read back from the widest window of an image made by :class:`HUWindows` (the inverse on that window's range).

    Args:
        image: ``(C, *S)``, one channel per window, each in [-1, 1].
        windows: the ``[[low, high], ...]`` HU windows of the channels.

    Returns:
        float64 ``(1, *S)`` in HU, clipped to the widest window.
    """
    windows = check_hu_windows(windows)
    img = torch.as_tensor(image).detach().cpu().numpy()
    if img.ndim < 2 or img.shape[0] != len(windows):
        raise ValueError(
            f"expected one channel per HU window ({len(windows)} HU windows), got an image of shape {tuple(img.shape)}."
        )
    c = max(range(len(windows)), key=lambda i: windows[i][1] - windows[i][0])
    lo, hi = windows[c]
    return (img[c : c + 1].astype(np.float64) + 1.0) / 2.0 * (hi - lo) + lo


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
