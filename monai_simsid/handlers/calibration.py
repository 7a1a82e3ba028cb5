"""End-of-training calibration on normal scans, written with the model checkpoint."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_simsid.apps.audit import audit_normal_terms, report_audit
from monai_simsid.apps.calibration import compute_calibration, voxel_statistics
from monai_simsid.apps.checkpoint import save_model_checkpoint
from monai_simsid.apps.descriptor_knn import DEFAULT_SHAPE_SCALES_MM
from monai_simsid.apps.fusion import DescriptorFusion, NoLungRegionError
from monai_simsid.apps.normative import (
    LungDepthNormativeMap,
    NormativeMap,
    affine_spacing,
    lung_depth_from_windows,
    position_cells,
)
from monai_simsid.data.exclusion import item_exclusion
from monai_simsid.inferers.anomaly import AnomalyInferer
from monai_simsid.inferers.scoring import SCORE_METHODS, scan_score
from monai_simsid.transforms.acquisition.array import check_thickness
from monai_simsid.utils.geometry import spacing_from_affine

__all__ = ["CalibrationHandler", "collect_normal_statistics"]

logger = logging.getLogger(__name__)


def collect_normal_statistics(
    network: torch.nn.Module,
    inferer: AnomalyInferer,
    items: Sequence[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    topk_fraction: float = 0.001,
    max_voxels_per_scan: int = 500_000,
    seed: int = 0,
    normative: NormativeMap | LungDepthNormativeMap | None = None,
    cell_grid: Sequence[int] | None = None,
    depths: Sequence[np.ndarray] | None = None,
    fuse: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[list[float], list[float], np.ndarray] | tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """Raw scan scores, discriminator window scores and sampled body-voxel values of normal scans.

    Args:
        normative: applied to each map before anything is measured (the statistics are then those of the
            normalised maps). A :class:`~monai_simsid.apps.normative.LungDepthNormativeMap` needs ``depths``.
        cell_grid: also return the body-normalised cell (see :func:`~monai_simsid.apps.normative.position_cells`)
            of every sampled voxel, as a fourth element.
        depths: the signed lung-envelope depth ``(*S)`` of each item (see
            :func:`~monai_simsid.apps.normative.lung_depth_from_windows`); without ``cell_grid``, the depth of every
            sampled voxel is returned as a fourth element.
        fuse: one callable per item, applied to its map after ``normative`` (e.g. a
            :class:`~monai_simsid.apps.fusion.DescriptorFusion` bound to the item's descriptor term).

    An item's exclusion mask (see :mod:`monai_simsid.data.exclusion`), grown by its margin, is left out of its scan
    score and of the sampled voxels.
    """
    if isinstance(normative, LungDepthNormativeMap) and depths is None:
        raise ValueError("a lung-depth normative map needs the depths of the items.")
    rng = np.random.default_rng(seed)
    scan_scores, window_scores, voxels, cells = [], [], [], []
    network.eval()
    for n, item in enumerate(items):
        x = torch.as_tensor(item["image"])[None].to(device).float()
        body = torch.as_tensor(item["body"])[None].to(device)
        res = inferer(x, network, body)
        amap = res.anomaly_map[0]
        if normative is not None:
            amap = normative.apply(amap.cpu(), body[0, 0].cpu(), None if depths is None else depths[n]).to(amap.device)
        if fuse is not None:
            amap = fuse[n](amap.cpu()).to(amap.device)
        excluded = item_exclusion(item)
        kept = body[0] if excluded is None else body[0] * torch.from_numpy(~excluded)[None].to(body.device)
        scan_scores.append(scan_score(amap, res.score_map[0], kept, "topk", topk_fraction))
        window_scores.append(scan_score(amap, res.score_map[0], kept, "discriminator"))
        inside = (kept > 0.5).cpu()
        vals = amap.float().cpu()[inside].numpy()
        keep = rng.choice(vals.size, max_voxels_per_scan, replace=False) if vals.size > max_voxels_per_scan else slice(None)
        voxels.append(vals[keep])
        if cell_grid is not None:
            cells.append(position_cells((body[0, 0] > 0.5).cpu(), cell_grid)[inside[0]].numpy()[keep])  # the body's frame
        elif depths is not None:
            cells.append(np.asarray(depths[n], dtype=np.float32)[inside[0].numpy()][keep])
    out = (scan_scores, window_scores, np.concatenate(voxels) if voxels else np.zeros(0))
    if cell_grid is not None or depths is not None:
        return (*out, np.concatenate(cells) if cells else np.zeros(0))
    return out


def _original_slice_mm(item: Mapping[str, Any]) -> float | None:
    """The largest voxel size (mm) of a preprocessed scan as its file stored it (``None`` when unknown)."""
    meta = getattr(item.get("image"), "meta", None) or {}
    affine = meta.get("original_affine")
    return None if affine is None else float(np.max(spacing_from_affine(np.asarray(affine, dtype=float))))


def _source(item: Mapping[str, Any]) -> Any:
    """What identifies a preprocessed scan: its source file (from the image's metadata), else the item itself."""
    meta = getattr(item.get("image"), "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else id(item)


class CalibrationHandler:
    """At the end of training, calibrate on normal scans and write ``model.pt`` (weights + calibration + meta).

    Thresholds and score normalisation come from normal data only: validation normals, or held-back training
    normals. Test labels are never seen here.

    Args:
        network: the trained model.
        inferer: the sliding-window inferer used at inference.
        items: preprocessed normal scans (dicts with ``image`` and ``body``).
        output_path: where to write the model checkpoint.
        bundle_name, bundle_version, model_config: identity recorded in the checkpoint.
        fpr: scan-level false-positive rate of the threshold.
        voxel_fpr: fraction of normal body voxels above the voxel threshold.
        source: description of the normals used.
        topk_fraction: scan score setting (must match inference).
        extra_meta: more entries for the checkpoint's ``meta``.
        score_method: the scan score the threshold is computed for.
        normative_grid: if given, fit a :class:`~monai_simsid.apps.normative.NormativeMap` on this body-normalised
            grid from the normal maps (stored as ``calibration["normative"]``); thresholds and scan scores are then
            computed on the normalised maps, and inference applies the same normalisation. This costs a second
            pass over the normal scans. None (or an empty grid) keeps the raw map.
        normative_depth_windows: if given (the HU windows of the image channels), fit a
            :class:`~monai_simsid.apps.normative.LungDepthNormativeMap` instead: statistics per depth in the lung
            envelope (for chest CT). Exclusive with ``normative_grid``.
        descriptor_fusion: fuse the (normalised) map with a descriptor memory fitted on normal scans (see
            :class:`~monai_simsid.apps.fusion.DescriptorFusion`; stored as ``calibration["fusion"]``): the model map's
            own normal threshold sets its unit, then thresholds and scan scores are computed on the fused normal
            maps. Needs ``normative_depth_windows`` (chest CT); costs one more pass over the normal scans and a kNN
            search over their lung regions. Normal scans without lungs (not chest CT) skip it with a warning. It also
            audits the normal scans (:func:`~monai_simsid.apps.audit.audit_normal_terms`): each calibration scan's
            most anomalous compact region against the other scans' memory, stored as ``calibration["normal_audit"]``,
            logged, and written as ``normal_audit.json`` next to the checkpoint.
        bank_items: preprocessed normal scans whose lung voxels fill the descriptor bank (e.g. the training
            normals); default: ``items``. A scan in both (same source file) is scored against the bank of the other
            scans when the units are set (see :meth:`~monai_simsid.apps.fusion.DescriptorFusion.fit`).
        descriptor_args: settings of the fusion's descriptor memory
            (:class:`~monai_simsid.apps.descriptor_knn.DescriptorKNN`: ``scales_mm``, ``shape_scales_mm``, ``k``,
            ``bank_size``, ``seed``, ``hu_max``; default: its defaults), ``crop_shape_scales_mm``, the shape widths of the memory
            that scores inputs without a lung envelope, and ``model_weight``, the model term's weight in the fused map
            (see :class:`~monai_simsid.apps.fusion.DescriptorFusion`).
        slice_thickness_mm: the thickness the normal scans were re-sliced to before they came here (``calibrate.json``'s
            ``calibration_thickness_mm``), or ``None``. Recorded, with each normal scan's largest voxel size as stored
            (``normal_slice_mm``), so that inference can say when a scan's slices do not match the normals' (see
            :func:`~monai_simsid.apps.calibration.acquisition_check`).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: AnomalyInferer,
        items: Sequence[Mapping[str, Any]],
        output_path: str | os.PathLike,
        bundle_name: str,
        bundle_version: str,
        model_config: Mapping[str, Any],
        fpr: float = 0.05,
        voxel_fpr: float = 0.001,
        source: str = "validation normals",
        topk_fraction: float = 0.001,
        extra_meta: Mapping[str, Any] | None = None,
        score_method: str = "topk",
        normative_grid: Sequence[int] | None = None,
        normative_depth_windows: Sequence[Sequence[float]] | None = None,
        descriptor_fusion: bool = False,
        bank_items: Sequence[Mapping[str, Any]] | None = None,
        descriptor_args: Mapping[str, Any] | None = None,
        slice_thickness_mm: float | None = None,
    ) -> None:
        if score_method not in SCORE_METHODS:
            raise ValueError(f"score_method must be one of {SCORE_METHODS}, got {score_method!r}.")
        self.score_method = score_method
        if not items:
            raise ValueError("calibration needs at least one normal scan.")
        self.network = network
        self.inferer = inferer
        self.items = list(items)
        self.output_path = output_path
        self.bundle_name = bundle_name
        self.bundle_version = bundle_version
        self.model_config = model_config
        self.fpr = fpr
        self.voxel_fpr = voxel_fpr
        self.source = source
        self.topk_fraction = topk_fraction
        self.extra_meta = extra_meta
        # an empty grid also means "off" (``monai.bundle run`` drops a None override, so configs can pass [])
        self.normative_grid = tuple(int(g) for g in normative_grid) if normative_grid else None
        if self.normative_grid is not None and min(self.normative_grid) < 1:
            raise ValueError(f"normative_grid must hold positive integers, got {normative_grid}.")
        self.normative_depth_windows = [list(w) for w in normative_depth_windows] if normative_depth_windows else None
        if self.normative_grid is not None and self.normative_depth_windows is not None:
            raise ValueError("choose one normative map: normative_grid (body position) or normative_depth_windows.")
        self.descriptor_fusion = bool(descriptor_fusion)
        if self.descriptor_fusion and self.normative_depth_windows is None:
            raise ValueError("descriptor_fusion needs normative_depth_windows (the lung-envelope depth of chest CT).")
        self.bank_items = list(bank_items) if bank_items else None
        self.descriptor_args = dict(descriptor_args or {})
        unknown = set(self.descriptor_args) - {"scales_mm", "shape_scales_mm", "crop_shape_scales_mm", "k", "bank_size", "seed", "hu_max", "model_weight"}
        if unknown:
            raise ValueError(f"descriptor_args: unknown settings {sorted(unknown)}.")
        crop_widths = self.descriptor_args.get("crop_shape_scales_mm")
        widths = self.descriptor_args.get("shape_scales_mm", DEFAULT_SHAPE_SCALES_MM)
        if crop_widths is not None and not {float(w) for w in crop_widths} <= {float(w) for w in widths}:
            # checked here, not when the fusion is fitted after training
            raise ValueError(
                f"descriptor_args: crop_shape_scales_mm {list(crop_widths)} must be among shape_scales_mm {list(widths)}."
            )
        self.slice_thickness_mm = None if slice_thickness_mm is None else check_thickness(slice_thickness_mm, "slice_thickness_mm")
        self.calibration: dict[str, Any] | None = None

    def _fit_fusion(self, depths: list[np.ndarray], v_thr: float, v_scale: float) -> tuple[DescriptorFusion, list]:
        """The descriptor fusion: bank from ``bank_items`` (default: the calibration items), units from the
        calibration items (their terms come back in their order)."""
        bank = self.items if self.bank_items is None else self.bank_items
        keys = [_source(i) for i in self.items]
        extra = [i for i in bank if _source(i) not in keys]
        bank_keys = {_source(i) for i in bank}
        images = [i["image"] for i in self.items + extra]
        spacings = [affine_spacing(getattr(img, "affine", None)) for img in images]
        extra_depths = [
            lung_depth_from_windows(i["image"], self.normative_depth_windows, sp)
            for i, sp in zip(extra, spacings[len(self.items) :])
        ]
        return DescriptorFusion.fit(
            images, self.normative_depth_windows, spacings, list(depths) + extra_depths, v_thr, v_scale,
            in_bank=[k in bank_keys for k in keys] + [True] * len(extra),
            calibrate=[True] * len(self.items) + [False] * len(extra),
            excludes=[item_exclusion(i, sp) for i, sp in zip(self.items + extra, spacings)], **self.descriptor_args,
        )

    def _audit(self, terms: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        """The normal-set audit of the calibration scans' descriptor terms (in the order of ``self.items``): logged
        and written atomically as ``normal_audit.json`` beside the checkpoint."""
        bank = self.items if self.bank_items is None else self.bank_items
        bank_keys = {_source(i) for i in bank}
        keys = [_source(i) for i in self.items]
        audit = audit_normal_terms(
            [t for t, _ in terms], [r for _, r in terms],
            [np.asarray(getattr(i["image"], "affine", np.eye(4)), dtype=float) for i in self.items],
            [str(k) for k in keys], [k not in bank_keys or len(bank_keys) > 1 for k in keys],
        )
        # (written before the checkpoint, whose folder it creates too)
        unit = "descriptor term (1 = normal 99.9th percentile)"
        report_audit(audit, Path(self.output_path).with_name("normal_audit.json"), unit)
        return audit

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        if engine is not None and hasattr(engine.state, "device"):
            device = engine.state.device
        else:  # called directly (re-calibration of a trained model): run where the network is
            device = next(iter(self.network.parameters()), torch.zeros(())).device
        normative = None
        depths = None
        if self.normative_grid is not None:
            *_, values, cells = collect_normal_statistics(
                self.network, self.inferer, self.items, device, self.topk_fraction, cell_grid=self.normative_grid
            )
            normative = NormativeMap.fit(values, cells, self.normative_grid)
        elif self.normative_depth_windows is not None:
            depths = [
                lung_depth_from_windows(i["image"], self.normative_depth_windows, affine_spacing(getattr(i["image"], "affine", None)))
                for i in self.items
            ]
            *_, values, voxel_depths = collect_normal_statistics(
                self.network, self.inferer, self.items, device, self.topk_fraction, depths=depths
            )
            normative = LungDepthNormativeMap.fit(values, voxel_depths)
        fusion, fuse, audit = None, None, []
        if self.descriptor_fusion:  # (needs normative_depth_windows: the depth branch above has run)
            # the model term's unit: the threshold of the normalised normal maps, read off the voxels sampled above
            # (the same voxels a second pass would sample, normalised at their depths) without running the model again
            normalised = normative(torch.as_tensor(values), voxel_depths).numpy()
            v_thr, _, v_scale = voxel_statistics(normalised, self.voxel_fpr)
            try:
                fusion, terms = self._fit_fusion(depths, v_thr, v_scale)
                fuse = [functools.partial(fusion, term=t, region=r) for t, r in terms]
                audit = self._audit(terms)
            except NoLungRegionError as err:  # e.g. abdominal or head CT: the model's map alone, as without fusion
                logger.warning("descriptor fusion skipped: %s", err)
        scans, windows, voxels = collect_normal_statistics(
            self.network, self.inferer, self.items, device, self.topk_fraction, normative=normative, depths=depths,
            fuse=fuse,
        )[:3]
        t, w = np.asarray(scans, dtype=float), np.asarray(windows, dtype=float)
        norm = {
            "topk_mean": float(t.mean()),
            "topk_std": max(float(t.std()), 0.05 * abs(float(t.mean())), 1e-12),
            "disc_mean": float(w.mean()),
            "disc_std": max(float(w.std()), 0.05 * abs(float(w.mean())), 1e-12),
        }
        if self.score_method == "topk":
            chosen = list(t)
        elif self.score_method == "discriminator":
            chosen = list(w)
        else:
            chosen = list((t - norm["topk_mean"]) / norm["topk_std"] + (w - norm["disc_mean"]) / norm["disc_std"])
        self.calibration = compute_calibration(
            chosen, voxels, windows, fpr=self.fpr, voxel_fpr=self.voxel_fpr, source=self.source
        )
        self.calibration.update({"topk_fraction": self.topk_fraction, "score_method": self.score_method, "score_norm": norm})
        slices = [_original_slice_mm(i) for i in self.items]
        if all(v is not None for v in slices):
            self.calibration["normal_slice_mm"] = slices
        self.calibration["slice_thickness_mm"] = self.slice_thickness_mm
        if normative is not None:
            self.calibration["normative"] = normative.to_dict()
        if fusion is not None:
            self.calibration["fusion"] = fusion.to_dict()
            self.calibration["normal_audit"] = audit
        extra = dict(self.extra_meta or {})
        if engine is not None:
            extra.update({"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)})
        save_model_checkpoint(
            self.output_path, self.network, self.bundle_name, self.bundle_version, self.model_config,
            self.calibration, extra,
        )
        logger.info("calibrated on %d normal scans (%s); wrote %s", len(scans), self.source, self.output_path)
        return self.calibration
