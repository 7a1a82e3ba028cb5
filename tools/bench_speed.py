#!/usr/bin/env python
"""Speed and memory of full-scan inference with the simsid_ct bundle on synthetic scans of given shapes.

Prints one JSON object: per shape, seconds split into load, preprocess, model, post-process and write, voxels per
second, the peak resident memory of this process, and ``ratio_vs_reference``: our model stage (windows, memory,
in-painting, region keys, stitching) divided by a plain MONAI ``AutoEncoder`` with the same encoder widths and
strides slid over the same preprocessed scan with the same roi, overlap and ``sw_batch_size``. Weights are random unless ``--ckpt`` is given (speed does not
depend on them); the model config is the bundle's ``train.json`` default (or the checkpoint's).

    python tools/bench_speed.py --shapes 256x256x128,512x512x300 [--ckpt model.pt] [--device cpu]
        [--model_overrides '{"up_mode": "deconv", "out_kernel_size": 3}']

``--model_overrides`` (a JSON object) replaces keys of the model config (random weights only), e.g. to time another
decoder than the bundle default. ``--repeats N`` (N > 1) runs the model stage and the reference N times in all on the
same preprocessed scan and adds ``model_s_min``, ``reference_model_s_min`` and ``ratio_vs_reference_min`` (the best
of N, less sensitive to a busy machine and to the first call's set-up costs); the other keys are the first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _network_and_calibration(ckpt: str | None, overrides: dict | None = None):
    from monai.bundle import ConfigParser

    from monai_simsid.apps.checkpoint import load_model_checkpoint
    from monai_simsid.networks.nets import SimSID

    if ckpt:
        if overrides:
            raise ValueError("--model_overrides needs random weights (no --ckpt).")
        data = load_model_checkpoint(ckpt, bundle_name="simsid_ct")
        net = SimSID(**data["meta"]["model_config"])
        net.load_state_dict(data["network"])
        return net, data["calibration"], data["meta"]["model_config"], data["meta"].get("preprocessing", {})
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "simsid_ct" / "configs" / "train.json"))
    cfg = {**parser.get_parsed_content("model_config"), **(overrides or {})}
    cal = {"scan_threshold": 1.0, "scan_std": 1.0, "voxel_threshold": 0.5, "voxel_scale": 0.1, "fpr": 0.05,
           "voxel_fpr": 0.001, "source": "none (random weights)", "topk_fraction": 0.001}
    pre = {"hu_windows": parser.get_parsed_content("hu_windows")}
    return SimSID(**cfg), cal, cfg, pre


def _reference_seconds(predictor, path: str, cfg: dict, args) -> list[float]:
    """Seconds (``args.repeats`` runs) of a plain MONAI AutoEncoder with SimSID's encoder widths, slid over the same
    preprocessed scan."""
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import AutoEncoder

    c = int(cfg.get("in_channels", 1))  # the same input channels (HU windows) as the model
    ref = AutoEncoder(spatial_dims=3, in_channels=c, out_channels=c, channels=tuple(cfg["channels"]),
                      strides=(2,) * len(cfg["channels"])).to(args.device).eval()
    data = predictor.preprocessing({"image": path})
    x = torch.as_tensor(data["image"])[None].float()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            sliding_window_inference(x, cfg["roi_size"], args.sw_batch_size, ref, overlap=args.overlap, mode="gaussian",
                                     sw_device=args.device, device="cpu")
        times.append(time.perf_counter() - t0)
    return times


def _model_seconds(predictor, path: str, repeats: int) -> list[float]:
    """Seconds of ``repeats`` runs of the predictor's model stage (inferer + network) on the preprocessed scan."""
    prepared = predictor.prepare({"image": path})  # as in AnomalyPredictor.predict_prepared
    x = prepared["image"][None].float().to(predictor.device)
    body = prepared["body"][None].to(predictor.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.inferer(x, predictor.network, body)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x256x128,512x512x300")
    p.add_argument("--spacing", default="0.7,0.7,1.0", help="voxel size of the synthetic scans (mm)")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sw_batch_size", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--model_overrides", default=None, help="JSON object of model_config keys to replace")
    p.add_argument("--repeats", type=int, default=1, help="runs of the model stage and the reference (best of N)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    overrides = json.loads(args.model_overrides) if args.model_overrides else None
    if overrides is not None and not isinstance(overrides, dict):
        p.error("--model_overrides must be a JSON object")
    if overrides and args.ckpt:
        p.error("--model_overrides needs random weights (no --ckpt)")

    from monai_simsid.apps import build_preprocessing
    from monai_simsid.apps.inference import AnomalyPredictor
    from monai_simsid.data.synthetic import generate_chest_ct
    from monai_simsid.inferers import AnomalyInferer

    net, cal, cfg, pre = _network_and_calibration(args.ckpt, overrides)
    inferer = AnomalyInferer(cfg["roi_size"], cfg["region_grid"], sw_batch_size=args.sw_batch_size, overlap=args.overlap,
                             sw_device=args.device, device="cpu")
    spacing = [float(s) for s in args.spacing.split(",")]
    predictor = AnomalyPredictor(net, inferer, build_preprocessing(**pre), cal, "simsid_ct", "bench", device=args.device,
                                 write_png=False)
    results = {"device": args.device, "torch_threads": torch.get_num_threads(), "model_config": cfg, "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for shape_s in args.shapes.split(","):
            shape = tuple(int(v) for v in shape_s.lower().split("x"))
            # a synthetic chest phantom generated coarse and resized to the requested grid (generation is not timed)
            case = generate_chest_ct(size=64, spacing=[s * n / 64 for s, n in zip(spacing, shape)], seed=0)
            from scipy import ndimage

            vol = ndimage.zoom(case.image, [n / 64 for n in shape], order=1).astype(np.int16)
            path = Path(tmp) / f"scan_{shape_s}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), str(path))
            del vol
            t0 = time.perf_counter()
            nib.load(str(path)).get_fdata(dtype=np.float32)
            load_s = time.perf_counter() - t0
            pred, _ = predictor.predict({"image": str(path)}, return_image=True)
            t1 = time.perf_counter()
            predictor.write(pred, Path(tmp) / "out")
            write_s = time.perf_counter() - t1
            total = load_s + sum(pred.timings.values()) + write_s
            ref_times = _reference_seconds(predictor, str(path), cfg, args)
            ref_s = ref_times[0]
            results["shapes"][shape_s] = {
                "load_s": round(load_s, 2),
                "preprocess_s (includes a second load)": round(pred.timings["preprocess_s"], 2),
                "model_s": round(pred.timings["model_s"], 2),
                "postprocess_s": round(pred.timings["postprocess_s"], 2),
                "write_s": round(write_s, 2),
                "total_s": round(total, 2),
                "voxels_per_s": round(float(np.prod(shape)) / total),
                "peak_rss_mib": round(_peak_rss_mib()),
                "reference_model_s": round(ref_s, 2),
                "ratio_vs_reference": round(pred.timings["model_s"] / max(ref_s, 1e-9), 2),
            }
            if args.repeats > 1:
                model_min = min([pred.timings["model_s"], *_model_seconds(predictor, str(path), args.repeats - 1)])
                results["shapes"][shape_s].update({
                    "model_s_min": round(model_min, 3),
                    "reference_model_s_min": round(min(ref_times), 3),
                    "ratio_vs_reference_min": round(model_min / max(min(ref_times), 1e-9), 2),
                })
            print(json.dumps({shape_s: results["shapes"][shape_s]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
