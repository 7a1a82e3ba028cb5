"""Locating the shared configs and the bundles, from any working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["bundle_root", "bundle_version", "preset_config_files", "repo_root", "shared_config_path"]


def repo_root() -> Path:
    """The project folder (the parent of the ``monai_simsid`` package; the package is installed in editable mode)."""
    return Path(__file__).resolve().parents[2]


def shared_config_path(name: str) -> Path:
    """Path of a shared config in ``configs/`` (``MONAI_SIMSID_CONFIGS`` overrides the folder)."""
    folder = Path(os.environ.get("MONAI_SIMSID_CONFIGS", repo_root() / "configs"))
    path = folder / (name if name.endswith((".json", ".yaml")) else f"{name}.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shared config not found (set MONAI_SIMSID_CONFIGS to the configs folder)")
    return path


def bundle_root(name: str) -> str:
    """Folder of the bundle ``name`` inside ``bundles/``."""
    return str(repo_root() / "bundles" / name)


def bundle_version(root: str | os.PathLike) -> str:
    """The ``version`` field of a bundle's ``configs/metadata.json``."""
    with open(Path(root) / "configs" / "metadata.json") as f:
        return str(json.load(f)["version"])


def preset_config_files(name: str, preset: str = "cpu") -> list[str]:
    """The config files of bundle ``name`` for a training preset, in merge order: ``train.json`` for ``"cpu"`` (the
    bundle default), ``train.json`` then ``<preset>.json`` otherwise (e.g. ``"gpu"``; an override file lists only the
    keys it changes)."""
    folder = Path(bundle_root(name)) / "configs"
    files = [folder / "train.json"] + ([] if preset == "cpu" else [folder / f"{preset}.json"])
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such config (bundle {name!r}, preset {preset!r})")
    return [str(f) for f in files]
