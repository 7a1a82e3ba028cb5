#!/usr/bin/env python
"""What does a trained reconstruction model make of a lesion? Input vs reconstruction, per input channel.

    python tools/inspect_reconstruction.py --bundle simsid_ct --ckpt OUT/models/model.pt \\
        --image CASE.nii.gz --label LESION.nii.gz [--png OUT.png]

Runs the bundle's full-scan sliding window on the preprocessed scan (model space: the training spacing, HU windows
as channels) and prints JSON with, per channel, the mean input, mean reconstruction and mean absolute error inside
the lesion and in the rest of the body. A model that *leaks* (reconstructs the lesion) has a small error inside it;
a model that reconstructs nothing well has large errors everywhere. ``--png`` saves the slice with the most lesion
voxels: input, reconstruction and error of the first channel, with the lesion outline.
"""

from __future__ import annotations

import argparse
import json


def inspect(predictor, image: str, label: str) -> tuple[dict, dict]:
    """Per-channel statistics and the arrays for the picture."""
    import nibabel as nib
    import numpy as np
    import torch
    from scipy import ndimage

    prepared = predictor.prepare({"image": image})
    x = prepared["image"][None].float()
    body = prepared["body"][None]
    net = predictor.network
    net.map_only = False  # every channel of the reconstruction, not only those the map compares

    class _Recon(torch.nn.Module):
        def forward(self, w, region):
            out = net(w, region)
            return type(out)(out.reconstruction, out.reconstruction, out.score)

    with torch.no_grad():
        recon = predictor.inferer(x.to(predictor.device), _Recon(), body.to(predictor.device)).anomaly_map.cpu()
    lab = nib.load(label)
    # label -> model grid: voxel of the model grid -> world -> label voxel (nearest neighbour)
    m = np.linalg.inv(lab.affine) @ prepared["model_affine"]
    lesion = ndimage.affine_transform(np.asarray(lab.dataobj, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(x.shape[2:]), order=0) > 0.5
    inside = body[0, 0].numpy() > 0.5
    rest = inside & ~lesion
    if not lesion.any():
        raise ValueError(f"{label}: the lesion does not overlap the preprocessed scan.")
    stats = {"lesion_voxels_model_grid": int(lesion.sum()), "channels": []}
    for c in range(x.shape[1]):
        xi, ri = x[0, c].numpy(), recon[0, c].numpy()
        err = np.abs(xi - ri)
        stats["channels"].append({
            "input_lesion": float(xi[lesion].mean()),
            "recon_lesion": float(ri[lesion].mean()),
            "error_lesion": float(err[lesion].mean()),
            "input_rest": float(xi[rest].mean()),
            "recon_rest": float(ri[rest].mean()),
            "error_rest": float(err[rest].mean()),
        })
    z = int(np.argmax(lesion.sum(axis=(0, 1))))
    arrays = {"input": x[0, 0, :, :, z].numpy(), "recon": recon[0, 0, :, :, z].numpy(), "lesion": lesion[:, :, z]}
    return stats, arrays


def save_png(arrays: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lo, hi = float(arrays["input"].min()), float(arrays["input"].max())
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.6))
    panels = (("input (channel 0)", arrays["input"], "gray", (lo, hi)), ("reconstruction", arrays["recon"], "gray", (lo, hi)),
              ("|error|", np.abs(arrays["input"] - arrays["recon"]), "hot", (0, hi - lo)))
    for a, (title, img, cmap, (vmin, vmax)) in zip(ax, panels):
        a.imshow(img.T, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax)
        a.contour(arrays["lesion"].T.astype(float), levels=[0.5], colors="cyan", origin="lower", linewidths=1)
        a.set_title(title)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="simsid_ct")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--png", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    from monai_simsid.apps.inference import load_predictor

    stats, arrays = inspect(load_predictor(args.bundle, args.ckpt, args.device), args.image, args.label)
    if args.png:
        save_png(arrays, args.png)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
