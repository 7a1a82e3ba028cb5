#!/usr/bin/env python
"""Post-processing at full resolution: the current steps against the formulations they replaced, in one process.

On a synthetic chest phantom of ``--shape`` voxels (default 512x512x300 at 0.7 x 0.7 x 1.0 mm) and a smooth random
map on the model's 1.5 mm grid, times (best of ``--repeats``, seconds) and prints as JSON:

- ``resample``: the map back to the input grid, :func:`monai_simsid.apps.preprocessing.resample_to_input` (axis-aligned
  grids take ``ndimage.affine_transform``) against the explicit-coordinate slab resampler it falls back to;
- ``components``: the per-component peaks of :func:`postprocess_anomaly_map` (over the foreground voxels) against
  ``scipy.ndimage.maximum`` over the whole label volume, which sorts every voxel;
- ``read_s``: one read of the input (``LoadCT``): what each case saves now that
  :class:`~monai_simsid.apps.inference.CasePreparer` reads the file once instead of twice;
- ``postprocess_total``: the whole :func:`postprocess_anomaly_map` (smoothing, threshold, components) as it is now.

Each pair also reports the largest absolute difference of the results (0 for the exact replacements).

    python tools/bench_postprocess.py [--shape 512x512x300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Smallest wall-clock seconds over ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="512x512x300")
    p.add_argument("--spacing", default="0.7,0.7,1.0")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    spacing = [float(v) for v in args.spacing.split(",")]

    import nibabel as nib
    import torch
    from scipy import ndimage

    from monai_simsid.apps.preprocessing import _resample_slabs, resample_to_input
    from monai_simsid.data.synthetic import generate_chest_ct
    from monai_simsid.transforms.io.array import LoadCT
    from monai_simsid.transforms.post.array import postprocess_anomaly_map

    rng = np.random.default_rng(0)
    out: dict = {"shape": list(shape), "spacing": spacing, "repeats": args.repeats, "torch_threads": torch.get_num_threads()}

    # the map on a 1.5 mm grid covering the scan, and the scan's own (LPS-flipped, as DICOM-derived NIfTI often is) grid
    model_shape = tuple(int(np.ceil(n * s / 1.5)) for n, s in zip(shape, spacing))
    small = ndimage.gaussian_filter(rng.random(tuple(max(4, n // 8) for n in model_shape)).astype(np.float32), 1.0)
    model_map = ndimage.zoom((small - small.min()) / (np.ptp(small) + 1e-6), [a / b for a, b in zip(model_shape, small.shape)], order=1)
    model_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    input_aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    input_aff[:3, 3] = [(shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1], 0.0]
    pred = torch.as_tensor(model_map)[None]
    m = np.linalg.inv(model_aff) @ input_aff
    t_new, fast = best_of(lambda: resample_to_input(pred, model_aff, input_aff, shape), args.repeats)
    t_old, slabs = best_of(lambda: _resample_slabs(model_map, m, shape, 1, 8_000_000), args.repeats)
    out["resample"] = {"now_s": round(t_new, 4), "before_s": round(t_old, 4), "max_abs_diff": float(np.abs(fast - slabs).max())}
    del slabs

    score = np.clip(fast, 0, 1).astype(np.float32)
    fg = score >= np.quantile(score, 0.98)
    comp, n = ndimage.label(fg, structure=ndimage.generate_binary_structure(3, 3))
    idx = np.arange(1, n + 1)

    def peaks_now():
        peaks = np.full(n + 1, -np.inf)
        np.maximum.at(peaks, comp[fg], score[fg])
        return peaks[1:]

    t_new, a = best_of(peaks_now, args.repeats)
    t_old, b = best_of(lambda: np.asarray(ndimage.maximum(score, comp, idx)), args.repeats)
    out["components"] = {"n": int(n), "now_s": round(t_new, 4), "before_s": round(t_old, 4),
                         "max_abs_diff": float(np.abs(a - b).max()) if n else 0.0}
    thr = float(np.quantile(score, 0.98))
    t_pp, _ = best_of(lambda: postprocess_anomaly_map(score, spacing, sigma_mm=1.5, threshold=thr), args.repeats)
    out["postprocess_total_s"] = round(t_pp, 4)

    case = generate_chest_ct(size=64, spacing=[s * n / 64 for s, n in zip(spacing, shape)], seed=0)
    vol = ndimage.zoom(case.image, [n / 64 for n in shape], order=1).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "scan.nii.gz")
        nib.save(nib.Nifti1Image(vol, input_aff), path)
        del vol
        loader = LoadCT(check_ct=False)
        t_read, _ = best_of(lambda: loader(path), args.repeats)
    out["read_s"] = round(t_read, 4)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
