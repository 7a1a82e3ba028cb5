#!/usr/bin/env python
"""Training speed of the simsid_ct bundle: windows per second through its own ``train.json`` trainer.

Builds the bundle's training workflow (MONAI ``ConfigWorkflow``, with ``gpu.json`` merged for ``--preset gpu``) on a
synthetic datalist written to a temporary folder, runs ``--warmup`` + ``--iterations`` iterations with the
validation, checkpoint and calibration handlers left out, and prints one JSON object:

- ``windows_per_s``: training windows (``batch_size * num_samples`` per iteration) per wall-clock second over the
  timed iterations, window sampling included;
- ``step_windows_per_s``: the same counting only the step itself (from the batch's arrival to the end of the
  iteration: forward, losses, backward, optimiser steps);
- ``peak_gpu_mib`` on CUDA, ``peak_rss_mib`` always.

    python tools/bench_train.py --preset gpu --amp --iterations 20       # on a GPU machine
    python tools/bench_train.py --preset cpu --iterations 5 --device cpu

Speed does not depend on the data, so the synthetic phantoms (``--size`` voxels of ``--spacing`` mm) only have to be
large enough for the preset's windows.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

PRESETS = ("cpu", "gpu")


def summarise(step_s: list[float], iter_s: list[float], windows_per_iteration: int) -> dict:
    """Windows per second over the timed iterations: ``iter_s`` are wall-clock seconds per iteration (batch
    included), ``step_s`` the seconds of the step alone."""
    if not iter_s or len(step_s) != len(iter_s):
        raise ValueError("need the same positive number of step and iteration times.")
    n = len(iter_s) * windows_per_iteration
    return {
        "timed_iterations": len(iter_s),
        "windows_per_iteration": windows_per_iteration,
        "s_per_iteration": round(sum(iter_s) / len(iter_s), 4),
        "windows_per_s": round(n / sum(iter_s), 2),
        "step_windows_per_s": round(n / sum(step_s), 2),
    }


def run(args: argparse.Namespace, datalist: str, out_dir: str) -> dict:
    """Build the workflow, run it and time its iterations."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from monai_simsid.apps import preset_config_files

    warmup, iterations = args.warmup, args.iterations
    overrides = {"datalist": datalist, "output_dir": out_dir, "max_epochs": 1, "epoch_length": warmup + iterations,
                 "val_interval": 10**6, "progress": False, "train_handlers": [], "amp": args.amp,
                 "channels_last": args.channels_last, "compile": args.compile, "device": args.device}
    if args.num_samples:
        overrides["num_samples"] = args.num_samples
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.num_workers:
        overrides["train_loader#num_workers"] = args.num_workers
    wf = ConfigWorkflow(config_file=preset_config_files("simsid_ct", args.preset), workflow_type="train", **overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("trainer")
    cuda = str(args.device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    marks: dict[str, float] = {}
    step_s: list[float] = []
    iter_s: list[float] = []

    def batch_ready(engine):
        sync()
        marks["batch"] = time.perf_counter()

    def done(engine):
        sync()
        now = time.perf_counter()
        if engine.state.iteration > warmup:
            step_s.append(now - marks["batch"])
            iter_s.append(now - marks["end"])
        marks["end"] = now

    def start(engine):
        sync()
        marks["end"] = time.perf_counter()

    trainer.add_event_handler(Events.EPOCH_STARTED, start)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, batch_ready)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, done)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    wf.run()
    wpi = int(wf.parser.get_parsed_content("batch_size")) * int(wf.parser.get_parsed_content("num_samples"))
    result = {
        "preset": args.preset,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "amp": bool(args.amp),
        "channels_last": bool(args.channels_last),
        "compile": args.compile,
        "num_workers": int(wf.parser.get_parsed_content("train_loader#num_workers")),
        "roi_size": wf.parser.get_parsed_content("roi_size"),
        "channels": wf.parser.get_parsed_content("channels"),
        **summarise(step_s, iter_s, wpi),
        "final_loss": float(trainer.state.output["loss"]) if isinstance(trainer.state.output, dict) else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
    }
    if cuda:
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    wf.finalize()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (the bundle's amp switch; CUDA only)")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--compile", default=False, help="torch.compile backend, or 'true' for the default")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed first iterations (set-up, cuDNN autotuning)")
    p.add_argument("--num_samples", type=int, default=None, help="windows per scan per iteration (default: preset)")
    p.add_argument("--batch_size", type=int, default=None, help="scans per iteration (default: preset)")
    p.add_argument("--size", type=int, default=128, help="synthetic scan grid (voxels per side)")
    p.add_argument("--spacing", type=float, default=1.5, help="synthetic voxel size (mm)")
    p.add_argument("--num_scans", type=int, default=4, help="synthetic training normals")
    p.add_argument("--num_workers", type=int, default=0, help="training data-loader worker processes")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.num_workers < 0:
        p.error("--iterations must be >= 1, --warmup and --num_workers >= 0")

    from monai_simsid.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        datalist = write_synthetic_dataset(Path(tmp) / "data", num_normal=args.num_scans, num_abnormal=1,
                                           size=args.size, spacing=args.spacing, seed=0, num_val_normal=1)
        print(json.dumps(run(args, str(datalist), str(Path(tmp) / "out")), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
