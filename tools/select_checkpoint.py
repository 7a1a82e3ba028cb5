#!/usr/bin/env python
"""Score several trained checkpoints without lesion labels: synthetic lesions injected into normal scans.

    python tools/select_checkpoint.py --bundle simsid_ct --datalist DATALIST.json \
        --ckpts RUN_S0/models/model.pt,RUN_S1/models/model.pt,RUN_S2/models/model.pt [--out ranking.json]

Each checkpoint (e.g. one per training ``--seed``) is scored on synthetic ellipsoid lesions injected into the
datalist's validation normals, else its training scans (:func:`monai_simsid.apps.selection.rank_checkpoints`). No
real lesion label is read. Prints (and with ``--out`` writes atomically) JSON: every checkpoint's ``voxel_ap``,
``voxel_auroc`` and ``sample_auroc``, best first by ``--metric`` (default ``voxel_ap``), and ``best``.

A weak signal so far: on the shared real CT it did not pick the best of three new seeds (``docs/benchmarks.md``,
"Label-free model selection"). Treat ``best`` as a measurement, not a choice to rely on.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="simsid_ct")
    p.add_argument("--ckpts", required=True, help="comma-separated checkpoint paths")
    p.add_argument("--datalist", required=True, help="the training datalist (its normals receive the lesions)")
    p.add_argument("--seeds", default="0,1,2", help="injection seeds: each gives every normal one lesion")
    p.add_argument("--metric", default="voxel_ap", choices=["voxel_ap", "voxel_auroc", "sample_auroc"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    from monai_simsid.apps.selection import rank_checkpoints
    from monai_simsid.utils.atomic import atomic_write_text
    from monai_simsid.utils.cli import install_excepthook

    install_excepthook()
    ckpts = [c for c in args.ckpts.split(",") if c]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    result = rank_checkpoints(args.bundle, ckpts, args.datalist, seeds, args.metric, args.device)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
