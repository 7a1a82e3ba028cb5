"""Networks and building blocks."""

from __future__ import annotations

from .blocks import ConvDecoder, ConvEncoder, HierarchicalMemory, InpaintingBlock, MemoryBlock, SpaceAwareMemory
from .nets import SimSID, SimSIDDiscriminator, SimSIDOutput, SimSIDTrainOutput

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "HierarchicalMemory",
    "InpaintingBlock",
    "MemoryBlock",
    "SimSID",
    "SimSIDDiscriminator",
    "SimSIDOutput",
    "SimSIDTrainOutput",
    "SpaceAwareMemory",
]
