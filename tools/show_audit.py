#!/usr/bin/env python
"""Look at what the normal-set audit found: one overview PNG per audited normal scan, centred on its peak region.

    python tools/show_audit.py OUT/models/normal_audit.json --out audit_png [--top 1]

``normal_audit.json`` is written beside ``model.pt`` when simsid_ct calibrates with the descriptor fusion
(:func:`monai_simsid.apps.audit.audit_normal_terms`). Each PNG shows the scan's own slices (axial, coronal, sagittal,
lung and soft-tissue window) through the audited peak (its world position, so any grid works), circled; the title
gives the peak in units of the normal 99.9th percentile. Scans are taken in the audit's order (the least
normal-looking first); ``--top N`` keeps the first N.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def show(audit_path: str | Path, out_dir: str | Path, top: int | None = None) -> list[Path]:
    """Write the PNGs; returns their paths. Raises ``FileNotFoundError`` when an audited scan is missing."""
    from monai_simsid.export.overview import save_overview_png

    scans = json.loads(Path(audit_path).read_text())["scans"][: top if top else None]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, entry in enumerate(scans, 1):
        src = Path(entry["source"])
        if not src.is_file():
            raise FileNotFoundError(f"{src}: audited scan not found (the audit names the file it calibrated on).")
        img = nib.load(str(src))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        voxel = np.linalg.solve(img.affine, np.r_[entry["peak_ras_mm"], 1.0])[:3]
        voxel = np.clip(np.rint(voxel).astype(int), 0, np.asarray(hu.shape[:3]) - 1)
        name = src.name.split(".")[0]
        title = f"{name}: audit rank {rank}, peak {entry['peak']:.2f} (99.9th pct {entry['p99_9']:.2f})"
        written.append(
            save_overview_png(hu, np.zeros(hu.shape[:3], np.float32), img.affine, out / f"audit_{rank}_{name}.png",
                              focus_voxel=voxel.tolist(), case=title)
        )
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("audit", help="normal_audit.json (beside model.pt)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--top", type=int, default=None, help="only the first N scans of the audit")
    args = p.parse_args(argv)
    try:
        for path in show(args.audit, args.out, args.top):
            print(path)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {args.audit}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
