"""Fit the normative descriptor memory on normal chest CT and write lung anomaly maps for new scans.

:class:`monai_simsid.apps.descriptor_knn.DescriptorKNN` needs no training, only normal scans, and is the project's
best nodule detector on the LIDC crops (``docs/benchmarks.md``; on a large mass the intensity rule still wins). This
tool makes it usable on a user's own data:

- ``fit`` builds the memory from the ``training`` normals of a datalist and calibrates the map on the
  ``validation`` normals (the training normals when the datalist has none; the file records which): 1.0 in the
  written map is the 99.9th percentile of the calibration normals' lung-region scores.
- ``predict`` scores each scan inside the benchmark's lung region and writes ``<case>_descriptor_knn.nii.gz`` in the
  scan's own geometry (shape and affine kept exactly; the computation runs in the closest-RAS voxel order and is
  turned back) plus ``scores.json``: per scan, the mean of the top 0.1% of the calibrated map in the lung region.
  Files are written atomically; a bad input stops with one message naming the file.

Usage::

    python tools/descriptor_knn.py fit --datalist DATA/datalist.json --out OUT/descriptor_knn.npz
    python tools/descriptor_knn.py predict --memory OUT/descriptor_knn.npz --output_dir OUT/maps SCAN [SCAN ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_simsid.apps.descriptor_knn import DescriptorKNN  # noqa: E402
from monai_simsid.apps.rules import lung_region_mask  # noqa: E402
from monai_simsid.data.datalist import case_name, load_datalist  # noqa: E402
from monai_simsid.export.nifti import save_nifti  # noqa: E402
from monai_simsid.inferers.scoring import topk_mean  # noqa: E402
from monai_simsid.transforms.io.array import LoadCT  # noqa: E402
from monai_simsid.utils.atomic import atomic_write_text  # noqa: E402
from monai_simsid.utils.errors import InputError  # noqa: E402

__all__ = ["fit", "load_canonical", "main", "predict"]

CALIBRATION_PERCENTILE = 99.9
TOP_FRACTION = 0.001


def load_canonical(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A CT in HU in closest-RAS voxel order (so axis 2 is axial, as the lung region needs).

    Returns:
        the canonical array, the file's own affine, the orientation that maps the file's voxel order to the canonical
        one (for :func:`from_canonical`), and the canonical spacing in mm.
    """
    image = LoadCT()(path)
    affine = np.asarray(image.affine, dtype=float)
    ornt = nib.orientations.io_orientation(affine)
    arr = nib.orientations.apply_orientation(np.asarray(image[0], dtype=np.float32), ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(zooms[int(ax)]) for ax in ornt[:, 0].argsort())
    return np.ascontiguousarray(arr), affine, ornt, spacing  # type: ignore[return-value]


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Turn a canonical-order array back into the file's voxel order (inverse of :func:`load_canonical`)."""
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(ras, ornt)))


def _score_scan(knn: DescriptorKNN, path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image, affine, ornt, spacing = load_canonical(path)
    lung = lung_region_mask(image, spacing)
    if not lung.any():
        raise InputError(path, "no lung region found (HU < -400 inside the body): is this a chest CT?")
    return knn(image, lung, spacing), lung, affine, ornt


def fit(datalist: str | Path, out: str | Path, **knn_args) -> dict:
    """Fit on the datalist's training normals, calibrate on its validation normals; write ``out`` (.npz)."""
    train = [e for e in load_datalist(datalist, "training") if not e.get("label")]
    if not train:
        raise InputError(datalist, "the 'training' section holds no normal scan (entries without a 'label')")
    calib = [e for e in load_datalist(datalist, "validation", missing_ok=True) if not e.get("label")]
    calibrated_on = "validation normals" if calib else "training normals (optimistic: no validation normals)"
    images, lungs, spacings = [], [], []
    for e in train:
        image, _, _, spacing = load_canonical(e["image"])
        images.append(image)
        lungs.append(lung_region_mask(image, spacing))
        spacings.append(spacing)
        if not lungs[-1].any():
            raise InputError(e["image"], "no lung region found (HU < -400 inside the body): is this a chest CT?")
    knn = DescriptorKNN(**knn_args).fit(images, lungs, spacings)
    del images, lungs
    scores = []
    for e in calib or train:
        score, lung = _score_scan(knn, e["image"])[:2]
        scores.append(score[lung])
    unit = float(np.percentile(np.concatenate(scores), CALIBRATION_PERCENTILE))
    info = {"unit": max(unit, 1e-6), "calibrated_on": calibrated_on, "n_training": len(train), "n_calibration": len(calib or train)}
    knn.save(out, **info)
    return info


def predict(memory: str | Path, images: Sequence[str | Path], output_dir: str | Path) -> list[dict]:
    """Write each scan's calibrated map and ``scores.json`` into ``output_dir``; return the score records."""
    knn, info = DescriptorKNN.load(memory)
    if not info.get("unit", 0) > 0:
        raise InputError(memory, "the memory file holds no calibration (write it with 'fit')")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in images:
        score, lung, affine, ornt = _score_scan(knn, path)
        calibrated = (score / np.float32(info["unit"])).astype(np.float32)
        scan = topk_mean(torch.from_numpy(calibrated), torch.from_numpy(lung), TOP_FRACTION, min_k=1)
        name = case_name(path)
        save_nifti(from_canonical(calibrated, ornt), affine, out / f"{name}_descriptor_knn.nii.gz")
        records.append({"case": name, "image": str(path), "score": scan})
    atomic_write_text(out / "scores.json", json.dumps({"memory": str(memory), **info, "cases": records}, indent=2))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one message on a bad input)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="build and calibrate the memory from a datalist's normal scans")
    f.add_argument("--datalist", required=True)
    f.add_argument("--out", required=True, help="the memory file (.npz)")
    f.add_argument("--k", type=int, default=10)
    f.add_argument("--bank-size", type=int, default=120_000)
    r = sub.add_parser("predict", help="write calibrated lung anomaly maps and scores")
    r.add_argument("--memory", required=True)
    r.add_argument("--output_dir", required=True)
    r.add_argument("images", nargs="+")
    args = p.parse_args(argv)
    try:
        if args.command == "fit":
            print(json.dumps(fit(args.datalist, args.out, k=args.k, bank_size=args.bank_size)))
        else:
            for rec in predict(args.memory, args.images, args.output_dir):
                print(f"{rec['case']}: score {rec['score']:.3f}")
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
