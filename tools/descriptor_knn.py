"""Fit the normative descriptor memory on normal chest CT and score new scans: a shortcut to ``bundles/descriptor_knn_ct``.

A thin command line over the bundle's library (no logic of its own):

- ``fit`` is the bundle's ``train.json``: :func:`monai_simsid.apps.descriptor_workflow.fit_descriptor_memory` on the
  ``training`` normals of a datalist, calibrated on its ``validation`` normals (the training normals when there
  are none; the file records which), written atomically to one ``.npz``;
- ``predict`` is the bundle's ``inference.json`` on the given scans
  (:class:`monai_simsid.apps.descriptor_inference.DescriptorPredictor`): per case ``<case>_anomaly_map.nii.gz``
  (0.5 = the normal-data voxel threshold, the scan's own shape and affine), mask, Slicer segmentation, report,
  overview; ``scores.csv``, and ``errors.csv`` for the scans that could not be used.

A bad input ends with one line naming the file (exit status 2).

Usage::

    python tools/descriptor_knn.py fit --datalist DATA/datalist.json --out OUT/memory.npz
    python tools/descriptor_knn.py predict --memory OUT/memory.npz --output_dir OUT/maps SCAN [SCAN ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_simsid.apps.config import bundle_root, bundle_version  # noqa: E402
from monai_simsid.apps.descriptor_workflow import fit_descriptor_memory  # noqa: E402
from monai_simsid.apps.inference import load_predictor  # noqa: E402
from monai_simsid.utils.errors import InputError  # noqa: E402

__all__ = ["BUNDLE", "main"]

BUNDLE = "descriptor_knn_ct"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one message on a bad input, 1 when some scans failed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="build and calibrate the memory from a datalist's normal scans")
    f.add_argument("--datalist", required=True)
    f.add_argument("--out", required=True, help="the memory file (.npz)")
    f.add_argument("--k", type=int, default=10)
    f.add_argument("--bank-size", type=int, default=120_000)
    f.add_argument("--region", choices=("scan", "crop"), default="scan")
    f.add_argument("--context", choices=("auto", "none", "lung_depth"), default="auto",
                   help="auto: the lung-envelope depth for whole scans, none for crops")
    r = sub.add_parser("predict", help="write calibrated anomaly maps, reports and scores.csv")
    r.add_argument("--memory", required=True)
    r.add_argument("--output_dir", required=True)
    r.add_argument("--region", choices=("scan", "crop"), default=None, help="default: the memory file's")
    r.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    try:
        if args.command == "fit":
            extra = fit_descriptor_memory(
                args.datalist, args.out, BUNDLE, bundle_version(bundle_root(BUNDLE)), region=args.region, k=args.k,
                bank_size=args.bank_size, context=args.context,
            )
            print(json.dumps(extra))
            return 0
        overrides = {"num_workers": 0} if args.region is None else {"num_workers": 0, "region": args.region}
        result = load_predictor(BUNDLE, args.memory, **overrides).run([{"image": i} for i in args.images], args.output_dir)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, problem in result["failed"]:
        print(f"error: {path}: {problem}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
