"""Application-level helpers: shared configs, preprocessing, bundles."""

from __future__ import annotations

from .config import bundle_root, bundle_version, preset_config_files, repo_root, shared_config_path
from .preprocessing import build_preprocessing, invert_to_input, load_preprocessing_config

__all__ = [
    "build_preprocessing",
    "bundle_root",
    "bundle_version",
    "invert_to_input",
    "load_preprocessing_config",
    "preset_config_files",
    "repo_root",
    "shared_config_path",
]
