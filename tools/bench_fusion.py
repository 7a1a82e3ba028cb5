#!/usr/bin/env python
"""Time of the descriptor fusion at inference: whole predictions of a scan, and the descriptor term alone.

For each simsid_ct checkpoint given, loads the bundle's predictor, prepares the scan once, then times (best of
``--repeats`` after one warm-up, seconds) ``predict_prepared`` (the model, the fusion and the post-processing) and
``DescriptorFusion.descriptor_term`` on its own, with the lung-envelope depth it needs. Prints JSON, one entry per
checkpoint, with the fusion's search grid and region as stored (a checkpoint calibrated by simsid_ct 0.7.0 searches
every voxel and recomputes the lung region at full resolution).

    OMP_NUM_THREADS=2 python tools/bench_fusion.py --ckpts OLD/model.pt,NEW/model.pt \
        [--image ../shared/data/ct/lesion/lung2_ct.nii.gz] [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "lesion" / "lung2_ct.nii.gz"

# the timing helper of tools/bench_postprocess.py (loaded by path: tools/ is not a package)
_spec = importlib.util.spec_from_file_location("simsid_bench_postprocess", Path(__file__).with_name("bench_postprocess.py"))
_postprocess = sys.modules.setdefault("simsid_bench_postprocess", importlib.util.module_from_spec(_spec))
if not hasattr(_postprocess, "best_of"):
    _spec.loader.exec_module(_postprocess)


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    return _postprocess.best_of(fn, repeats)[0]


def time_checkpoint(ckpt: str, image: str, repeats: int) -> dict:
    """Seconds of a whole prediction and of the descriptor term alone for one checkpoint."""
    from monai_simsid.apps.inference import load_predictor
    from monai_simsid.apps.normative import affine_spacing, lung_depth_from_windows
    from monai_simsid.apps.preprocessing import input_hu_windows

    predictor = load_predictor("simsid_ct", ckpt, "cpu")
    fusion = predictor.fusion
    if fusion is None:
        raise SystemExit(f"{ckpt}: the checkpoint has no descriptor fusion (calibrate it with calibrate.json).")
    prepared = predictor.prepare({"image": image})
    spacing = affine_spacing(prepared["model_affine"])
    depth = lung_depth_from_windows(prepared["image"], input_hu_windows(predictor.preprocessing_settings), spacing)
    term_s = _best(lambda: fusion.descriptor_term(prepared["image"], spacing, depth), repeats)
    total_s = _best(lambda: predictor.predict_prepared(dict(prepared)), repeats)
    _, region = fusion.descriptor_term(prepared["image"], spacing, depth)
    return {
        "ckpt": ckpt,
        "threads": torch.get_num_threads(),
        "search_mm": fusion.search_mm,
        "region": fusion.region,
        "model_grid": list(prepared["image"].shape[1:]),
        "region_voxels": int(region.sum()),
        "predict_s": round(total_s, 2),
        "descriptor_term_s": round(term_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", required=True, help="comma-separated simsid_ct checkpoints with a fusion")
    p.add_argument("--image", default=str(DEFAULT_IMAGE))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if not Path(args.image).is_file():
        raise SystemExit(f"{args.image}: no such scan.")
    print(json.dumps([time_checkpoint(c, args.image, args.repeats) for c in args.ckpts.split(",")], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
