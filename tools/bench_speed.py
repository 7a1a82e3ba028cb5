#!/usr/bin/env python
"""Speed and memory of full-scan inference with the simsid_ct bundle on synthetic scans of given shapes.

Prints one JSON object: per shape, seconds split into load, preprocess, model, post-process and write, voxels per
second, the peak resident memory of this process, and ``ratio_vs_reference``: our model stage (windows, memory,
in-painting, region keys, stitching) divided by a plain MONAI ``AutoEncoder(spatial_dims=3, in_channels=1,
out_channels=1)`` with the same encoder widths and strides slid over (one channel of) the same preprocessed scan with
the same roi, overlap and ``sw_batch_size``. When the model takes several input channels (HU windows),
``ratio_vs_reference_same_channels`` divides by the same reference built with the model's ``in_channels`` (fed all
channels): the like-for-like comparison for a multi-channel model. Weights are random unless ``--ckpt`` is given
(speed does not depend on them); the model config is the bundle's ``train.json`` default. A checkpoint runs through
the bundle's own ``inference.json`` predictor, as ``monai.bundle run`` would run it (its calibration with the
descriptor fusion, HU windows, window margin and overlap), so its figures are what a user waits for.

    python tools/bench_speed.py --shapes 256x256x128,512x512x300 [--ckpt model.pt] [--device cpu]
        [--model_overrides '{"up_mode": "deconv", "out_kernel_size": 3}'] [--preset gpu] [--amp]

``--preset gpu`` takes the model config (random weights) and ``sw_batch_size`` of the bundle's ``gpu.json`` preset;
``--amp`` runs the model stage and the references under CUDA mixed precision (float16 autocast).

``--model_overrides`` (a JSON object) replaces keys of the model config (random weights only), e.g. to time another
decoder than the bundle default. ``--repeats N`` (N > 1) runs the model stage and the references N times in all on the
same preprocessed scan, taking turns (model, reference, reference with the model's channels, then again), so that a
burst of load on a shared machine slows both sides of a ratio rather than one; it adds ``model_s_min``,
``reference_model_s_min`` and ``ratio_vs_reference_min`` (the best of N, less sensitive to a busy machine and to the
first call's set-up costs), ``ratio_vs_reference_median`` (the median of the N - 1 ratios of runs taken side by side)
and the same for the same-channels reference; the other keys are the first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

PRESETS = ("cpu", "gpu")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reference_nets(cfg: dict, device: str = "cpu") -> dict[str, tuple[int, torch.nn.Module]]:
    """The plain MONAI AutoEncoders the model stage is compared with, as ``{name: (in_channels, network)}``.

    ``"reference"`` takes one input channel (the definition of ``ratio_vs_reference``); when the model takes
    ``c > 1`` channels, ``"reference_same_channels"`` takes ``c`` (like for like). Both have SimSID's encoder widths
    and stride 2 per level; their weights are seeded (speed does not depend on them)."""
    from monai.networks.nets import AutoEncoder

    c = int(cfg.get("in_channels", 1))
    nets = {}
    for name, ch in [("reference", 1), ("reference_same_channels", c)][: 1 if c == 1 else 2]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = AutoEncoder(spatial_dims=3, in_channels=ch, out_channels=ch, channels=tuple(cfg["channels"]),
                              strides=(2,) * len(cfg["channels"]))
        nets[name] = (ch, net.to(device).eval())
    return nets


def _reference_runs(predictor, path: str, cfg: dict, args) -> dict[str, Callable[[], object]]:
    """One call per reference network: slides it over the same preprocessed scan as the model (the one-channel
    reference over its first channel; speed does not depend on which)."""
    from monai.inferers import sliding_window_inference

    data = predictor.preprocessing({"image": path})
    x = torch.as_tensor(data["image"])[None].float()

    def run(net: torch.nn.Module, xi: torch.Tensor) -> Callable[[], object]:
        def call():
            amp = bool(getattr(args, "amp", False)) and str(args.device).startswith("cuda")
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                return sliding_window_inference(xi, cfg["roi_size"], args.sw_batch_size, net, overlap=args.overlap,
                                                mode="gaussian", sw_device=args.device, device="cpu")

        return call

    return {name: run(net, x[:, :ch]) for name, (ch, net) in _reference_nets(cfg, args.device).items()}


def _model_run(predictor, path: str) -> Callable[[], object]:
    """One call of the predictor's model stage (inferer + network) on the preprocessed scan."""
    prepared = predictor.prepare({"image": path})  # as in AnomalyPredictor.predict_prepared
    x = prepared["image"][None].float().to(predictor.device)
    body = prepared["body"][None].to(predictor.device)
    return lambda: predictor.run_model(x, body)


def _interleaved_seconds(calls: dict[str, Callable[[], object]], rounds: int,
                         clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call over ``rounds`` rounds, the calls taking turns within each round (not one block per call),
    so that a change in the machine's load between rounds affects every call alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            t0 = clock()
            call()
            times[k].append(clock() - t0)
    return times


def _ratio_keys(model_first: float, model_more: list[float], ref_times: list[float], prefix: str, ratio: str) -> dict:
    """``{prefix}_s``/``{ratio}`` of the first runs and, with repeats, the best-of-N and paired-median figures.
    ``ref_times[0]`` pairs with ``model_first``, ``ref_times[1:]`` with ``model_more`` (taken side by side)."""
    out = {f"{prefix}_s": round(ref_times[0], 4), ratio: round(model_first / max(ref_times[0], 1e-9), 2)}
    if model_more:
        best = min(model_first, *model_more)
        out[f"{prefix}_s_min"] = round(min(ref_times), 4)
        out[f"{ratio}_min"] = round(best / max(min(ref_times), 1e-9), 2)
        out[f"{ratio}_median"] = round(float(np.median([m / max(r, 1e-9) for m, r in zip(model_more, ref_times[1:])])), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x256x128,512x512x300")
    p.add_argument("--spacing", default="0.7,0.7,1.0", help="voxel size of the synthetic scans (mm)")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="cpu", choices=PRESETS,
                   help="model config of random weights: the bundle's CPU default or its gpu.json preset")
    p.add_argument("--amp", action="store_true", help="CUDA mixed precision for the model stage (AnomalyInferer amp)")
    p.add_argument("--sw_batch_size", type=int, default=None, help="windows per pass (default: the preset's)")
    p.add_argument("--overlap", type=float, default=None,
                   help="window overlap (default: the checkpoint's, or 0.25 for random weights)")
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
    if args.sw_batch_size is None:
        from monai.bundle import ConfigParser

        from monai_simsid.apps import preset_config_files

        parser = ConfigParser()
        parser.read_config(preset_config_files("simsid_ct", args.preset))
        args.sw_batch_size = int(parser.get("inferer#sw_batch_size", 4))

    from monai_simsid.apps import build_preprocessing
    from monai_simsid.apps.inference import AnomalyPredictor
    from monai_simsid.data.synthetic import generate_chest_ct
    from monai_simsid.inferers import AnomalyInferer

    if args.ckpt:
        # a trained checkpoint runs as the bundle runs it: inference.json's predictor (its calibration, descriptor
        # fusion, HU windows, window margin and overlap all from the checkpoint), so the figures are the user's
        from monai_simsid.apps.checkpoint import load_model_checkpoint
        from monai_simsid.apps.inference import load_predictor

        cfg = load_model_checkpoint(args.ckpt, bundle_name="simsid_ct")["meta"]["model_config"]  # for the references
        settings = {"sw_batch_size": args.sw_batch_size, "amp": args.amp, "write_png": False, "sw_device": args.device}
        if args.overlap is not None:
            settings["overlap"] = args.overlap
        predictor = load_predictor("simsid_ct", args.ckpt, device=args.device, **settings)
        args.overlap = float(predictor.inferer.overlap)
    else:
        from monai_simsid.apps.untrained import untrained_simsid

        net, cal, cfg, pre = untrained_simsid(args.preset, overrides)
        args.overlap = 0.25 if args.overlap is None else args.overlap
        inferer = AnomalyInferer(cfg["roi_size"], cfg["region_grid"], sw_batch_size=args.sw_batch_size,
                                 overlap=args.overlap, sw_device=args.device, device="cpu", amp=args.amp)
        predictor = AnomalyPredictor(net, inferer, build_preprocessing(**pre), cal, "simsid_ct", "bench",
                                     preprocessing_settings=pre, device=args.device, write_png=False)
    spacing = [float(s) for s in args.spacing.split(",")]
    results = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "torch_threads": torch.get_num_threads(), "preset": args.preset, "amp": args.amp,
               "sw_batch_size": args.sw_batch_size, "overlap": args.overlap, "model_config": cfg, "shapes": {}}
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
            refs = _reference_runs(predictor, str(path), cfg, args)
            ref_times = _interleaved_seconds(refs, 1)  # the references' first runs (the model's is in predict)
            model_more: list[float] = []
            if args.repeats > 1:
                more = _interleaved_seconds({"model": _model_run(predictor, str(path)), **refs}, args.repeats - 1)
                model_more = more.pop("model")
                ref_times = {k: ref_times[k] + more[k] for k in ref_times}
            model_s = pred.timings["model_s"]
            row = {
                "load_s": round(load_s, 2),
                "preprocess_s (includes the read)": round(pred.timings["preprocess_s"], 2),
                "model_s": round(model_s, 4),
                "postprocess_s": round(pred.timings["postprocess_s"], 2),
                "write_s": round(write_s, 2),
                "total_s": round(total, 2),
                "voxels_per_s": round(float(np.prod(shape)) / total),
                "peak_rss_mib": round(_peak_rss_mib()),
            }
            if model_more:
                row["model_s_min"] = round(min(model_s, *model_more), 4)
            row.update(_ratio_keys(model_s, model_more, ref_times["reference"], "reference_model", "ratio_vs_reference"))
            if "reference_same_channels" in ref_times:
                row.update(_ratio_keys(model_s, model_more, ref_times["reference_same_channels"],
                                       "reference_same_channels", "ratio_vs_reference_same_channels"))
            results["shapes"][shape_s] = row
            print(json.dumps({shape_s: results["shapes"][shape_s]}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
