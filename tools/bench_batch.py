#!/usr/bin/env python
"""Batch inference over a folder of scans: seconds per scan and memory, serial versus worker prefetching.

Writes ``--num-scans`` synthetic chest phantoms (``--unique`` distinct ones, copied under new names; or uses the
NIfTI files of ``--input``), then runs ``AnomalyPredictor.run`` of the simsid_ct bundle with random weights (speed
and memory do not depend on them; the model config is the bundle's ``train.json`` default, as in
``tools/bench_speed.py``) once per ``--workers`` value, each in a fresh Python process so one run's memory does not
carry into the next. Prints one JSON object; per run:

* ``total_s``, ``s_per_scan`` and ``s_per_scan_after_first_10`` (steady state, without start-up costs);
  ``cpu_s_per_scan`` (CPU seconds of the main process and its workers: what prefetching costs in CPU, and a
  figure that other load on the machine does not change much); ``main_wait_s_per_scan``: the main
  process's time between writing one case and starting the model on the next (loading and preprocessing when
  serial; only waiting for a worker with prefetching);
* ``memory_mib``: after every ``--every`` scans, the resident memory (VmRSS) of the main process, of its worker
  processes, and the proportional set size (PSS, ``/proc/<pid>/smaps_rollup``) of all of them together; PSS
  counts pages shared by a forked worker and its parent once, RSS counts them in both;
* ``peak_mib``: the largest main + workers RSS and PSS seen by a sampler thread every 0.2 s over the whole run.

Memory is flat when ``memory_mib`` at scan 10 and at the last scan agree (``flat_memory`` shows both). Linux only (reads ``/proc``).

    python tools/bench_batch.py --num-scans 100 --size 96 96 64 --workers 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024.0


# ------------------------------------------------------------------------------------------------ memory from /proc
def _status_kib(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _pss_kib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    """Direct and indirect child processes of ``pid``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for t in os.listdir(f"/proc/{p}/task") for k in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def memory_mib() -> dict:
    """RSS of this process and of its children, and PSS of all of them, in MiB."""
    me, kids = os.getpid(), _children(os.getpid())
    return {
        "main_rss": round(_status_kib(me, "VmRSS") / MIB, 1),
        "workers_rss": round(sum(_status_kib(k, "VmRSS") for k in kids) / MIB, 1),
        "total_pss": round((_pss_kib(me) + sum(_pss_kib(k) for k in kids)) / MIB, 1),
        "workers": len(kids),
    }


class PeakSampler(threading.Thread):
    """Largest main + children RSS and PSS, sampled every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_pss = interval, 0.0, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            m = memory_mib()
            self.peak_rss = max(self.peak_rss, m["main_rss"] + m["workers_rss"])
            self.peak_pss = max(self.peak_pss, m["total_pss"])
            self._stop_event.wait(self.interval)

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        return {"total_rss": round(self.peak_rss, 1), "total_pss": round(self.peak_pss, 1)}


# ------------------------------------------------------------------------------------------------ scans and model
def write_scans(folder: Path, num_scans: int, size: list[int], spacing: list[float], unique: int) -> list[str]:
    """``num_scans`` NIfTI scans (int16 HU) of ``unique`` distinct synthetic phantoms; returns their paths."""
    import nibabel as nib
    import numpy as np

    from monai_simsid.data.synthetic import generate_chest_ct

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(num_scans):
        path = folder / f"scan_{k:04d}.nii.gz"
        if k < unique:
            case = generate_chest_ct(size=size, spacing=spacing, seed=k)
            nib.save(nib.Nifti1Image(np.round(case.image).astype(np.int16), np.diag([*spacing, 1.0])), str(path))
        else:
            shutil.copyfile(paths[k % unique], path)
        paths.append(str(path))
    return paths


def build_predictor(num_workers: int, device: str, sw_batch_size: int, overlap: float):
    """The simsid_ct predictor with random weights and a placeholder calibration (no checkpoint needed); its
    preprocessing is the training config's (three HU windows by default), as a trained checkpoint's would be."""
    from monai_simsid.apps import build_preprocessing
    from monai_simsid.apps.inference import AnomalyPredictor
    from monai_simsid.apps.untrained import untrained_simsid
    from monai_simsid.inferers import AnomalyInferer

    net, cal, cfg, pre = untrained_simsid()
    inferer = AnomalyInferer(cfg["roi_size"], cfg["region_grid"], sw_batch_size=sw_batch_size, overlap=overlap,
                             sw_device=device, device="cpu")
    return AnomalyPredictor(net, inferer, build_preprocessing(**pre), cal, "simsid_ct", "bench", device=device,
                            write_png=False, num_workers=num_workers), cfg


def run_once(args) -> dict:
    """One ``AnomalyPredictor.run`` over the folder, sampling memory after every ``args.every`` scans."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = sorted(str(p) for p in Path(args.input).glob("*.nii*"))
    predictor, cfg = build_predictor(args.one_run, args.device, args.sw_batch_size, args.overlap)
    samples, stamps = [], []
    real_write = predictor.write

    def write(pred, output_dir, image_hu=None):  # counts written cases; the predictor itself is unchanged
        folder = real_write(pred, output_dir, image_hu)
        stamps.append(time.perf_counter())
        if len(stamps) % args.every == 0 or len(stamps) == len(paths):
            samples.append({"scans": len(stamps), "s": round(stamps[-1] - t0, 2), **memory_mib()})
        return folder

    real_predict = predictor.predict_prepared
    waits = []

    def predict_prepared(prepared, return_image=False):  # the main process's wait for a prepared case
        if stamps:
            waits.append(time.perf_counter() - stamps[-1])
        return real_predict(prepared, return_image=return_image)

    predictor.write = write
    predictor.predict_prepared = predict_prepared
    out = Path(args.output) / f"workers_{args.one_run}"
    before = memory_mib()
    sampler = PeakSampler()
    sampler.start()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    result = predictor.run([{"image": p} for p in paths], out)
    total = time.perf_counter() - t0
    if result["failed"]:  # a timing of failed cases measures nothing: stop with the first problem
        raise RuntimeError(f"{len(result['failed'])} of {len(paths)} scans failed; first: {result['failed'][0]}")
    cpu = _cpu_s() - cpu0  # the workers have been joined, so their CPU time is in RUSAGE_CHILDREN
    peak = sampler.stop()
    steady = (stamps[-1] - stamps[9]) / (len(stamps) - 10) if len(stamps) > 10 else None
    return {
        "num_workers": args.one_run,
        "scans": len(paths),
        "done": len(result["done"]),
        "failed": len(result["failed"]),
        "total_s": round(total, 1),
        "s_per_scan": round(total / max(len(paths), 1), 3),
        "s_per_scan_after_first_10": None if steady is None else round(steady, 3),
        "cpu_s_per_scan": round(cpu / max(len(paths), 1), 3),
        "main_wait_s_per_scan": round(sum(waits) / max(len(waits), 1), 3),
        "torch_threads": torch.get_num_threads(),
        "memory_before_mib": before,
        "memory_mib": samples,
        "peak_mib": peak,
        "flat_memory": None if not samples else {
            "first": {k: samples[0][k] for k in ("scans", "main_rss", "workers_rss", "total_pss")},
            "last": {k: samples[-1][k] for k in ("scans", "main_rss", "workers_rss", "total_pss")},
        },
        "roi_size": cfg["roi_size"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-scans", type=int, default=100)
    p.add_argument("--size", type=int, nargs=3, default=[96, 96, 64], help="synthetic scan grid (X Y Z)")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], help="synthetic voxel size (mm)")
    p.add_argument("--unique", type=int, default=10, help="distinct phantoms among the synthetic scans")
    p.add_argument("--input", default=None, help="use the NIfTI scans of this folder instead of synthetic ones")
    p.add_argument("--output", default=None, help="output folder (default: a temporary one, removed)")
    p.add_argument("--workers", default="0,1", help="num_workers values to compare, comma-separated")
    p.add_argument("--every", type=int, default=10, help="sample memory after every this many scans")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: torch's default)")
    p.add_argument("--sw_batch_size", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--one-run", type=int, default=None, help=argparse.SUPPRESS)  # internal: one run, this process
    args = p.parse_args(argv)

    if args.one_run is not None:
        print(json.dumps(run_once(args)))
        return 0

    sys.path.insert(0, str(REPO))
    tmp = tempfile.mkdtemp(prefix="bench_batch_")
    try:
        output = args.output or os.path.join(tmp, "out")
        if args.input is None:
            t = time.perf_counter()
            write_scans(Path(tmp) / "scans", args.num_scans, args.size, args.spacing, min(args.unique, args.num_scans))
            print(f"wrote {args.num_scans} scans in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
            args.input = str(Path(tmp) / "scans")
        report = {"input": args.input, "size": None if args.input != str(Path(tmp) / "scans") else args.size,
                  "spacing": args.spacing, "cpu_count": os.cpu_count(), "runs": []}
        for w in (int(v) for v in args.workers.split(",")):
            cmd = [sys.executable, __file__, "--one-run", str(w), "--input", args.input, "--output", output,
                   "--every", str(args.every), "--device", args.device, "--threads", str(args.threads),
                   "--sw_batch_size", str(args.sw_batch_size), "--overlap", str(args.overlap)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                return proc.returncode
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            report["runs"].append(run)
            print(json.dumps({k: run[k] for k in ("num_workers", "total_s", "s_per_scan", "s_per_scan_after_first_10", "cpu_s_per_scan",
                                                  "main_wait_s_per_scan")}),
                  file=sys.stderr, flush=True)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
