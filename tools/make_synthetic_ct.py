#!/usr/bin/env python
"""Write a synthetic chest-CT dataset (NIfTI + datalist.json) and optionally a PNG montage.

Example::

    python tools/make_synthetic_ct.py --out data/synthetic --num-normal 20 --num-abnormal 6 --montage montage.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from monai_simsid.data.synthetic import save_montage, write_synthetic_dataset
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from monai_simsid.data.synthetic import save_montage, write_synthetic_dataset

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of the tool."""
    p = argparse.ArgumentParser(description="Generate a synthetic chest-CT anomaly-detection dataset.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-normal", type=int, default=10, help="number of normal cases (default: 10)")
    p.add_argument("--num-abnormal", type=int, default=4, help="number of cases with lesions (default: 4)")
    p.add_argument("--num-val-normal", type=int, default=None, help="held-out normal cases (default: automatic)")
    p.add_argument("--size", type=int, nargs="+", default=[96], help="grid size in voxels: one value or three")
    p.add_argument("--spacing", type=float, nargs="+", default=[1.5], help="voxel size in mm: one value or three")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    p.add_argument("--montage", default=None, help="also save a PNG montage of the first normal and abnormal case")
    return p


def _one_or_three(values: list, name: str, parser: argparse.ArgumentParser):
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return tuple(values)
    parser.error(f"--{name} takes one or three values, got {len(values)}.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    size = _one_or_three(args.size, "size", parser)
    spacing = _one_or_three(args.spacing, "spacing", parser)
    try:
        path = write_synthetic_dataset(
            args.out, args.num_normal, args.num_abnormal, size=size, spacing=spacing, seed=args.seed,
            num_val_normal=args.num_val_normal,
        )
    except ValueError as err:
        parser.error(str(err))
    if args.montage:
        import nibabel as nib
        import numpy as np

        datalist = json.loads(path.read_text())
        entries = datalist["training"][:1] + [e for e in datalist["validation"] + datalist["test"] if "label" in e][:1]
        images, masks, titles = [], [], []
        for e in entries:
            nii = nib.load(str(path.parent / e["image"]))
            images.append(np.asarray(nii.dataobj, dtype=np.float32))
            masks.append(np.asarray(nib.load(str(path.parent / e["label"])).dataobj) if "label" in e else None)
            titles.append(Path(e["image"]).name.replace(".nii.gz", ""))
        spacing_mm = tuple(float(v) for v in nii.header.get_zooms()[:3])
        save_montage(args.montage, images, masks, spacing=spacing_mm, titles=titles)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
