"""Optional speed switches for a network: ``channels_last_3d`` memory layout and ``torch.compile``."""

from __future__ import annotations

import logging

import torch

__all__ = ["accelerate"]

logger = logging.getLogger(__name__)


def accelerate(net: torch.nn.Module, channels_last: bool = False, compile: bool | str = False) -> torch.nn.Module:
    """Apply the speed switches of the bundle configs to ``net`` (in place) and return it.

    Args:
        net: the network, already on its device.
        channels_last: store 4D/5D weights as ``channels_last`` / ``channels_last_3d`` (often faster for 3D
            convolutions with cuDNN and oneDNN; results are unchanged up to rounding).
        compile: ``torch.compile`` the forward pass in place (``nn.Module.compile``: the state dict keeps its keys,
            so checkpoints are unaffected). ``True`` uses the default backend; a string names the backend (e.g.
            ``"eager"`` to check the wiring without a compiler); command-line strings such as ``"true"``/``"false"`` are
            understood. The first iterations are slower while it compiles.

    Returns:
        ``net`` itself.
    """
    if isinstance(compile, str) and compile.strip().lower() in ("", "false", "0", "no", "off", "none"):
        compile = False  # a command-line "false"
    elif isinstance(compile, str) and compile.strip().lower() in ("true", "1", "yes", "on"):
        compile = True
    if isinstance(channels_last, str):
        channels_last = channels_last.strip().lower() in ("true", "1", "yes", "on")
    if channels_last:
        for p in net.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            elif p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    if compile:
        backend = compile if isinstance(compile, str) else "inductor"
        logger.info("torch.compile (backend %s): the first iterations compile the graph", backend)
        net.compile(backend=backend)
    return net
