#!/usr/bin/env python
"""Does a trained bundle's anomaly map show the sliding-window grid? Run it on NORMAL scans.

    python tools/check_window_grid.py --bundle simsid_ct --ckpt OUT/models/model.pt SCAN.nii.gz [SCAN2 ...]

Prints JSON per scan, on the model's preprocessed grid:

* ``grid_strength``: per axis, the fraction of the body-averaged map profile's detrended variance explained by the
  phase within the window stride (:func:`monai_simsid.metrics.grid.compute_window_grid_strength`; ~1 = the map
  repeats with the stride, about ``8 / profile length`` = no such component);
* ``image_grid_strength``: the same for the image itself: anatomy can have structure at that period too, so compare;
* ``shift_change``: relative RMS change of the map (inside the body) when the window grid is shifted by a third of
  the stride along each axis in turn. 0 = the map does not depend on where windows fall.
"""

from __future__ import annotations

import argparse
import json


def check_scan(predictor, path: str) -> dict:
    """Grid figures of one scan for an :class:`~monai_simsid.apps.inference.AnomalyPredictor`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from monai_simsid.metrics.grid import compute_window_grid_strength, window_stride

    item = predictor.preprocessing({"image": path})
    x = torch.as_tensor(item["image"])[None].float()
    body = item.get("body")
    body_t = None if body is None else torch.as_tensor(body)[None].float()
    inferer, net = predictor.inferer, predictor.network
    mask = np.ones(x.shape[2:], bool) if body is None else np.asarray(body[0]) > 0.5
    base = inferer(x, net, body_t).anomaly_map[0, 0].numpy()
    stride = window_stride(inferer.roi_size, inferer.overlap)
    changes = []
    for axis, s in enumerate(stride):
        k = max(s // 3, 1)
        pad = [0, 0] * x.ndim
        pad[2 * (x.ndim - 1 - (axis + 2))] = k  # F.pad lists the last dimension first
        xs = F.pad(x, pad[: 2 * (x.ndim - 2)], mode="replicate")
        bs = None if body_t is None else F.pad(body_t, pad[: 2 * (x.ndim - 2)], mode="replicate")
        shifted = inferer(xs, net, bs).anomaly_map[0, 0].numpy()
        shifted = np.take(shifted, np.arange(k, k + base.shape[axis]), axis=axis)
        d = (shifted - base)[mask]
        changes.append(float(np.sqrt(np.mean(d**2)) / max(np.sqrt(np.mean(base[mask] ** 2)), 1e-12)))
    image = x[0, 0].numpy()
    return {
        "scan": path,
        "stride_vox": stride,
        "grid_strength": [round(v, 3) for v in compute_window_grid_strength(base, stride, mask=mask)],
        "image_grid_strength": [round(v, 3) for v in compute_window_grid_strength(image, stride, mask=mask)],
        "shift_change": [round(v, 3) for v in changes],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="simsid_ct")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("scans", nargs="+")
    args = p.parse_args(argv)
    from monai_simsid.apps.inference import load_predictor

    predictor = load_predictor(args.bundle, args.ckpt, device=args.device)
    print(json.dumps([check_scan(predictor, s) for s in args.scans], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
