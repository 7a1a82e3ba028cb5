#!/usr/bin/env python
"""Real-data benchmark: evaluate anomaly-map methods side by side on the shared CT data.

Example::

    python tools/benchmark.py --data-dir ../shared/data/ct --methods intensity_rule,local_zscore \\
        --out docs/benchmark_results.json

Parts (each method runs on the same data, in the file's voxel grid reoriented to the closest RAS axes):

- **lung2** (``lesion/lung2_ct.nii.gz`` + ``lung2_lesion.nii.gz``): voxel AUROC and AP inside the benchmark's lung
  region (:func:`monai_simsid.apps.rules.lung_region_mask`), best Dice (an *oracle*: its threshold is chosen on
  the ground truth), whether the top-scoring voxel inside the body lies on the tumour and its distance to the tumour
  in mm, seconds per scan (the method's own call, lung region included) and the process's peak RSS so far.
  Ties: every voxel within ``1e-6`` (relative) of the maximum counts as a top voxel; "on tumour" is the fraction of
  them on the tumour (the expected hit of a random tie-break), shown "yes" when >= 0.5, and the distance is their
  mean distance. For a method that writes a report (a trained bundle, ``model:...``), also the report itself: whether
  its first finding (the component with the highest peak after the bundle's post-processing: smoothing, the
  calibrated threshold, the minimum volume) has its peak voxel on the tumour, and the tumour's rank among the
  findings (the first finding that overlaps it; "not among" when none does). The top voxel of the raw map may lie
  in a component too small to be a finding.
- **LIDC crops** (``lidc_nodules/image/X`` pairs with ``lidc_nodules/mask/X``): per-crop voxel AUROC (nodule vs the
  rest of the crop), averaged over crops, and the detection rate per nodule diameter bin (< 6, 6-10, 10-20,
  > 20 mm, ``diameter_mm`` of ``nodules.csv``). A nodule is *detected* when the top-scoring voxel of its crop lies
  inside its mask (ties as above: the fraction of tied top voxels inside). Crops hold no body outline: the rules use
  :func:`monai_simsid.apps.rules.crop_lung_region_mask` (HU < -400 closed by 20 mm, dilated by 5 mm, no body/skin
  step; in practice nearly the whole crop).
- **Normal scans** (sample level): the scan score (mean of the top 0.1% of the map inside the lung region) of each
  normal chest scan (``normal/chest_*``) and of lung2, and the sample AUROC (normals vs lung2). A method fitted on
  normal scans (``local_zscore``, ``descriptor_knn``, ``descriptor_knn_depth``) is fitted leave-one-out when scoring
  a normal scan, on all of them for lung2 and for the LIDC crops, and its map is divided by the 99.9th percentile of
  its map over its own training normals, so that the scores of different fits share a scale. A model method with
  ``{host}`` in its checkpoint path (one checkpoint per held-out normal) is scored fold by fold: each fold's
  checkpoint scores its held-out normal and lung2, and lung2 is compared with that normal (the share of folds where
  it scores higher, and the pooled sample AUROC), also with the bundle's own scan score and verdict. Such a method
  has no checkpoint for the lung2 and lidc parts, which skip it.

- **Transplanted nodules** (``transplant``, run only when asked for): whole-scan detection of small real nodules.
  Five LIDC nodules per diameter bin (a seeded draw) are each put into one normal chest scan, in turn, at a seeded
  site at least 10 mm (plus the nodule's radius) inside its lung region and in parenchyma; the nodule's density is
  added where it exceeds the host's, over a soft edge (:func:`monai_simsid.data.lesions.transplant_lesion`). A method
  fitted on normal scans is fitted on the other normals; a model method reads ``{host}`` in its checkpoint path as
  the host's name (its leave-one-out checkpoint). Per scan: lung-region voxel AUROC and AP, and detection (the top
  voxel of the body in the nodule), by diameter; for a method with a report, the share of scans whose report's
  first finding has its peak on the nodule. At the sample level, each case is paired with its host scan without the
  nodule (re-sliced like the cases when they are), scored by the same held-out fit: the share of cases scored above
  their host and the sample AUROC of the hosts against the cases, with the benchmark's scan score (top 0.1% in the
  host's lung region) and with the method's own (a bundle's raw scan score, and the share it calls anomalous).
  ``--transplant-site pleural`` puts the same nodules against the border of the lung envelope (juxtapleural, labelled
  where they raised the host by more than 100 HU); ``--transplant-thickness MM`` re-acquires every case with axial
  slices of MM mm on its own grid (a thick-slice series such as lung2's 5 mm).

``lung_window_constant`` is a control for learned lung-window maps: ``|x - c|`` in the lung window, the error map of a
model that reconstructs the constant -850 HU (:func:`monai_simsid.apps.rules.lung_window_constant_map`).
``lung_window_constant+descriptor_knn_depth`` and ``intensity_rule+descriptor_knn_depth`` are controls for simsid_ct's
descriptor fusion: the same mean with the descriptor memory, with a map that needs no model in place of the model's.
``descriptor_knn_hu`` and ``descriptor_knn_depth_hu`` are the memories without their Hessian shape features (smoothed
HU only), for the ablation.

Adding a method
---------------
Register a factory in :data:`METHODS` (or handle a name prefix in :func:`resolve_method`). A factory takes a
:class:`BenchmarkContext` and returns a *MapFn* ``(image_path, image_hu, affine, spacing) -> float32 map`` of the
input's shape (higher = more anomalous). The context says which normal scans the method may fit on
(``ctx.training_paths``, already leave-one-out) and whether the inputs are whole scans or small lung VOIs
(``ctx.region``). Learned models are ``model:<bundle_name>:<ckpt_path>[:key=value]`` (a trained checkpoint through
``monai_simsid.apps.inference.predict_map``; the optional ``key=value`` overrides one model-config entry, e.g.
``map_mode=head``).

When the data folder is absent the tool prints a message and exits with status 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

try:
    import monai_simsid  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_simsid.apps.rules import (
    LUNG_REGION_DILATION_MM,
    LocalZScoreRule,
    crop_lung_region_mask,
    intensity_rule_map,
    lung_region_mask,
    lung_window_constant_map,
)
from monai_simsid.apps.calibration import voxel_statistics
from monai_simsid.apps.descriptor_knn import DescriptorKNN
from monai_simsid.export.report import to_jsonable
from monai_simsid.metrics import compute_best_dice, compute_sample_auroc, compute_voxel_ap, compute_voxel_auroc
from monai_simsid.transforms.acquisition.array import simulate_slice_thickness
from monai_simsid.transforms.body.array import compute_body_mask

__all__ = [
    "DEFAULT_DATA_DIR",
    "DIAMETER_BINS",
    "METHODS",
    "PARTS",
    "TRANSPLANT_PER_BIN",
    "BenchmarkContext",
    "MapFn",
    "MapOutput",
    "build_parser",
    "evaluate_lidc",
    "evaluate_lung2",
    "evaluate_normals",
    "evaluate_transplant",
    "format_markdown",
    "load_volume",
    "main",
    "normal_scan",
    "report_figures",
    "resolve_method",
    "run_benchmark",
    "scan_score",
    "top_voxel_hit",
    "transplant_cases",
    "transplant_sample_level",
]

#: ``../shared/data/ct`` next to the repository.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"
#: nodule diameter bins in mm: ``[lo, hi)``.
DIAMETER_BINS: tuple[tuple[str, float, float], ...] = (
    ("<6", 0.0, 6.0),
    ("6-10", 6.0, 10.0),
    ("10-20", 10.0, 20.0),
    (">20", 20.0, float("inf")),
)
#: the parts :func:`run_benchmark` can run (``transplant`` only when asked for)
PARTS = ("lung2", "lidc", "normals", "transplant")
#: where the transplant part puts its nodules: deep in the lung, or against the envelope's border (juxtapleural)
TRANSPLANT_SITES = ("deep", "pleural")
#: LIDC nodules per diameter bin that the transplant part puts into the normal scans
TRANSPLANT_PER_BIN = 5
TOP_FRACTION = 0.001  # scan score: mean of the top 0.1% voxels of the lung region
TIE_RTOL = 1e-6

#: ``(image_path, image_hu, affine, spacing) -> float32 anomaly map`` of the image's shape, or a :class:`MapOutput`
#: (a method that also writes a report, e.g. a trained bundle).
MapFn = Callable[[Path, np.ndarray, np.ndarray, tuple], "np.ndarray | MapOutput"]


class MapOutput(NamedTuple):
    """A method's map with its report, all in the benchmark's canonical voxel order.

    Attributes:
        map: float32 anomaly map of the image's shape.
        labels: integer component map of the report's findings (0 = none), or ``None`` for a method without a report.
        finding_ids: the findings' label values, in the report's order (first = the report's top finding).
        finding_peaks: each finding's peak voxel (canonical indices), in the same order.
        scan_score: the method's own raw scan score (a bundle's ``raw_score``), or ``None``.
        scan_label: the method's own verdict on the scan (``"normal"`` or ``"anomalous"``), or ``None``.
    """

    map: np.ndarray
    labels: np.ndarray | None = None
    finding_ids: tuple[int, ...] = ()
    finding_peaks: tuple[tuple[int, int, int], ...] = ()
    scan_score: float | None = None
    scan_label: str | None = None


def load_volume(path: str | Path, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load a NIfTI volume reoriented to the closest RAS axes (no resampling).

    Returns:
        ``(array, affine, spacing)`` with the array in ``dtype`` and the spacing in mm.
    """
    img = nib.as_closest_canonical(nib.load(str(path)))
    arr = np.asarray(img.dataobj, dtype=dtype)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    return arr, np.asarray(img.affine, dtype=float), spacing  # type: ignore[return-value]


def normal_scan(cache: dict, path: Path) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray]:
    """``(image_hu, lung_region, spacing, affine)`` of a normal scan, loaded once per run into ``cache``."""
    key = ("normal", str(path))
    if key not in cache:
        img, affine, sp = load_volume(path)
        cache[key] = (img, lung_region_mask(img, sp), sp, affine)
    return cache[key]


@dataclass
class BenchmarkContext:
    """What a method factory may use.

    Attributes:
        data_dir: the shared CT folder.
        training_paths: normal scans the method may fit on (leave-one-out already applied).
        region: ``"scan"`` for whole chest scans, ``"crop"`` for small VOIs inside the lung (LIDC).
        cache: shared between contexts of one run (e.g. loaded normal scans and their lung regions).
        held_out: the normal scan left out of ``training_paths`` (its name without ``.nii.gz``), when there is one: a
            model method whose checkpoint path holds ``{host}`` reads the checkpoint trained without it.
    """

    data_dir: Path
    training_paths: list[Path]
    region: str = "scan"
    cache: dict = field(default_factory=dict)
    held_out: str | None = None

    def lung_mask(self, image_hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """The benchmark's lung region for this context's kind of input."""
        if self.region == "crop":
            return crop_lung_region_mask(image_hu, spacing)
        return lung_region_mask(image_hu, spacing)

    def training_data(self) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
        """``(image_hu, lung_region, spacing)`` of each training normal scan, loaded once per run."""
        return [normal_scan(self.cache, p)[:3] for p in self.training_paths]


def _intensity_rule(ctx: BenchmarkContext) -> MapFn:
    def fn(path, image_hu, affine, spacing):
        return intensity_rule_map(image_hu, ctx.lung_mask(image_hu, spacing), spacing)

    return fn


def _lung_window_constant(ctx: BenchmarkContext) -> MapFn:
    def fn(path, image_hu, affine, spacing):
        return lung_window_constant_map(image_hu, ctx.lung_mask(image_hu, spacing))

    return fn


def _fitted_on_normals(name: str, fit: Callable[[list, list, list], Callable]) -> Callable[[BenchmarkContext], MapFn]:
    """Factory of a method fitted on the context's normal scans (``fit(images, lung_regions, spacings)`` returns
    ``scorer(image_hu, lung_region, spacing)``), fitted once per set of training scans and scored in the lung region.

    The map is divided by the 99.9th percentile of the scorer over its own training normals' lung regions (a unit
    from normal data only), so that the scan scores of different leave-one-out fits share one scale; the voxel-level
    metrics of a scan do not change (one positive factor per fit).
    """

    def factory(ctx: BenchmarkContext) -> MapFn:
        key = (name, tuple(str(p) for p in ctx.training_paths))
        if key not in ctx.cache:
            data = ctx.training_data()
            if not data:
                raise ValueError(f"{name} needs at least one normal training scan.")
            imgs, lungs, sps = zip(*data)
            scorer = fit(list(imgs), list(lungs), list(sps))
            values = np.concatenate([scorer(i, m, s)[m] for i, m, s in data])
            unit = float(np.percentile(values, 99.9)) if values.size else 1.0
            ctx.cache[key] = (scorer, unit if unit > 0 else 1.0)
        scorer, unit = ctx.cache[key]

        def fn(path, image_hu, affine, spacing):
            return scorer(image_hu, ctx.lung_mask(image_hu, spacing), spacing) / np.float32(unit)

        return fn

    return factory


_local_zscore = _fitted_on_normals("local_zscore", lambda i, m, s: LocalZScoreRule().fit(i, m, s, window_mm=5.0))


def _descriptor_methods(suffix: str, **knn_args: Any) -> tuple[Callable, Callable]:
    """``descriptor_knn<suffix>`` and ``descriptor_knn_depth<suffix>``: the memory with ``knn_args``, without and
    with the lung-envelope depth. A crop has no envelope, so the depth method gives crops the plain memory."""
    plain = _fitted_on_normals("descriptor_knn" + suffix, lambda i, m, s: DescriptorKNN(**knn_args).fit(i, m, s))
    scans = _fitted_on_normals(
        "descriptor_knn_depth" + suffix, lambda i, m, s: DescriptorKNN(context="lung_depth", **knn_args).fit(i, m, s)
    )

    def depth(ctx: BenchmarkContext) -> MapFn:
        return (plain if ctx.region == "crop" else scans)(ctx)

    return plain, depth


_descriptor_knn, _descriptor_knn_depth = _descriptor_methods("")
#: ablation: smoothed HU only, without the Hessian shape features (the memory before simsid_ct 0.10.0)
_descriptor_knn_hu, _descriptor_knn_depth_hu = _descriptor_methods("_hu", shape_scales_mm=())


def _fused_with_descriptor(name: str, base: Callable[[BenchmarkContext], MapFn]) -> Callable[[BenchmarkContext], MapFn]:
    """Factory of the mean of a map that needs no model and ``descriptor_knn_depth``, in the form of simsid_ct's
    descriptor fusion (:class:`~monai_simsid.apps.fusion.DescriptorFusion`): the base map as
    ``2 * sigmoid((b - t) / s)``, with ``t`` and ``s`` its voxel threshold and scale over the training normals' lung
    regions (:func:`~monai_simsid.apps.calibration.voxel_statistics`), averaged with the descriptor map in units of its
    normal 99.9th percentile. A control for the fused SimSID-3D map: what the fusion gives without a model."""

    def factory(ctx: BenchmarkContext) -> MapFn:
        base_fn, desc_fn = base(ctx), _descriptor_knn_depth(ctx)
        key = (name, tuple(str(p) for p in ctx.training_paths))
        if key not in ctx.cache:
            values = np.concatenate([base_fn(None, i, None, s)[m] for i, m, s in ctx.training_data()])
            t, _, scale = voxel_statistics(values, 0.001)
            ctx.cache[key] = (t, scale)
        t, scale = ctx.cache[key]

        def fn(path, image_hu, affine, spacing):
            b = base_fn(path, image_hu, affine, spacing).astype(np.float64)
            term = 2.0 / (1.0 + np.exp(-np.clip((b - t) / scale, -50.0, 50.0)))
            return (0.5 * (term + desc_fn(path, image_hu, affine, spacing))).astype(np.float32)

        return fn

    return factory


#: method name -> factory ``(BenchmarkContext) -> MapFn``.
METHODS: dict[str, Callable[[BenchmarkContext], MapFn]] = {
    "intensity_rule": _intensity_rule,
    "lung_window_constant": _lung_window_constant,
    "local_zscore": _local_zscore,
    "descriptor_knn": _descriptor_knn,
    "descriptor_knn_depth": _descriptor_knn_depth,
    "descriptor_knn_hu": _descriptor_knn_hu,
    "descriptor_knn_depth_hu": _descriptor_knn_depth_hu,
    "lung_window_constant+descriptor_knn_depth": _fused_with_descriptor("constant_fused", _lung_window_constant),
    "intensity_rule+descriptor_knn_depth": _fused_with_descriptor("rule_fused", _intensity_rule),
}


def _literal(text: str) -> Any:
    """``"2"`` -> 2, ``"true"`` -> True, ``"[1, 2]"`` -> [1, 2]; anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _model_method(spec: str) -> Callable[[BenchmarkContext], MapFn]:
    """Factory of ``model:<bundle_name>:<ckpt_path>``: a trained bundle's calibrated map, in the benchmark's
    canonical (closest-RAS) voxel order. The model is whatever the checkpoint was trained on: leave-one-out does not
    apply, so a normal scan that was in its training set is scored optimistically (the tables say so)."""
    parts = spec.split(":", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise ValueError(f"a model method must be 'model:<bundle_name>:<ckpt_path>', got {spec!r}.")
    bundle, ckpt = parts[1], parts[2]
    if "{host}" not in ckpt and not Path(ckpt).is_file():  # before any scan is scored, not after the other methods
        raise ValueError(f"{ckpt}: checkpoint file not found (method {spec!r}).")
    # optional model overrides, e.g. model:simsid_ct:ckpt.pt:map_mode=head
    model_overrides = dict(kv.split("=", 1) for kv in parts[3].split(",")) if len(parts) == 4 and parts[3] else {}
    model_overrides = {k: _literal(v) for k, v in model_overrides.items()}

    def factory(ctx: BenchmarkContext) -> MapFn:
        from monai_simsid.apps.inference import predict_map

        path_of = ckpt
        if "{host}" in ckpt:  # one checkpoint per held-out normal scan (leave-one-out)
            if ctx.held_out is None:
                raise ValueError(f"{spec!r}: '{{host}}' needs a held-out normal scan (the transplant part only).")
            path_of = ckpt.replace("{host}", ctx.held_out)
            if not Path(path_of).is_file():
                raise ValueError(f"{path_of}: checkpoint file not found (method {spec!r}).")

        def fn(path, image_hu, affine, spacing):
            # a nodule crop has no body outline and sits inside the lung: treat the whole crop as body and pad it
            # with its own edge values (air padding would make every crop border look abnormal)
            crop = {"body_mode": "whole", "image_pad_mode": "replicate"} if ctx.region == "crop" else {}
            pred = predict_map(
                bundle, path_of, path, device=os.environ.get("BENCHMARK_DEVICE"), check_ct=ctx.region != "crop",
                preprocessing_overrides=crop, model_overrides=model_overrides,
            )
            canon = nib.as_closest_canonical(nib.Nifti1Image(pred.anomaly_map, pred.affine))
            out = np.asarray(canon.dataobj, dtype=np.float32)
            if out.shape != image_hu.shape:
                raise RuntimeError(f"{path}: model map shape {out.shape} differs from the image {image_hu.shape}")
            labels = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(pred.mask, pred.affine)).dataobj)
            to_voxel = np.linalg.inv(canon.affine)
            peaks = tuple(
                tuple(int(v) for v in np.clip(np.rint((to_voxel @ np.r_[f["peak_ras_mm"], 1.0])[:3]), 0, np.array(out.shape) - 1))
                for f in pred.findings
            )
            ids = tuple(int(f["id"]) for f in pred.findings)
            return MapOutput(out, labels, ids, peaks, float(pred.raw_score), pred.label)

        return fn

    return factory


def resolve_method(name: str) -> Callable[[BenchmarkContext], MapFn]:
    """The factory of a method name: a key of :data:`METHODS` or ``model:<bundle_name>:<ckpt_path>``.

    Raises:
        ValueError: on an unknown name.
    """
    if name in METHODS:
        return METHODS[name]
    if name.startswith("model:"):
        return _model_method(name)
    raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)} or 'model:<bundle_name>:<ckpt_path>'.")


def _peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(kb) / (1024.0 * 1024.0) if sys.platform == "darwin" else float(kb) / 1024.0


def _run_map(fn: MapFn, path: Path, image: np.ndarray, affine: np.ndarray, spacing: tuple) -> tuple[MapOutput, float]:
    t0 = time.perf_counter()
    res = fn(path, image, affine, spacing)
    dt = time.perf_counter() - t0
    res = res if isinstance(res, MapOutput) else MapOutput(res)
    out = np.asarray(res.map, dtype=np.float32)
    if out.shape != image.shape:
        raise ValueError(f"the method returned a map of shape {out.shape} for an image of shape {image.shape}.")
    if not np.all(np.isfinite(out)):
        raise ValueError("the method returned non-finite scores.")
    if res.labels is not None and np.shape(res.labels) != image.shape:
        raise ValueError(f"the method returned labels of shape {np.shape(res.labels)} for an image of shape {image.shape}.")
    if res.scan_score is not None and not np.isfinite(res.scan_score):
        raise ValueError("the method returned a non-finite scan score.")
    return res._replace(map=out), dt


def report_figures(res: MapOutput, lesion: np.ndarray) -> dict[str, Any]:
    """How a method's report treats the lesion: ``{}`` for a method without a report, else ``n_findings``,
    ``first_finding_on_lesion`` (the report's top finding has its peak voxel in the lesion) and
    ``lesion_finding_rank`` (1-based rank of the first finding that overlaps the lesion; ``None``: no finding does)."""
    if res.labels is None:
        return {}
    rank = None
    for i, fid in enumerate(res.finding_ids):
        if np.any(lesion[res.labels == fid]):
            rank = i + 1
            break
    first = bool(res.finding_peaks) and bool(lesion[tuple(res.finding_peaks[0])])
    return {"n_findings": len(res.finding_ids), "first_finding_on_lesion": first, "lesion_finding_rank": rank}


def top_voxels(score: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the voxels tied (within a relative ``1e-6``) at the map's maximum inside ``region``."""
    s = score if region is None else np.where(region, score, -np.inf)
    top = float(s.max())
    if not np.isfinite(top):
        return np.zeros(score.shape, dtype=bool)
    return s >= top - TIE_RTOL * max(1.0, abs(top))


def top_voxel_hit(score: np.ndarray, lesion: np.ndarray, region: np.ndarray | None = None) -> float:
    """Fraction of the top-scoring voxels (ties included) that lie in ``lesion`` (0 or 1 without ties)."""
    top = top_voxels(score, region)
    n = int(top.sum())
    return float(np.count_nonzero(top & lesion)) / n if n else 0.0


def scan_score(score: np.ndarray, region: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean of the top ``fraction`` of the map's voxels inside ``region`` (at least one voxel)."""
    v = score[region] if region.any() else score.reshape(-1)
    k = max(1, int(round(fraction * v.size)))
    return float(np.partition(v, v.size - k)[v.size - k :].mean())


def _paths(data_dir: Path) -> dict[str, Any]:
    return {
        "lung2": data_dir / "lesion" / "lung2_ct.nii.gz",
        "lung2_mask": data_dir / "lesion" / "lung2_lesion.nii.gz",
        "normals": sorted((data_dir / "normal").glob("chest_*.nii.gz")),
        "lidc": data_dir / "lidc_nodules",
    }


def _lung2_regions(cache: dict, path: Path, image: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """lung2's body mask and lung region, computed once per run."""
    key = ("lung2_regions", str(path))
    if key not in cache:
        body = compute_body_mask(image, spacing)
        cache[key] = (body, lung_region_mask(image, spacing, body=body))
    return cache[key]


def evaluate_lung2(
    data_dir: str | Path, method: str, ctx: BenchmarkContext | None = None, overview_dir: str | Path | None = None
) -> dict[str, Any]:
    """Voxel-level evaluation of one method on lung2 (see the module docstring).

    Args:
        data_dir: the shared CT folder.
        method: a method name (see :func:`resolve_method`).
        ctx: the context (default: fitted on all normal chest scans, whole-scan region).
        overview_dir: if given, write ``lung2_<method>.png`` there.

    Returns:
        a JSON-serialisable dict of figures (``None`` where a metric is undefined, with a ``*_reason``).
    """
    data_dir = Path(data_dir)
    p = _paths(data_dir)
    if ctx is None:
        ctx = BenchmarkContext(data_dir, list(p["normals"]))
    image, affine, spacing = load_volume(p["lung2"])
    lesion = load_volume(p["lung2_mask"], dtype=np.float32)[0] > 0.5
    body, lung = _lung2_regions(ctx.cache, p["lung2"], image, spacing)
    fn = resolve_method(method)(ctx)
    res, seconds = _run_map(fn, p["lung2"], image, affine, spacing)
    score = res.map
    auroc = compute_voxel_auroc(score, lesion, lung)
    ap = compute_voxel_ap(score, lesion, lung)
    dice = compute_best_dice(score, lesion, lung)
    top = top_voxels(score, body)
    n_top = int(top.sum())
    hit = float(np.count_nonzero(top & lesion)) / max(n_top, 1)
    dist = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    out = {
        "method": method,
        "lung_auroc": auroc.value,
        "lung_ap": ap.value,
        "best_dice_oracle": dice.value,
        "best_dice_threshold": dice.threshold,
        "top_voxel_on_tumour": hit,
        "top_voxel_distance_mm": float(dist[top].mean()) if n_top else None,
        "top_voxel_ties": n_top,
        "seconds_per_scan": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "lung_region_voxels": int(lung.sum()),
        "tumour_in_lung_region": float(np.count_nonzero(lesion & lung)) / max(int(lesion.sum()), 1),
        "scan_score": scan_score(score, lung),
        **report_figures(res, lesion),
    }
    for name, r in (("lung_auroc", auroc), ("lung_ap", ap), ("best_dice_oracle", dice)):
        if r.value is None:
            out[f"{name}_reason"] = r.reason
    if overview_dir is not None:
        _overview(image, score, affine, Path(overview_dir) / f"lung2_{_safe(method)}.png", "lung2", method, top)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _overview(image, score, affine, path: Path, case: str, method: str, top: np.ndarray | None = None) -> None:
    from monai_simsid.export.overview import save_overview_png

    hi = float(score.max())
    shown = score / hi if hi > 0 else score
    focus = None
    if top is not None and top.any():
        focus = [int(i[0]) for i in np.nonzero(top)]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_overview_png(image, shown, affine, path, focus_voxel=focus, case=case, label=f"{method} (map / max)")


def _read_nodules(lidc_dir: Path) -> list[dict[str, Any]]:
    """Crops of ``lidc_nodules`` (sorted by image name) with their mask path and diameter."""
    rows: dict[str, dict[str, Any]] = {}
    csv_path = lidc_dir / "nodules.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            for r in csv.DictReader(f):
                rows[Path(r["image"]).name] = r
    out = []
    for img in sorted((lidc_dir / "image").glob("*.nii*")):
        mask = lidc_dir / "mask" / img.name
        if not mask.is_file():
            continue
        r = rows.get(img.name, {})
        try:
            diameter = float(r.get("diameter_mm", "nan"))
        except ValueError:
            diameter = float("nan")
        out.append({"name": img.name, "image": img, "mask": mask, "diameter_mm": diameter})
    return out


def _detection_by_diameter(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Detection rate and count per nodule diameter bin of per-nodule records (``diameter_mm``, ``detected``)."""
    bins = {}
    for label, lo, hi in DIAMETER_BINS:
        hits = [r["detected"] for r in records if lo <= r["diameter_mm"] < hi]
        bins[label] = {"n": len(hits), "rate": float(np.mean(hits)) if hits else None}
    return bins


def evaluate_lidc(
    data_dir: str | Path, method: str, ctx: BenchmarkContext | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Per-crop voxel AUROC and top-voxel detection by diameter on the LIDC nodule crops (see the module docstring).

    Args:
        data_dir: the shared CT folder.
        method: a method name.
        ctx: the context (default: fitted on all normal chest scans, crop region).
        limit: evaluate only the first ``limit`` crops (sorted by name).

    Returns:
        a JSON-serialisable dict; ``per_crop`` holds one record per crop.
    """
    data_dir = Path(data_dir)
    p = _paths(data_dir)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    if ctx is None:
        ctx = BenchmarkContext(data_dir, list(p["normals"]), region="crop")
    crops = _read_nodules(p["lidc"])[: limit if limit else None]
    fn = resolve_method(method)(ctx)
    records, seconds = [], 0.0
    for c in crops:
        image, affine, spacing = load_volume(c["image"])
        nodule = load_volume(c["mask"], dtype=np.float32)[0] > 0.5
        if nodule.shape != image.shape:
            raise ValueError(f"{c['name']}: mask shape {nodule.shape} differs from image shape {image.shape}.")
        res, dt = _run_map(fn, c["image"], image, affine, spacing)
        score = res.map
        seconds += dt
        auroc = compute_voxel_auroc(score, nodule)
        records.append(
            {
                "name": c["name"],
                "diameter_mm": c["diameter_mm"],
                "auroc": auroc.value,
                "detected": top_voxel_hit(score, nodule),
            }
        )
    aurocs = [r["auroc"] for r in records if r["auroc"] is not None]
    bins = _detection_by_diameter(records)
    return {
        "method": method,
        "n_crops": len(records),
        "n_auroc_defined": len(aurocs),
        "mean_crop_auroc": float(np.mean(aurocs)) if aurocs else None,
        "detection_rate": float(np.mean([r["detected"] for r in records])) if records else None,
        "detection_by_diameter": bins,
        "seconds_per_crop": seconds / max(len(records), 1),
        "per_crop": records,
    }


def evaluate_normals(
    data_dir: str | Path,
    method: str,
    cache: dict | None = None,
    lung2_score: float | None = None,
    overview_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Scan scores of the normal chest scans (leave-one-out fitting) and the sample AUROC against lung2.

    Args:
        data_dir: the shared CT folder.
        method: a method name.
        cache: run-wide cache shared with the other parts.
        lung2_score: lung2's scan score (from :func:`evaluate_lung2`); computed when ``None``.
        overview_dir: if given, write ``<scan>_<method>.png`` there.

    Returns:
        a JSON-serialisable dict with ``normal_scores`` (name -> score), ``lung2_score`` and ``sample_auroc``.
    """
    data_dir = Path(data_dir)
    p = _paths(data_dir)
    cache = {} if cache is None else cache
    if _per_fold(method):
        return _evaluate_normals_per_fold(data_dir, method, cache)
    if lung2_score is None:
        lung2_score = evaluate_lung2(data_dir, method, BenchmarkContext(data_dir, list(p["normals"]), cache=cache))[
            "scan_score"
        ]
    scores: dict[str, float] = {}
    for path in p["normals"]:
        ctx = _held_out_context(data_dir, p["normals"], path, cache)
        image, lung, spacing, affine = normal_scan(cache, path)
        try:
            fn = resolve_method(method)(ctx)
        except ValueError as err:  # e.g. a single normal scan: nothing left to fit on
            scores[path.name] = float("nan")
            print(f"warning: {method} on {path.name}: {err}", file=sys.stderr)
            continue
        score = _run_map(fn, path, image, affine, spacing)[0].map
        scores[path.name] = scan_score(score, lung)
        if overview_dir is not None:
            _overview(image, score, affine, Path(overview_dir) / f"{path.name.split('.')[0]}_{_safe(method)}.png",
                      path.name, method, top_voxels(score, lung))
    valid = [s for s in scores.values() if np.isfinite(s)]
    auroc = compute_sample_auroc(np.array(valid + [lung2_score]), np.array([0] * len(valid) + [1]))
    return {
        "method": method,
        "normal_scores": scores,
        "lung2_score": lung2_score,
        "sample_auroc": auroc.value,
        "sample_auroc_reason": auroc.reason,
        "n_normals": len(valid),
        "n_lesion_scans": 1,
    }


def _pooled_auroc(normal: Sequence[float], lesion: Sequence[float]) -> float | None:
    """Sample AUROC of normal scans' scores (negatives) against lesion scans' (positives); ``None`` if undefined."""
    labels = np.array([0] * len(normal) + [1] * len(lesion))
    return compute_sample_auroc(np.array(list(normal) + list(lesion), dtype=float), labels).value


def _per_fold(method: str) -> bool:
    """Whether a method has one fit per held-out normal scan (a model method with ``{host}`` in its path)."""
    return method.startswith("model:") and "{host}" in method


def _evaluate_normals_per_fold(data_dir: Path, method: str, cache: dict) -> dict[str, Any]:
    """:func:`evaluate_normals` for a method with one checkpoint per held-out normal (``{host}``): in each fold the
    held-out normal and lung2 are scored by the same checkpoint, and lung2 is compared with that normal. Also with the
    method's own scan score and verdict where it has them."""
    p = _paths(data_dir)
    lung2_img, lung2_aff, lung2_sp = load_volume(p["lung2"])
    lung2_region = _lung2_regions(cache, p["lung2"], lung2_img, lung2_sp)[1]
    folds: dict[str, dict[str, Any]] = {}
    for path in p["normals"]:
        fn = resolve_method(method)(_held_out_context(data_dir, p["normals"], path, cache))
        image, lung, spacing, affine = normal_scan(cache, path)
        normal = _scan_scores(_run_map(fn, path, image, affine, spacing)[0], lung)
        lung2 = _scan_scores(_run_map(fn, p["lung2"], lung2_img, lung2_aff, lung2_sp)[0], lung2_region)
        folds[path.name] = {"normal": normal, "lung2": lung2}
    out: dict[str, Any] = {
        "method": method,
        "per_fold": folds,
        "normal_scores": {n: f["normal"]["scan_score"] for n, f in folds.items()},
        "lung2_score": float(np.mean([f["lung2"]["scan_score"] for f in folds.values()])),
        "n_normals": len(folds),
        "n_lesion_scans": 1,
    }
    for prefix in ("", "own_"):
        key = prefix + "scan_score"
        if not folds or any(key not in f["normal"] for f in folds.values()):
            continue
        neg = [f["normal"][key] for f in folds.values()]
        pos = [f["lung2"][key] for f in folds.values()]
        out[prefix + "sample_auroc"] = _pooled_auroc(neg, pos)
        out[prefix + "lung2_above_its_normal"] = float(np.mean([b > a for a, b in zip(neg, pos)]))
    if folds and all("own_label" in f["lung2"] for f in folds.values()):
        out["own_lung2_anomalous"] = int(sum(f["lung2"]["own_label"] == "anomalous" for f in folds.values()))
        out["own_normals_anomalous"] = int(sum(f["normal"]["own_label"] == "anomalous" for f in folds.values()))
    return out


def _host_name(path: Path) -> str:
    return path.name.split(".")[0]


def _held_out_context(data_dir: Path, normals: Sequence[Path], held_out: Path, cache: dict) -> BenchmarkContext:
    """The whole-scan context fitted on every normal scan but ``held_out`` (leave-one-out)."""
    return BenchmarkContext(data_dir, [q for q in normals if q != held_out], cache=cache, held_out=_host_name(held_out))


def transplant_cases(
    data_dir: str | Path,
    cache: dict,
    per_bin: int = TRANSPLANT_PER_BIN,
    seed: int = 0,
    thickness_mm: float | None = None,
    site: str = "deep",
) -> list[dict]:
    """The transplant part's cases, made once per run: ``per_bin`` LIDC nodules per diameter bin (a seeded draw),
    each put into one normal chest scan (in turn) at a seeded site deep in its lung
    (:func:`~monai_simsid.data.lesions.transplant_lesion`, :func:`~monai_simsid.data.lesions.lesion_sites`) and
    written to a temporary NIfTI with the host's affine.

    With ``thickness_mm`` each case is then re-acquired with axial slices of that thickness on the host's own grid
    (:func:`~monai_simsid.transforms.acquisition.array.simulate_slice_thickness`; same draw and sites, the nodule mask
    unchanged): the same nodules as a thick-slice series shows them, e.g. 5 mm as in lung2.

    ``site="pleural"`` puts each nodule against the border of the lung envelope instead (the pleura, costal or
    mediastinal, or the diaphragm): its centre between half a radius and one radius plus 1 mm inside the envelope (the
    lung region is the envelope grown by 5 mm), in parenchyma (2 mm smoothed HU below -600), so that it touches the
    wall as a juxtapleural nodule does. Its label is then the part of the nodule that raised the host by more than
    100 HU (not the wall it overlaps, which was as dense already). The draw of nodules is the same as for ``"deep"``.

    Returns:
        one dict per case: ``name``, ``host`` (path), ``image`` (path), ``lesion`` (bool array), ``diameter_mm``.
    """
    from monai_simsid.data.lesions import lesion_sites, transplant_lesion

    if site not in TRANSPLANT_SITES:
        raise ValueError(f"site must be one of {TRANSPLANT_SITES}, got {site!r}.")
    key = ("transplant", str(data_dir), per_bin, seed, thickness_mm, site)
    if key in cache:
        return cache[key][1]
    p = _paths(Path(data_dir))
    nodules = _read_nodules(p["lidc"])
    if not nodules or not p["normals"]:
        return []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(nodules))
    chosen = [
        nodules[i] for _, lo, hi in DIAMETER_BINS for i in [j for j in order if lo <= nodules[j]["diameter_mm"] < hi][:per_bin]
    ]
    tmp = tempfile.TemporaryDirectory(prefix="transplant_")
    cases = []
    for n, nod in enumerate(chosen):
        host = p["normals"][n % len(p["normals"])]
        h_img, h_lung, h_sp, h_aff = normal_scan(cache, host)
        v_img, _, v_sp = load_volume(nod["image"])
        v_mask = load_volume(nod["mask"])[0] > 0.5
        radius = 0.5 * float(np.nanmax([nod["diameter_mm"], 1.0]))
        if site == "pleural":
            low = LUNG_REGION_DILATION_MM + 0.5 * radius  # half a radius inside the envelope
            high = low + 0.5 * radius + 1.0
            where = lesion_sites(h_lung, h_img, h_sp, low, rng, max_hu=-600.0, max_margin_mm=high)[0]
        else:
            where = lesion_sites(h_lung, h_img, h_sp, radius + 10.0, rng)[0]
        image, lesion = transplant_lesion(h_img, h_sp, v_img, v_mask, v_sp, where)
        if site == "pleural":  # the label is what the nodule changed: not the wall it overlaps (already as dense)
            lesion &= image > h_img + 100.0
        if thickness_mm:
            image = simulate_slice_thickness(image, h_sp, thickness_mm, axis=2)
        name = f"{_host_name(host)}+{nod['name'].split('.')[0]}"
        path = Path(tmp.name) / f"{name}.nii"
        nib.save(nib.Nifti1Image(image, h_aff), str(path))
        cases.append({"name": name, "host": host, "image": path, "lesion": lesion, "diameter_mm": nod["diameter_mm"]})
    cache[key] = (tmp, cases)  # the folder lives as long as the run's cache
    return cases


def evaluate_transplant(
    data_dir: str | Path,
    method: str,
    cache: dict | None = None,
    per_bin: int = TRANSPLANT_PER_BIN,
    seed: int = 0,
    thickness_mm: float | None = None,
    site: str = "deep",
) -> dict[str, Any]:
    """Whole-scan detection of real nodules: LIDC nodules transplanted into the normal chest scans (see
    :func:`transplant_cases`). Each case is scored by the method fitted on the *other* normal scans (a model method
    reads ``{host}`` in its checkpoint path as the held-out scan's name; without it, the model has seen the host).

    Per case: voxel AUROC and AP inside the host's lung region (with the nodule), and detection: the top-scoring voxel
    of the body lies in the nodule (ties as for lung2). Summaries: means, and detection per diameter bin.
    ``thickness_mm``: the cases re-acquired with thicker slices; ``site``: deep or against the pleura (see
    :func:`transplant_cases`).
    """
    data_dir = Path(data_dir)
    cache = {} if cache is None else cache
    p = _paths(data_dir)
    records, seconds = [], 0.0
    fns: dict[str, MapFn] = {}
    hosts: dict[str, dict[str, Any]] = {}
    for case in transplant_cases(data_dir, cache, per_bin, seed, thickness_mm, site):
        host = case["host"]
        bkey = ("body", str(host))
        h_img, h_lung, h_sp, h_aff = normal_scan(cache, host)
        if bkey not in cache:
            cache[bkey] = compute_body_mask(h_img, h_sp)
        if str(host) not in fns:
            fns[str(host)] = resolve_method(method)(_held_out_context(data_dir, p["normals"], host, cache))
            hosts[_host_name(host)] = _clean_host_scores(fns[str(host)], host, cache, thickness_mm)
        image, affine, spacing = load_volume(case["image"])
        lesion = case["lesion"]
        res, dt = _run_map(fns[str(host)], case["image"], image, affine, spacing)
        score = res.map
        seconds += dt
        region = h_lung | lesion
        records.append({
            "name": case["name"],
            "host": _host_name(host),
            "diameter_mm": case["diameter_mm"],
            "lung_auroc": compute_voxel_auroc(score, lesion, region).value,
            "lung_ap": compute_voxel_ap(score, lesion, region).value,
            "detected": top_voxel_hit(score, lesion, cache[bkey] | lesion),
            **report_figures(res, lesion),
            **_scan_scores(res, h_lung),
        })
    bins = _detection_by_diameter(records)
    mean = lambda k: float(np.mean([r[k] for r in records if r[k] is not None])) if records else None  # noqa: E731
    return {
        "method": method,
        "thickness_mm": thickness_mm,
        "site": site,
        "n_cases": len(records),
        "mean_lung_auroc": mean("lung_auroc"),
        "mean_lung_ap": mean("lung_ap"),
        "detection_rate": mean("detected"),
        # the report's top finding on the nodule (methods with a report only; None for the others)
        "first_finding_rate": (
            float(np.mean([r["first_finding_on_lesion"] for r in records])) if records and "n_findings" in records[0] else None
        ),
        "detection_by_diameter": bins,
        "sample": transplant_sample_level(records, hosts),
        "seconds_per_scan": seconds / max(len(records), 1),
        "per_case": records,
    }


def _scan_scores(res: MapOutput, lung: np.ndarray) -> dict[str, Any]:
    """A scan's scores: the benchmark's (top 0.1% of the map in the host's lung region) and, for a method that has
    them, its own raw scan score and verdict."""
    out: dict[str, Any] = {"scan_score": scan_score(res.map, lung)}
    if res.scan_score is not None:
        out.update(own_scan_score=float(res.scan_score), own_label=res.scan_label)
    return out


def _clean_host_scores(fn: MapFn, host: Path, cache: dict, thickness_mm: float | None) -> dict[str, Any]:
    """:func:`_scan_scores` of a transplant part's host scan without a nodule, acquired like its cases (re-sliced
    when they are), scored by the same held-out fit as its cases."""
    img, lung, sp, aff = normal_scan(cache, host)
    if not thickness_mm:
        return _scan_scores(_run_map(fn, host, img, aff, sp)[0], lung)
    with tempfile.TemporaryDirectory(prefix="transplant_host_") as tmp:
        image = simulate_slice_thickness(img, sp, thickness_mm, axis=2).astype(np.float32)
        path = Path(tmp) / f"{_host_name(host)}.nii"
        nib.save(nib.Nifti1Image(image, aff), str(path))
        return _scan_scores(_run_map(fn, path, image, aff, sp)[0], lung)


def transplant_sample_level(records: Sequence[dict[str, Any]], hosts: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The transplant part at the sample level: does a scan's score rise when a nodule is put into it?

    Each case is paired with its host scan without the nodule, scored by the same held-out fit. Returns, for the
    benchmark's scan score (``""``) and, where the method has one, its own (``"own_"``): the share of cases scored
    above their host (``above_host_rate``; overall and for nodules of 10 mm and more) and the sample AUROC of the
    hosts (negatives) against all the cases (positives), pooled over the folds. For a method with its own verdict,
    also the share of cases and of hosts it calls anomalous, and ``[called anomalous, cases]`` among the cases whose
    host it calls normal (``own_anomalous_in_normal_hosts``).

    Args:
        records: the per-case records of :func:`evaluate_transplant` (``host``, ``diameter_mm``, ``scan_score`` and
            optionally ``own_scan_score``, ``own_label``).
        hosts: host name -> the same scores of the host scan without a nodule.
    """
    out: dict[str, Any] = {"hosts": dict(hosts)}
    if not records:
        return out
    for prefix in ("", "own_"):
        key = prefix + "scan_score"
        if key not in records[0] or any(key not in h for h in hosts.values()):
            continue
        above = [r[key] > hosts[r["host"]][key] for r in records]
        large = [a for a, r in zip(above, records) if r["diameter_mm"] >= 10.0]
        out[prefix + "above_host_rate"] = float(np.mean(above))
        out[prefix + "above_host_rate_10mm"] = float(np.mean(large)) if large else None
        out[prefix + "sample_auroc"] = _pooled_auroc([h[key] for h in hosts.values()], [r[key] for r in records])
    if "own_label" in records[0]:
        out["own_anomalous_rate"] = float(np.mean([r["own_label"] == "anomalous" for r in records]))
        out["own_hosts_anomalous"] = int(sum(h.get("own_label") == "anomalous" for h in hosts.values()))
        # a host called anomalous by itself (e.g. a lesion of its own) says nothing about its nodule: the cases
        # whose host is called normal
        clean = [r for r in records if hosts[r["host"]].get("own_label") == "normal"]
        out["own_anomalous_in_normal_hosts"] = [int(sum(r["own_label"] == "anomalous" for r in clean)), len(clean)]
    return out


def run_benchmark(
    data_dir: str | Path,
    methods: Sequence[str],
    lidc_limit: int | None = None,
    overview_dir: str | Path | None = None,
    parts: Sequence[str] = ("lung2", "lidc", "normals"),
    transplant_per_bin: int = TRANSPLANT_PER_BIN,
    transplant_thickness_mm: float | None = None,
    transplant_site: str = "deep",
) -> dict[str, Any]:
    """Run the chosen parts for every method (see the module docstring).

    Raises:
        FileNotFoundError: when ``data_dir`` does not exist.
        ValueError: on an unknown method or part.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    bad = [x for x in parts if x not in PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}; choose from {', '.join(PARTS)}.")
    for m in methods:
        resolve_method(m)  # fail early on unknown names
    p = _paths(data_dir)
    cache: dict = {}
    results: dict[str, Any] = {
        "data_dir": str(data_dir),
        "methods": list(methods),
        "lidc_limit": lidc_limit,
        "lung2": {},
        "lidc": {},
        "normals": {},
        "transplant": {},
    }
    for m in methods:
        # one checkpoint per held-out normal: only the parts that hold a normal out (lung2 is scored in each fold)
        per_fold = _per_fold(m)
        if per_fold and ("lung2" in parts or "lidc" in parts):
            print(f"note: {m} has one checkpoint per held-out normal; the lung2 and lidc parts are skipped", file=sys.stderr)
        lung2 = None
        if not per_fold and ("lung2" in parts or "normals" in parts) and p["lung2"].is_file():
            lung2 = evaluate_lung2(data_dir, m, BenchmarkContext(data_dir, list(p["normals"]), cache=cache), overview_dir)
            if "lung2" in parts:
                results["lung2"][m] = lung2
        if not per_fold and "lidc" in parts and (p["lidc"] / "image").is_dir():
            ctx = BenchmarkContext(data_dir, list(p["normals"]), region="crop", cache=cache)
            results["lidc"][m] = evaluate_lidc(data_dir, m, ctx, lidc_limit)
        if "normals" in parts and p["normals"] and (lung2 is not None or (per_fold and p["lung2"].is_file())):
            results["normals"][m] = evaluate_normals(data_dir, m, cache, None if lung2 is None else lung2["scan_score"], overview_dir)
        if "transplant" in parts and p["normals"] and (p["lidc"] / "image").is_dir():
            results["transplant"][m] = evaluate_transplant(
                data_dir, m, cache, transplant_per_bin, thickness_mm=transplant_thickness_mm, site=transplant_site
            )
    return results


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def _report_cell(r: dict[str, Any]) -> str:
    """lung2's report column: "-" without a report, else whether the first finding is on the tumour, and where the
    tumour ranks among the findings."""
    if "n_findings" not in r:
        return "-"
    n, rank = r["n_findings"], r["lesion_finding_rank"]
    where = f"tumour finding {rank} of {n}" if rank is not None else f"tumour not among {n} findings"
    return ("yes" if r["first_finding_on_lesion"] else "no") + f" ({where})"


def _diameter_table(
    title: str, rows: dict[str, Any], columns: Sequence[str], last: str,
    first_cells: Callable[[dict], list[str]], last_cell: Callable[[dict], str],
) -> list[str]:
    """A markdown table of per-method results with detection overall and per nodule diameter bin."""
    labels = [b[0] for b in DIAMETER_BINS]
    head = ["method", *columns, "detection (all)", *(f"det. {b} mm" for b in labels), last]
    lines = [title, "", "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for m, r in rows.items():
        bins = [
            f"{_f(r['detection_by_diameter'][b]['rate'], 2)} (n={r['detection_by_diameter'][b]['n']})" for b in labels
        ]
        lines.append("| " + " | ".join([m, *first_cells(r), _f(r["detection_rate"], 2), *bins, last_cell(r)]) + " |")
    return lines + [""]


def format_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of :func:`run_benchmark`'s results."""
    lines: list[str] = []
    if results.get("lung2"):
        lines += [
            "**lung2** (voxel level, metrics inside the lung region; best Dice is an oracle)",
            "",
            "| method | lung AUROC | lung AP | best Dice (oracle) | top voxel on tumour | top voxel to tumour (mm) "
            "| report's first finding on tumour | s / scan | peak RSS (MiB) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m, r in results["lung2"].items():
            hit = r["top_voxel_on_tumour"]
            on = ("yes" if hit >= 0.5 else "no") + (f" ({hit:.2f} of {r['top_voxel_ties']} tied)" if r["top_voxel_ties"] > 1 else "")
            lines.append(
                f"| {m} | {_f(r['lung_auroc'])} | {_f(r['lung_ap'])} | {_f(r['best_dice_oracle'])} | {on} "
                f"| {_f(r['top_voxel_distance_mm'], 1)} | {_report_cell(r)} | {_f(r['seconds_per_scan'], 1)} "
                f"| {_f(r['peak_rss_mib'], 0)} |"
            )
        lines.append("")
    if results.get("lidc"):
        lines += _diameter_table(
            "**LIDC crops** (per-crop voxel AUROC, mean over crops; detection = top voxel inside the nodule)",
            results["lidc"], ["crops", "mean crop AUROC"], "s / crop",
            lambda r: [str(r["n_crops"]), _f(r["mean_crop_auroc"])], lambda r: _f(r["seconds_per_crop"], 3),
        )
    if results.get("transplant"):
        lines += _diameter_table(
            "**LIDC nodules transplanted into the normal chest scans** (whole scans, fitted without the host; mean per "
            "scan of the lung-region voxel AUROC and AP; detection = top voxel of the body inside the nodule)",
            results["transplant"], ["scans", "lung AUROC", "lung AP", "report's first finding on nodule"], "s / scan",
            lambda r: [str(r["n_cases"]), _f(r["mean_lung_auroc"]), _f(r["mean_lung_ap"]), _f(r.get("first_finding_rate"), 2)],
            lambda r: _f(r["seconds_per_scan"], 1),
        )
        lines += [
            "**Transplanted nodules at the sample level** (each case against its host without the nodule, scored by the "
            "same held-out fit; scan score = mean of the top 0.1% of the map in the host's lung region; the method's own "
            "where it has one; sample AUROC = the hosts against all the cases)",
            "",
            "| method | case above its host (all / >= 10 mm) | sample AUROC | own score: above its host (all / >= 10 mm) "
            "| own sample AUROC | cases called anomalous | hosts called anomalous | cases called anomalous, host called normal |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m, r in results["transplant"].items():
            s = r.get("sample", {})
            own_hosts = f"{s['own_hosts_anomalous']} of {len(s['hosts'])}" if "own_hosts_anomalous" in s else "-"
            in_normal = "{} of {}".format(*s["own_anomalous_in_normal_hosts"]) if "own_anomalous_in_normal_hosts" in s else "-"
            lines.append(
                f"| {m} | {_f(s.get('above_host_rate'), 2)} / {_f(s.get('above_host_rate_10mm'), 2)} "
                f"| {_f(s.get('sample_auroc'), 2)} | {_f(s.get('own_above_host_rate'), 2)} / "
                f"{_f(s.get('own_above_host_rate_10mm'), 2)} | {_f(s.get('own_sample_auroc'), 2)} "
                f"| {_f(s.get('own_anomalous_rate'), 2)} | {own_hosts} | {in_normal} |"
            )
        lines.append("")
    if results.get("normals"):
        names = sorted({n for r in results["normals"].values() for n in r["normal_scores"]})
        short = [n.replace(".nii.gz", "") for n in names]
        lines += [
            "**Scan scores** (mean of the top 0.1% of the map inside the lung region; normals scored leave-one-out)",
            "",
            "| method | " + " | ".join(short) + " | lung2 | sample AUROC | lung2 above its fold's normal "
            "| own score: sample AUROC / lung2 above its fold's normal / lung2 called anomalous |",
            "| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- | --- |",
        ]
        for m, r in results["normals"].items():
            cells = " | ".join(_f(r["normal_scores"].get(n), 3) for n in names)
            own = "-"
            if "own_sample_auroc" in r:
                own = (f"{_f(r['own_sample_auroc'], 2)} / {_f(r['own_lung2_above_its_normal'], 2)} / "
                       f"{r.get('own_lung2_anomalous', 'n/a')} of {r['n_normals']}")
            lines.append(
                f"| {m} | {cells} | {_f(r['lung2_score'])} | {_f(r.get('sample_auroc'), 2)} "
                f"| {_f(r.get('lung2_above_its_normal'), 2)} | {own} |"
            )
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of the tool."""
    p = argparse.ArgumentParser(description="Evaluate anomaly-map methods side by side on the shared real CT data.")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help=f"shared CT folder (default: {DEFAULT_DATA_DIR})")
    p.add_argument(
        "--methods",
        default="intensity_rule,local_zscore",
        help="comma-separated methods: " + ", ".join(METHODS) + ", or model:<bundle_name>:<ckpt_path>[:key=value]",
    )
    p.add_argument("--lidc-limit", type=int, default=None, help="evaluate only the first N LIDC crops (sorted)")
    p.add_argument("--parts", default="lung2,lidc,normals", help=f"comma-separated parts of {', '.join(PARTS)} "
                   "(default: lung2,lidc,normals)")
    p.add_argument("--transplant-per-bin", type=int, default=TRANSPLANT_PER_BIN,
                   help="transplant part: LIDC nodules per diameter bin (default: %(default)s)")
    p.add_argument("--transplant-thickness", type=float, default=None, metavar="MM",
                   help="transplant part: re-acquire each case with axial slices of MM mm (e.g. 5, as lung2)")
    p.add_argument("--transplant-site", choices=TRANSPLANT_SITES, default="deep",
                   help="transplant part: nodules deep in the lung (default) or against the pleura (juxtapleural)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--overview-dir", default=None, help="write overview PNGs of lung2 and the normal scans here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    if "--bundles" in (sys.argv[1:] if argv is None else argv):  # side-by-side bundle comparison (synthetic/any datalist)
        import importlib.util

        spec = importlib.util.spec_from_file_location("compare_bundles", Path(__file__).with_name("compare_bundles.py"))
        compare_bundles = sys.modules["compare_bundles"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compare_bundles)
        return compare_bundles.main(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        print(f"data folder not found: {data_dir} - nothing to benchmark (skipped).")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    parts = [m.strip() for m in args.parts.split(",") if m.strip()]
    if args.lidc_limit is not None and args.lidc_limit < 1:
        print("error: --lidc-limit must be >= 1", file=sys.stderr)
        return 2
    if args.transplant_thickness is not None and not args.transplant_thickness > 0:
        print("error: --transplant-thickness must be a positive number of mm", file=sys.stderr)
        return 2
    try:
        results = run_benchmark(
            data_dir, methods, args.lidc_limit, args.overview_dir, parts, args.transplant_per_bin,
            args.transplant_thickness, args.transplant_site,
        )
    except (ValueError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_markdown(results))
    clean = to_jsonable(results)
    summary = {k: v for k, v in clean.items() if k != "lidc"}
    summary["lidc"] = {m: {k: v for k, v in r.items() if k != "per_crop"} for m, r in clean["lidc"].items()}
    print(json.dumps(summary, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(clean, indent=1) + "\n")
        print(f"results (with per-crop records) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
