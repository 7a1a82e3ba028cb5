#!/usr/bin/env python
"""Leave a region of a normal scan out of training: write an exclusion mask and a datalist that names it.

From the normal-set audit (``normal_audit.json`` beside ``model.pt`` or ``memory.npz``), a sphere around the peak of
each of its first N scans::

    python tools/make_exclusion_mask.py --audit OUT/models/normal_audit.json --top 1 --radius-mm 20 \\
        --datalist datalist.json --out-datalist datalist_excluded.json

or around any world point (RAS, mm, e.g. read off 3D Slicer, whose coordinates are RAS) of one scan::

    python tools/make_exclusion_mask.py --image chest_07.nii.gz --ras -54.8 -84.9 -115.0 --radius-mm 20 \\
        --out chest_07_exclude.nii.gz [--datalist datalist.json --out-datalist datalist_excluded.json]

The masks are NIfTI in the scan's own grid (``<case>_exclude.nii.gz`` beside the new datalist with ``--audit``),
written atomically. With ``--datalist`` the new datalist is the old one with ``"exclude"`` added to every entry of
that scan (matched by its resolved path; paths are written absolute). Training and calibration then leave the
sphere, grown by ``monai_simsid.data.exclusion.EXCLUDE_MARGIN_MM``, out (see :mod:`monai_simsid.data.exclusion`).
Look at the region first (``tools/show_audit.py``): the audit ranks, it does not diagnose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def write_mask(image: str | Path, centre_ras_mm, radius_mm: float, out: str | Path) -> Path:
    """Write the sphere mask of ``image``'s grid to ``out`` (atomically); returns ``out``."""
    from monai_simsid.data.exclusion import sphere_mask
    from monai_simsid.export.nifti import save_nifti
    from monai_simsid.transforms.io.array import LoadCT

    img = LoadCT(check_ct=False)(image)
    mask = sphere_mask(img.shape[1:], img.affine, centre_ras_mm, radius_mm)
    return save_nifti(mask, img.affine.numpy(), out)


def add_to_datalist(datalist: str | Path, masks: dict[str, Path], out: str | Path) -> Path:
    """Copy ``datalist`` to ``out`` with ``"exclude"`` on the entries whose image is a key of ``masks``."""
    from monai_simsid.data.datalist import load_datalist
    from monai_simsid.utils.atomic import atomic_path

    content = json.loads(Path(datalist).read_text())
    found = set()
    for section, entries in content.items():
        if not isinstance(entries, list):
            continue
        resolved = load_datalist(datalist, section, check_files=False)
        for i, entry in enumerate(resolved):
            key = str(Path(entry["image"]).resolve())
            content[section][i] = entry  # (paths absolute: the copy may live elsewhere)
            if key in masks:
                content[section][i] = {**entry, "exclude": str(Path(masks[key]).resolve())}
                found.add(key)
    missing = sorted(set(masks) - found)
    if missing:
        raise ValueError(f"{datalist}: no entry has the image {missing[0]}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--audit", help="normal_audit.json: a sphere at the peak of each of its first --top scans")
    p.add_argument("--top", type=int, default=1, help="with --audit: how many scans (default 1)")
    p.add_argument("--image", help="one scan (instead of --audit)")
    p.add_argument("--ras", type=float, nargs=3, metavar=("R", "A", "S"), help="with --image: the centre, RAS mm")
    p.add_argument("--radius-mm", type=float, required=True, help="the sphere's radius in mm")
    p.add_argument("--out", help="with --image: the mask file")
    p.add_argument("--datalist", help="a datalist to copy with 'exclude' added")
    p.add_argument("--out-datalist", help="where the copy goes (its folder also takes --audit's masks)")
    args = p.parse_args(argv)
    if (args.audit is None) == (args.image is None):
        p.error("give exactly one of --audit and --image")
    if args.image is not None and (args.ras is None or args.out is None):
        p.error("--image needs --ras and --out")
    if (args.datalist is None) != (args.out_datalist is None) or (args.audit is not None and args.out_datalist is None):
        p.error("--datalist and --out-datalist go together (and --audit needs them)")
    try:
        masks: dict[str, Path] = {}
        if args.audit is not None:
            from monai_simsid.data.datalist import case_name

            scans = json.loads(Path(args.audit).read_text())["scans"][: max(args.top, 0)]
            folder = Path(args.out_datalist).resolve().parent
            folder.mkdir(parents=True, exist_ok=True)  # (the masks go beside the new datalist)
            for entry in scans:
                src = str(Path(entry["source"]).resolve())
                out = folder / f"{case_name(src)}_exclude.nii.gz"
                masks[src] = write_mask(src, entry["peak_ras_mm"], args.radius_mm, out)
        else:
            masks[str(Path(args.image).resolve())] = write_mask(args.image, args.ras, args.radius_mm, args.out)
        for path in masks.values():
            print(path)
        if args.datalist is not None:
            print(add_to_datalist(args.datalist, masks, args.out_datalist))
    except (OSError, KeyError, ValueError) as e:  # InputError is a ValueError and names the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
