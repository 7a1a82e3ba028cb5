"""Networks."""

from __future__ import annotations

from .discriminator import SimSIDDiscriminator
from .simsid import SimSID, SimSIDOutput, SimSIDTrainOutput

__all__ = ["SimSID", "SimSIDDiscriminator", "SimSIDOutput", "SimSIDTrainOutput"]
