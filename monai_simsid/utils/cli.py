"""Command-line conveniences for bundle runs: one-line input errors and a progress bar."""

from __future__ import annotations

import sys
from typing import Any

from monai_simsid.utils.errors import InputError, find_input_error

__all__ = ["attach_progress", "install_excepthook", "require_flags"]


def install_excepthook() -> None:
    """Report an :class:`~monai_simsid.utils.errors.InputError` as one line on stderr and exit with status 2.

    Any other exception keeps Python's normal traceback.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
        err = find_input_error(exc) if exc is not None else None
        if err is not None:
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(2)
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def require_flags(**flags: Any) -> None:
    """Refuse a switch given as text, e.g. ``--resume false`` on the ``monai.bundle run`` command line.

    The command line parses ``True`` / ``False`` as booleans but keeps ``true`` / ``false`` as strings, and any
    non-empty string counts as on: ``--resume false`` would resume. Raises one :class:`InputError` naming the switch.
    """
    for name, value in flags.items():
        if isinstance(value, str):
            raise InputError(
                None, f"--{name} {value!r} is text, not a switch: write --{name} True or --{name} False (capitalised)."
            )


def attach_progress(engine: Any, enabled: bool = True) -> None:
    """Attach Ignite's progress bar showing the running loss (no-op when disabled)."""
    if not enabled:
        return
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False).attach(engine, output_transform=lambda out: {"loss": out["loss"]} if isinstance(out, dict) else {})
