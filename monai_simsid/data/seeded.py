"""A dataset whose random transform is seeded per item, so samples do not depend on who loads them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.data import Dataset
from monai.transforms import Randomizable, apply_transform

__all__ = ["SeededDataset", "item_seed"]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed derived from ``(seed, epoch, index)`` (NumPy ``SeedSequence``: well mixed, no collisions
    between neighbouring triples)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0])


class SeededDataset(Dataset):
    """MONAI ``Dataset`` that re-seeds its random transform from ``(seed, epoch, index)`` before each item.

    With a plain ``Dataset`` the random windows an item gets depend on the order in which items are loaded and on
    which process loads them (rank, data-loader worker). Here they depend only on the item and the epoch, the way a
    TorchIO random transform samples its parameters and then applies a deterministic one:

    * DDP training on N processes draws exactly the windows single-process training draws (the multi-GPU
      equivalence test relies on it);
    * data-loader workers and resumed runs give the same samples as a serial, uninterrupted run.

    Call :meth:`set_epoch` at every epoch start (:class:`~monai_simsid.handlers.EpochSeedHandler` does).

    Args:
        data: the items.
        transform: a randomizable transform (or a ``Compose``); anything with ``set_random_state(seed=...)``.
        seed: base seed.
    """

    def __init__(self, data: Sequence, transform: Callable, seed: int = 0) -> None:
        if not hasattr(transform, "set_random_state"):
            raise ValueError(f"transform {type(transform).__name__} has no set_random_state(); use monai.data.Dataset.")
        super().__init__(data=data, transform=transform)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples are drawn next."""
        self.epoch = int(epoch)

    def _transform(self, index: int) -> Any:
        t: Randomizable = self.transform  # type: ignore[assignment]
        t.set_random_state(seed=item_seed(self.seed, self.epoch, index))
        return apply_transform(t, self.data[index])
