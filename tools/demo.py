#!/usr/bin/env python
"""End-to-end demo on the embedded synthetic default: generate data, train SimSID-3D, infer, evaluate.

Runs the same ``python -m monai.bundle run`` commands a user would type, and prints them. Everything lands in
``--out`` (default ``demo_output/``):

- ``data/``: synthetic chest CT (normals for training, held-out normals and lesion cases for validation/test);
- ``train/models/model.pt``: the calibrated SimSID-3D checkpoint (plus resume checkpoints, TensorBoard logs);
- ``inference/<case>/``: anomaly map and mask (NIfTI), 3D Slicer segmentation, report JSON, overview PNG;
  ``inference/scores.csv``;
- ``evaluation/metrics.json``: sample, voxel and lesion metrics on the test split.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "simsid_ct" / "configs"


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--num-normal", type=int, default=10)
    p.add_argument("--num-abnormal", type=int, default=6)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--spacing", type=float, default=1.5)
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="the bundle default is the paper's 1e-4; the short CPU demo uses 1e-3")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    py = sys.executable
    bundle_run = [py, "-m", "monai.bundle", "run"]
    env_note = "OMP_NUM_THREADS" in os.environ
    if not env_note:
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

    data = out / "data"
    run([py, str(REPO / "tools" / "make_synthetic_ct.py"), "--out", str(data), "--num-normal", str(args.num_normal),
         "--num-abnormal", str(args.num_abnormal), "--size", str(args.size), "--spacing", str(args.spacing),
         "--seed", str(args.seed), "--montage", str(out / "synthetic_montage.png")])
    datalist = str(data / "datalist.json")
    run(bundle_run + ["--config_file", str(BUNDLE / "train.json"), "--datalist", datalist,
                      "--output_dir", str(out / "train"), "--max_epochs", str(args.max_epochs), "--progress", "False",
                      "--learning_rate", str(args.learning_rate)])
    ckpt = str(out / "train" / "models" / "model.pt")
    run(bundle_run + ["--config_file", str(BUNDLE / "inference.json"), "--ckpt_path", ckpt, "--datalist", datalist,
                      "--output_dir", str(out / "inference")])
    run(bundle_run + ["--config_file", f"['{BUNDLE / 'inference.json'}','{BUNDLE / 'evaluate.json'}']",
                      "--ckpt_path", ckpt, "--datalist", datalist, "--output_dir", str(out / "evaluation")])
    print(f"\nDone. Outputs in {out}:")
    print(f"  model:      {ckpt}")
    print(f"  per case:   {out / 'inference'}/<case>/ (anomaly map/mask NIfTI, .seg.nrrd, report JSON, overview PNG)")
    print(f"  scores:     {out / 'inference' / 'scores.csv'}")
    print(f"  metrics:    {out / 'evaluation' / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
