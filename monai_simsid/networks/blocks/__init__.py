"""Network building blocks."""

from __future__ import annotations

from .convolutions import ConvDecoder, ConvEncoder
from .inpainting import InpaintingBlock, binary_position_code
from .memory import (
    HierarchicalMemory,
    MemoryBlock,
    SpaceAwareMemory,
    block_neighbourhood,
    blocks_to_tokens,
    gather_neighbours,
    region_block_keys,
    tokens_to_blocks,
)

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "HierarchicalMemory",
    "InpaintingBlock",
    "MemoryBlock",
    "SpaceAwareMemory",
    "binary_position_code",
    "block_neighbourhood",
    "blocks_to_tokens",
    "gather_neighbours",
    "region_block_keys",
    "tokens_to_blocks",
]
