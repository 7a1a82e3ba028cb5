#!/usr/bin/env python
"""Write a datalist for the shared real CT (``../shared/data/ct``): normal chest scans for training, lung2 for test.

The shared folder is never copied into the repository; the datalist points at it with absolute paths.

    python tools/make_real_datalist.py --out runs/real/datalist.json [--data-dir ../shared/data/ct] [--val-normal NAME]

``--val-normal`` holds one normal chest scan out of training for validation and calibration (by default there is
no validation section: validation then injects synthetic lesions into the training normals and calibration uses
the training normals, which the checkpoint records).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"


def build(data_dir: Path, val_normal: str | None = None) -> dict:
    normals = sorted((data_dir / "normal").glob("chest_*.nii.gz"))
    if not normals:
        raise SystemExit(f"{data_dir}: no normal chest scans (normal/chest_*.nii.gz)")
    train = [{"image": str(p.resolve())} for p in normals if val_normal is None or val_normal not in p.name]
    val = [{"image": str(p.resolve())} for p in normals if val_normal is not None and val_normal in p.name]
    lesion = data_dir / "lesion"
    test = [{"image": str((lesion / "lung2_ct.nii.gz").resolve()), "label": str((lesion / "lung2_lesion.nii.gz").resolve())}]
    out = {"description": "shared real CT: chest normals for training, lung2 for test", "training": train, "test": test}
    if val:
        out["validation"] = val
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", required=True)
    p.add_argument("--val-normal", default=None, help="substring of the normal scan to hold out for validation")
    args = p.parse_args(argv)
    content = build(Path(args.data_dir), args.val_normal)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(content, indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
