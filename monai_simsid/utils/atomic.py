"""Atomic file output: write to a hidden temporary file in the destination folder, then rename it into place.

A crash or an exception while writing never leaves a truncated file under the final name, and an existing file
stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monai_simsid.utils.errors import InputError

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write_text", "full_suffix"]

# extensions made of several dot-separated parts that writers dispatch on as a whole
_MULTI_SUFFIXES = (".seg.nrrd", ".nii.gz", ".tar.gz", ".csv.gz", ".json.gz")


def full_suffix(name: str) -> str:
    """The extension of a file name, keeping known multi-part extensions (``.nii.gz``, ``.seg.nrrd``) whole."""
    lower = name.lower()
    for suffix in _MULTI_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[-len(suffix):]
    return Path(name).suffix


def _check_folder(folder: Path) -> None:
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, "output folder is not writable (it does not exist, is not a folder or lacks permission)")


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; move it onto ``final_path`` when the block succeeds.

    The temporary file is ``.<name>.tmp-<random><ext>`` in the same folder (so the final ``os.replace`` is an atomic
    rename on the same file system) and keeps the real extension at the end, so writers that choose the format from
    the suffix (nibabel, pynrrd, matplotlib) work on it. It is created empty before the block runs; the writer may
    overwrite or replace it. If the block raises, the temporary file is removed and ``final_path`` is untouched.

    Args:
        final_path: where the file must end up.

    Raises:
        InputError: if the destination folder does not exist or is not writable.
    """
    final = Path(final_path)
    if not final.name:
        raise ValueError(f"atomic_path needs a file path, got {final_path!r}")
    folder = final.parent
    _check_folder(folder)
    ext = full_suffix(final.name)
    tmp = None
    for _ in range(16):
        candidate = folder / f".{final.name}.tmp-{secrets.token_hex(6)}{ext}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(folder, f"output folder is not writable ({e.strerror or e})") from e
        os.close(fd)
        tmp = candidate
        break
    if tmp is None:  # pragma: no cover - 16 collisions of 48 random bits
        raise OSError(f"could not create a temporary file in {folder}")
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"the writer did not produce {tmp}")
        with contextlib.suppress(OSError), open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` done atomically (a checkpoint is never left half-written); returns the path."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
