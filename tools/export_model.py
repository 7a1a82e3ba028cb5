#!/usr/bin/env python
"""Export a trained bundle's network to TorchScript (``.ts``) and ONNX (``.onnx``) and check both against eager mode.

    python tools/export_model.py --bundle simsid_ct --ckpt OUT/models/model.pt --out OUT/export

Run the exports on windows of the training size; full scans still need the sliding window (and, for SimSID, each
window's body region): ``monai_simsid.inferers.AnomalyInferer`` accepts any callable returning
``(output, anomaly_map, score)``-like results, e.g. a loaded TorchScript module wrapped to a named result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="simsid_ct")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args(argv)
    from monai_simsid.apps.export import export_onnx, export_torchscript, load_bundle_network, max_export_error

    net, roi = load_bundle_network(args.bundle, args.ckpt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    ts = export_torchscript(net, roi, out / f"{args.bundle}.ts")
    result[str(ts)] = max_export_error(net, roi, ts)
    if not args.no_onnx:
        onnx_path = export_onnx(net, roi, out / f"{args.bundle}.onnx")
        result[str(onnx_path)] = max_export_error(net, roi, onnx_path)
    print(json.dumps({"roi_size": roi, "max_abs_error_vs_eager": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
