"""Datalists: Decathlon-style JSON files and plain folders of CT volumes or DICOM series."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from monai_simsid.utils.errors import InputError

__all__ = [
    "VOLUME_SUFFIXES",
    "case_name",
    "is_dicom_folder",
    "list_folder",
    "load_datalist",
    "resolve_inputs",
    "split_sections",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PATH_KEYS = ("image", "label", "exclude")


def case_name(path: str | os.PathLike) -> str:
    """The case name of an input: its file name without extensions, or the DICOM folder's name.

    A trailing ``_ct`` (as in ``<case>_ct.nii.gz``) is kept: the name is the file name, nothing is guessed.
    """
    p = Path(path)
    if p.is_dir():
        return p.name
    name = p.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that directly contains DICOM files."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any(_looks_like_dicom(f) for f in sorted(p.iterdir())[:16] if f.is_file())


def list_folder(folder: str | os.PathLike) -> list[dict]:
    """Every CT volume file and DICOM series folder inside ``folder`` (searched recursively).

    Args:
        folder: a directory.

    Returns:
        a sorted list of ``{"image": absolute path}`` entries.

    Raises:
        InputError: if the folder does not exist or holds no volume.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "dataset folder does not exist or is not a directory")
    items: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        d = Path(dirpath)
        if d != root and is_dicom_folder(d):
            items.append(str(d.resolve()))
            dirnames[:] = []
            continue
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue  # temp files of an interrupted write
            if fn.lower().endswith(VOLUME_SUFFIXES):
                items.append(str((d / fn).resolve()))
    if not items:
        raise InputError(root, f"no CT volume ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folder found")
    return [{"image": p} for p in sorted(items)]


def load_datalist(
    path: str | os.PathLike,
    section: str = "training",
    check_files: bool = True,
    base_dir: str | os.PathLike | None = None,
    missing_ok: bool = False,
) -> list[dict]:
    """Read one section of a Medical Segmentation Decathlon style datalist.

    The file looks like ``{"training": [{"image": ...}], "validation": [{"image": ..., "label": ...}],
    "test": [...]}``. Paths are relative to the JSON file (or ``base_dir``); ``label`` is a lesion mask and is
    absent for normal scans; ``exclude`` (optional) is a mask of a region of a normal scan to leave out of training
    and calibration (see :mod:`monai_simsid.data.exclusion`).

    Args:
        path: the JSON file.
        section: which list to return.
        check_files: raise if a referenced file is missing.
        base_dir: resolve relative paths against this folder instead of the JSON's folder.
        missing_ok: return an empty list when the section is absent.

    Returns:
        the entries with absolute paths.

    Raises:
        InputError: for a missing or malformed file, a missing section, or a missing referenced file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "datalist file does not exist")
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(path, f"datalist is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(content, dict):
        raise InputError(path, "datalist must be a JSON object with 'training'/'validation'/'test' lists")
    if section not in content and missing_ok:
        return []
    if section not in content:
        raise InputError(path, f"datalist has no '{section}' section (found: {sorted(content)})")
    entries = content[section]
    if not isinstance(entries, list):
        raise InputError(path, f"datalist section '{section}' must be a list")
    base = Path(base_dir) if base_dir is not None else path.parent
    out = []
    for i, item in enumerate(entries):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise InputError(path, f"entry {i} of '{section}' has no 'image'")
        item = dict(item)
        for key in PATH_KEYS:
            if key in item and item[key] is not None:
                p = Path(item[key])
                p = p if p.is_absolute() else (base / p)
                item[key] = str(p.resolve())
                if check_files and not p.exists():
                    raise InputError(p, f"file listed in datalist {path} ('{section}' entry {i}) does not exist")
        out.append(item)
    return out


def resolve_inputs(
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "test",
) -> list[dict]:
    """Entries from either a datalist section or a folder (exactly one of the two must be given)."""
    if (datalist is None) == (dataset_dir is None):
        raise ValueError("give exactly one of datalist or dataset_dir.")
    if datalist is not None:
        return load_datalist(datalist, section=section)
    return list_folder(dataset_dir)  # type: ignore[arg-type]


def split_sections(entries: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Split entries into (normals, lesion cases) by the presence of a ``label``."""
    normals = [e for e in entries if not e.get("label")]
    lesions = [e for e in entries if e.get("label")]
    return normals, lesions
