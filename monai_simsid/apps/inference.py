"""Full-scan inference with calibrated outputs in the input's own geometry, and the per-case clinical export."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose
from torch.utils.data import DataLoader

from monai_simsid.apps.calibration import acquisition_check, calibrate_map, calibrate_score
from monai_simsid.apps.fusion import DescriptorFusion
from monai_simsid.apps.normative import (
    LungDepthNormativeMap,
    affine_spacing,
    lung_depth_from_windows,
    normative_from_dict,
)
from monai_simsid.apps.preprocessing import input_hu_windows, resample_to_input
from monai_simsid.data.datalist import case_name
from monai_simsid.data.datasets import preprocess_all
from monai_simsid.export import ScoresTable, build_report, save_nifti, save_overview_png, save_slicer_segmentation, write_report
from monai_simsid.inferers.anomaly import AnomalyInferer
from monai_simsid.inferers.scoring import scan_score
from monai_simsid.transforms.body.array import compute_body_mask
from monai_simsid.transforms.io.array import LoadCT
from monai_simsid.transforms.io.dictionary import LoadCTd
from monai_simsid.transforms.post.array import extract_findings, postprocess_anomaly_map, spacing_from_affine
from monai_simsid.utils.atomic import atomic_write_text
from monai_simsid.utils.errors import InputError, find_input_error

__all__ = [
    "AnomalyPredictor",
    "CalibratedMapPredictor",
    "CasePrediction",
    "CasePreparer",
    "evaluate_cases",
    "input_body_mask",
    "load_predictor",
    "predict_map",
]

logger = logging.getLogger(__name__)


def input_body_mask(
    image_hu: np.ndarray, affine: np.ndarray, settings: Mapping[str, Any] | None = None, working_mm: float = 1.5
) -> np.ndarray:
    """Body mask on the input's own voxel grid, with axial slices taken along the axis closest to superior.

    Fine scans are masked on a grid subsampled by an integer factor to about ``working_mm`` per voxel (the body
    outline needs no sub-millimetre detail) and expanded back by repetition, so every input voxel gets a value and
    the cost stays small for 512 x 512 x 400 scans.
    """
    settings = settings or {}
    if settings.get("body_mode", "threshold") == "whole":
        return np.ones(image_hu.shape, dtype=bool)
    spacing = spacing_from_affine(affine)
    axial_axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3]) / spacing))
    step = [max(1, int(working_mm // float(sp))) for sp in spacing]
    small = image_hu[tuple(slice(None, None, k) for k in step)]
    mask = compute_body_mask(
        small,
        spacing * np.asarray(step),
        threshold=float(settings.get("body_threshold_hu", -500.0)),
        opening_mm=float(settings.get("body_opening_mm", 3.0)),
        axial_axis=axial_axis,
        outside=settings.get("body_outside_hu", -950.0),
    )
    for ax, k in enumerate(step):
        if k > 1:
            mask = np.repeat(mask, k, axis=ax)
    return mask[tuple(slice(0, n) for n in image_hu.shape)]


def _as_input_error(exc: BaseException, item: Mapping[str, Any]) -> InputError:
    """The one-line :class:`InputError` a batch reports for ``exc`` raised while processing ``item``."""
    return find_input_error(exc) or InputError(item.get("image"), f"{type(exc).__name__}: {exc}")


class CasePreparer:
    """Load and preprocess one case: everything before the model, with no model in it (cheap to pickle).

    Returns a dict of plain tensors and arrays (picklable, so a worker process can make it): ``case``, ``image``
    and ``body`` (model space, channel first), ``model_affine`` (the preprocessed grid's 4x4 affine), ``image_hu``
    (X, Y, Z) and ``affine`` of the input file, ``body_in`` (the body mask on the input grid) and ``preprocess_s``.

    Args:
        preprocessing: the shared chain used in training.
        preprocessing_settings: its settings (the body-mask settings are used on the input grid).
    """

    def __init__(self, preprocessing: Compose, preprocessing_settings: Mapping[str, Any] | None = None) -> None:
        self.preprocessing = preprocessing
        self.preprocessing_settings = dict(preprocessing_settings or {})
        self.loader = LoadCT(check_ct=False)

    def __call__(self, item: Mapping[str, Any]) -> dict:
        t0 = time.perf_counter()
        transforms = getattr(self.preprocessing, "transforms", ())
        if transforms and isinstance(transforms[0], LoadCTd):
            # read the file once: keep the loaded input-grid image, then run the rest of the chain on it
            loaded = preprocess_all([dict(item)], transforms[0])[0]
            affine = np.array(loaded["image"].affine, dtype=np.float64)  # copies: later steps may reuse the tensor
            image_hu = loaded["image"][0].numpy().copy()
            data = preprocess_all([loaded], lambda d: self.preprocessing(d, start=1))[0]
        else:
            data = preprocess_all([dict(item)], self.preprocessing)[0]
            original = self.loader(item["image"])
            affine = np.asarray(original.affine, dtype=np.float64)
            image_hu = original[0].numpy()
        image, body = data["image"], data["body"]
        model_affine = np.asarray(torch.as_tensor(image.affine), dtype=np.float64)
        # the body mask is recomputed on the input grid, so "0 outside the body" holds voxel for voxel there
        body_in = input_body_mask(image_hu, affine, self.preprocessing_settings)
        return {
            "case": case_name(item["image"]),
            "image": torch.as_tensor(image).as_subclass(torch.Tensor),
            "body": torch.as_tensor(body).as_subclass(torch.Tensor),
            "model_affine": model_affine,
            "image_hu": image_hu,
            "affine": affine,
            "body_in": body_in,
            "preprocess_s": time.perf_counter() - t0,
        }


class _PrepareOrError:
    """:class:`CasePreparer` for a worker process: a bad input comes back as ``{"error": (path, problem)}``.

    A worker must not raise (that would end the whole loader), and an exception object may not survive pickling,
    so the one-line error travels as two strings and the main process rebuilds the same :class:`InputError`.
    """

    def __init__(self, preparer: CasePreparer) -> None:
        self.preparer = preparer

    def __call__(self, item: Mapping[str, Any]) -> dict:
        try:
            return self.preparer(item)
        except Exception as exc:  # noqa: BLE001 - reported per case by the main process
            err = _as_input_error(exc, item)
            return {"error": (err.path, err.problem)}


def _worker_died(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's error for a ``DataLoader`` worker that exited (e.g. killed for memory)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker")


def _keep_case(case: Any) -> Any:
    """The loader's ``collate_fn``: one case at a time, as prepared (no numpy-to-tensor conversion)."""
    return case


class CasePrediction(NamedTuple):
    """One scan's result in the input geometry.

    Attributes:
        case: case name.
        anomaly_map: float32 (X, Y, Z) in [0, 1], 0.5 = voxel threshold, 0 outside the body.
        mask: uint8 (X, Y, Z) components after post-processing (1..K, by peak score).
        affine: the input's 4x4 RAS affine.
        score: calibrated scan score in (0, 1), 0.5 = scan threshold.
        raw_score: the uncalibrated scan score.
        label: "normal" or "anomalous".
        findings: one dict per component.
        timings: seconds per stage.
        body: bool (X, Y, Z) body mask in the input geometry.
    """

    case: str
    anomaly_map: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    score: float
    raw_score: float
    label: str
    findings: list
    timings: dict
    body: np.ndarray


class CalibratedMapPredictor:
    """The output side every predictor shares: a calibrated map on the input grid, then the same files and report.

    A subclass supplies the loading (``preparer``) and the two map steps, :meth:`raw_map` (the model, timed as
    ``model_s``) and :meth:`calibrated_input_map` (calibration with :func:`~monai_simsid.apps.calibration.calibrate_map`,
    back to the input grid, and the raw scan score). Everything after is common: clipping to [0, 1], 0 outside the
    map's support, post-processing into components, findings, the calibrated scan score and its label
    (:meth:`predict_prepared`), the per-case files and report (:meth:`write`), and the batch with worker prefetch,
    ``scores.csv`` and ``errors.csv`` (:meth:`run`). See :class:`AnomalyPredictor` for the files written.

    Args:
        preparer: picklable callable ``{"image": path} -> dict`` run before the model (possibly in a worker process).
            Its result holds at least ``case``, ``image_hu`` (X, Y, Z), ``affine``, ``body_in`` (bool, input grid)
            and ``preprocess_s``, and may hold ``region`` (bool, input grid): the map's support when it is smaller
            than the body (the map is 0 and no finding is kept outside it).
        calibration: statistics from normal scans (see :func:`~monai_simsid.apps.calibration.compute_calibration`).
        bundle_name, bundle_version: written to every report.
        preprocessing_settings: written to every report (``"preprocessing"``).
        score_method: scan score method; None uses the one the calibration was computed for (a different one would
            make the threshold meaningless: ValueError).
        sigma_mm, min_volume_mm3: post-processing (smoothing, minimum component volume).
        write_png, write_seg: optional outputs.
        num_workers: worker processes that prepare the next case(s) of :meth:`run` (see :class:`AnomalyPredictor`).
        multiprocessing_context: start method of the workers; None is the platform default.

    Raises:
        ValueError: no calibration, another score method than the calibrated one, or negative settings.
    """

    def __init__(
        self,
        preparer: Any,
        calibration: Mapping[str, Any],
        bundle_name: str,
        bundle_version: str,
        preprocessing_settings: Mapping[str, Any] | None = None,
        score_method: str | None = None,
        sigma_mm: float = 1.5,
        min_volume_mm3: float = 100.0,
        write_png: bool = True,
        write_seg: bool = True,
        num_workers: int = 0,
        multiprocessing_context: str | None = None,
    ) -> None:
        if calibration is None:
            raise ValueError("the checkpoint has no calibration; train with the bundle's train.json (it calibrates).")
        self.calibration = dict(calibration)
        self.bundle_name = bundle_name
        self.bundle_version = bundle_version
        self.preprocessing_settings = dict(preprocessing_settings or {})
        calibrated_for = self.calibration.get("score_method", "topk")
        if score_method is not None and score_method != calibrated_for:
            raise ValueError(
                f"the checkpoint was calibrated for score_method '{calibrated_for}', not '{score_method}'; "
                "retrain (or re-calibrate) with that score_method."
            )
        self.score_method = calibrated_for
        if np.any(np.asarray(sigma_mm, dtype=float) < 0) or float(min_volume_mm3) < 0:
            raise ValueError(f"sigma_mm and min_volume_mm3 must be >= 0, got {sigma_mm} and {min_volume_mm3}.")
        self.sigma_mm = sigma_mm
        self.min_volume_mm3 = min_volume_mm3
        self.write_png = write_png
        self.write_seg = write_seg
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        self.num_workers = int(num_workers)
        self.multiprocessing_context = multiprocessing_context
        self.preparer = preparer

    # ----------------------------------------------------------------- prediction
    def prepare(self, item: Mapping[str, Any]) -> dict:
        """Load and preprocess one case (``{"image": path}``): the part of :meth:`predict` before the model.

        The result is picklable (see :class:`CasePreparer` for :class:`AnomalyPredictor`), so :meth:`run` can make
        it in a worker process.

        Raises:
            InputError: the input cannot be used.
        """
        return self.preparer(item)

    def raw_map(self, prepared: dict) -> Any:
        """The model step on a :meth:`prepare` result; its result goes to :meth:`calibrated_input_map` as
        ``prepared["raw"]``. Implemented by each predictor."""
        raise NotImplementedError

    def calibrated_input_map(self, prepared: dict) -> tuple[np.ndarray, float]:
        """``(map, raw_score)``: the calibrated map on the input grid (values in [0, 1], 0.5 = the normal-data voxel
        threshold; clipped and masked afterwards) and the raw scan score, from ``prepared.pop("raw")``. Implemented
        by each predictor."""
        raise NotImplementedError

    def report_extra(self) -> dict:
        """The report's fields after the standard ones and the case's ``raw_score``: score method, voxel threshold,
        post-processing (a subclass adds its own)."""
        return {
            "score_method": self.score_method,
            "voxel_threshold": {
                "calibrated": 0.5,
                "raw": self.calibration["voxel_threshold"],
                "normal_voxel_fpr": self.calibration["voxel_fpr"],
            },
            "postprocessing": {"sigma_mm": self.sigma_mm, "min_volume_mm3": self.min_volume_mm3},
        }

    def predict_prepared(self, prepared: dict, return_image: bool = False) -> CasePrediction | tuple[CasePrediction, np.ndarray]:
        """The map steps, then the shared post-processing, findings and scan score of a :meth:`prepare` result.

        The large arrays are taken out of ``prepared`` (and freed as soon as they are used). The map is clipped to
        [0, 1] and set to 0 outside ``prepared["region"]`` (the body ``prepared["body_in"]`` when there is none).
        """
        t1 = time.perf_counter()
        prepared["raw"] = self.raw_map(prepared)
        t2 = time.perf_counter()
        out_map, raw_score = self.calibrated_input_map(prepared)
        affine = prepared["affine"]
        image_hu = prepared["image_hu"]
        out_map = np.clip(np.nan_to_num(out_map, nan=0.0), 0.0, 1.0).astype(np.float32)
        body_in = prepared["body_in"]
        support = prepared.get("region", body_in)
        out_map[~support] = 0.0
        spacing = spacing_from_affine(affine)
        mask, _ = postprocess_anomaly_map(out_map, spacing, sigma_mm=self.sigma_mm, min_volume_mm3=self.min_volume_mm3, body_mask=support)
        findings = extract_findings(out_map, mask, affine)
        t3 = time.perf_counter()
        score = calibrate_score(raw_score, self.calibration)
        label = "anomalous" if raw_score >= self.calibration["scan_threshold"] else "normal"
        timings = {"preprocess_s": prepared["preprocess_s"], "model_s": t2 - t1, "postprocess_s": t3 - t2}
        pred = CasePrediction(prepared["case"], out_map, mask, affine, score, raw_score, label, findings, timings, body_in)
        return (pred, image_hu) if return_image else pred

    def predict(self, item: Mapping[str, Any], return_image: bool = False) -> CasePrediction | tuple[CasePrediction, np.ndarray]:
        """Predict one case (``{"image": path}``) without writing anything: :meth:`prepare`, then :meth:`predict_prepared`.

        Args:
            item: the case.
            return_image: also return the input volume in HU (X, Y, Z), e.g. for the overview picture.
        """
        return self.predict_prepared(self.prepare(item), return_image=return_image)

    def _prepared_cases(self, entries: Sequence[Mapping[str, Any]], num_workers: int):
        """Yield ``(item, prepared)`` in order; ``prepared`` is ``{"error": (path, problem)}`` for a bad input.

        With ``num_workers`` > 0 a ``DataLoader`` over a MONAI ``Dataset`` prepares the next cases in worker
        processes (``prefetch_factor=1``: at most ``num_workers`` prepared cases wait, whatever the batch size).
        """
        safe = _PrepareOrError(self.preparer)
        if num_workers <= 0:
            for item in entries:
                yield item, safe(item)
            return
        loader = DataLoader(
            Dataset(list(entries), transform=safe),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_keep_case,
            prefetch_factor=1,
            persistent_workers=False,
            multiprocessing_context=self.multiprocessing_context,
        )
        it = iter(loader)
        try:
            for k, item in enumerate(entries):
                try:
                    prepared = next(it)
                except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory: go on without workers
                    logger.warning("the loading worker failed (%s); preparing the remaining cases in this process", exc)
                    break
                yield item, prepared
                del prepared
            else:
                return
        finally:
            del it  # shuts the workers down now, also when the batch stops early (fail_on_error)
        for item in list(entries)[k:]:
            yield item, safe(item)

    # ----------------------------------------------------------------- writing
    def write(self, pred: CasePrediction, output_dir: str | os.PathLike, image_hu: np.ndarray | None = None) -> Path:
        """Write one case's files under ``output_dir/<case>/`` (each atomically).

        The report holds no time stamp or timings, so the same checkpoint and input give byte-identical reports;
        the per-stage seconds go to ``<case>_timings.json``. If any file fails to write (e.g. a full disk), the
        files this call already wrote are removed (and the case folder, if this call created it and it is empty),
        so a failed case leaves no output that looks finished.
        """
        t0 = time.perf_counter()
        folder = Path(output_dir) / pred.case
        created_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / pred.case
        written: list[Path] = []

        def _out(path: str) -> str:
            written.append(Path(path))
            return path

        extra = {"raw_score": pred.raw_score, **self.report_extra()}
        acquisition = acquisition_check(spacing_from_affine(pred.affine), self.calibration)
        if acquisition is not None:
            extra["acquisition"] = acquisition
            if acquisition["note"]:
                logger.warning("%s: %s", pred.case, acquisition["note"])
        try:
            save_nifti(pred.anomaly_map, pred.affine, _out(f"{stem}_anomaly_map.nii.gz"), dtype=np.float32)
            save_nifti(pred.mask, pred.affine, _out(f"{stem}_anomaly_mask.nii.gz"), dtype=np.uint8)
            if self.write_seg:
                save_slicer_segmentation((pred.mask > 0).astype(np.uint8), pred.affine, _out(f"{stem}_anomaly.seg.nrrd"))
            report = build_report(
                case=pred.case,
                score=pred.score,
                label=pred.label,
                threshold=0.5,
                threshold_source=(
                    f"calibrated so that 0.5 = the {100 * (1 - self.calibration['fpr']):.0f}th percentile of normal scan "
                    f"scores ({self.calibration['source']}); raw threshold {self.calibration['scan_threshold']:.6g}"
                ),
                findings=pred.findings,
                bundle_name=self.bundle_name,
                bundle_version=self.bundle_version,
                preprocessing=self.preprocessing_settings,
                extra=extra,
                created=False,
            )
            if self.write_png and image_hu is not None:
                save_overview_png(image_hu, pred.anomaly_map, pred.affine, _out(f"{stem}_overview.png"), findings=pred.findings, case=pred.case, score=pred.score, label=pred.label)
            write_report(report, _out(f"{stem}_report.json"))
            timings = {**pred.timings, "write_s": time.perf_counter() - t0}
            write_report(timings, _out(f"{stem}_timings.json"))
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            if created_folder:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return folder

    def _predict_and_write(self, prepared: dict, out: Path, table: ScoresTable) -> CasePrediction:
        """One case of :meth:`run`: predict a :meth:`prepare` result (or raise its error), write it, update the table."""
        if "error" in prepared:
            raise InputError(*prepared["error"])
        pred, hu = self.predict_prepared(prepared, return_image=True)
        self.write(pred, out, hu)
        table.add(pred.case, pred.score, pred.label, len(pred.findings))
        table.write(out / "scores.csv")
        logger.info("%s: score %.3f (%s), %d finding(s)", pred.case, pred.score, pred.label, len(pred.findings))
        return pred

    def run(self, entries: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, fail_on_error: bool | None = None) -> dict:
        """Predict and write every entry; a bad case is skipped and listed in ``errors.csv``.

        With ``num_workers`` > 0 the next case(s) are loaded and preprocessed in worker processes while the model
        runs; the outputs, ``scores.csv`` and ``errors.csv`` are the same as with ``num_workers=0``.

        Args:
            entries: ``{"image": path}`` dicts (a datalist section or a folder listing).
            output_dir: the output folder (created if needed).
            fail_on_error: raise on the first bad case. Default: only when there is a single input.

        Returns:
            ``{"done": [...], "failed": [(path, problem), ...]}``.

        Raises:
            InputError: a single input (or ``fail_on_error``) that cannot be processed, or an unusable output folder.
        """
        out = Path(output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(out, f"cannot create the output folder ({e.strerror})") from None
        if not os.access(out, os.W_OK):
            raise InputError(out, "output folder is not writable")
        fail_fast = len(entries) == 1 if fail_on_error is None else fail_on_error
        table = ScoresTable.read(out / "scores.csv") if (out / "scores.csv").is_file() else ScoresTable()
        done, failed = [], []
        # a single input runs in this process (nothing to overlap); else up to one worker per further case
        num_workers = min(self.num_workers, len(entries) - 1)
        with contextlib.closing(self._prepared_cases(entries, num_workers)) as cases:
            for item, prepared in cases:
                try:
                    try:
                        pred = self._predict_and_write(prepared, out, table)
                    except RuntimeError as exc:
                        if not _worker_died(exc):
                            raise
                        # the loader's SIGCHLD handler raises a dead worker's error in whatever this process is doing:
                        # not this case's fault, so it is redone here (the following ones are prepared here too)
                        logger.warning("a loading worker died (%s); redoing %s in this process", str(exc).split(". ")[0], item.get("image"))
                        pred = self._predict_and_write(_PrepareOrError(self.preparer)(item), out, table)
                    done.append(pred.case)
                except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
                    err = _as_input_error(exc, item)
                    if fail_fast:
                        raise err from None
                    logger.error("skipping %s", err)
                    failed.append((err.path, err.problem))
                finally:
                    # nothing of this case stays alive while the next one is prepared (flat memory over a batch)
                    prepared = pred = None
        if failed:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["input", "problem"])
            w.writerows(failed)
            atomic_write_text(out / "errors.csv", buf.getvalue())
            logger.warning("%d of %d case(s) failed; see %s", len(failed), len(entries), out / "errors.csv")
        return {"done": done, "failed": failed}


class AnomalyPredictor(CalibratedMapPredictor):
    """Run a calibrated anomaly model over whole scans and write what a reader needs.

    Per case, under ``output_dir/<case>/``: ``<case>_anomaly_map.nii.gz`` (float32, [0, 1], 0.5 = threshold, the
    input's exact shape and affine, 0 outside the body), ``<case>_anomaly_mask.nii.gz`` (uint8 components),
    ``<case>_anomaly.seg.nrrd`` (3D Slicer segmentation), ``<case>_report.json`` (deterministic: no time stamp),
    ``<case>_timings.json`` (seconds per stage) and ``<case>_overview.png``; plus
    ``output_dir/scores.csv`` and, when a case fails, ``output_dir/errors.csv``. Every file is written atomically.

    Args:
        network: the trained model (loaded weights).
        inferer: the sliding-window inferer (the model's roi and region grid).
        preprocessing: the shared chain used in training (same settings).
        calibration: the checkpoint's calibration (computed on normal scans).
        bundle_name, bundle_version: written to every report.
        preprocessing_settings: written to every report.
        device: where the model runs.
        output_settings: ``score_method`` (see :func:`~monai_simsid.inferers.scoring.scan_score`; None uses the one
            the checkpoint was calibrated for, a different one would make the threshold meaningless: ValueError),
            ``sigma_mm`` and ``min_volume_mm3`` (post-processing: smoothing, minimum component volume),
            ``write_png`` and ``write_seg`` (optional outputs), ``num_workers`` (worker processes that load and
            preprocess the next case(s) of :meth:`run` while the model runs on the current one; each holds at most
            one prepared case ahead, so memory stays bounded; 0 does everything in this process, one case after the
            other; a single input always runs in this process) and ``multiprocessing_context`` (start method of the
            workers, ``"fork"``, ``"spawn"``, ``"forkserver"``; None is the platform default, fork on Linux: no
            re-import, cheap to start); see :class:`CalibratedMapPredictor`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: AnomalyInferer,
        preprocessing: Compose,
        calibration: Mapping[str, Any],
        bundle_name: str,
        bundle_version: str,
        preprocessing_settings: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        **output_settings: Any,
    ) -> None:
        preparer = CasePreparer(preprocessing, preprocessing_settings)
        super().__init__(preparer, calibration, bundle_name, bundle_version, preprocessing_settings, **output_settings)
        self.network = network.to(device).eval()
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        if self.score_method == "topk" and hasattr(network, "window_score"):
            network.window_score = False  # the scan score reads the map only: skip SimSID's discriminator pass
        if hasattr(network, "map_only"):
            network.map_only = True  # the inferer reads only the map: SimSID decodes only the channels it compares
        # normalisation of the map by body position or by depth in the lung envelope, fitted on the calibration normals
        # (see NormativeMap, LungDepthNormativeMap); an input without a body frame (body_mode "whole", e.g. a small
        # crop) gets the global normal statistics instead
        normative = self.calibration.get("normative")
        self.normative = normative_from_dict(normative) if normative else None
        self.normative_positions = self.preprocessing_settings.get("body_mode", "threshold") != "whole"
        # fusion with the descriptor memory fitted at calibration on normal scans (see DescriptorFusion); a crop uses
        # its bank without the depth feature over the whole input
        fusion = self.calibration.get("fusion")
        self.fusion = DescriptorFusion.from_dict(fusion) if fusion else None

    def run_model(self, x: torch.Tensor, body: torch.Tensor):
        """The inferer and network on a preprocessed scan ``x`` ``(1, C, *S)`` with its ``body`` ``(1, 1, *S)``.

        The stitched window-score map is only made when the scan score reads it (not for ``"topk"``).
        """
        if self.score_method == "topk" and isinstance(self.inferer, AnomalyInferer):
            return self.inferer(x, self.network, body, score_map=False)
        return self.inferer(x, self.network, body)

    def raw_map(self, prepared: dict) -> tuple:
        """The model step: the inferer's result and the body on the model grid (``image``/``body`` leave ``prepared``)."""
        image = prepared.pop("image")
        spacing = affine_spacing(prepared["model_affine"])
        depth = None
        depth_normative = isinstance(self.normative, LungDepthNormativeMap)
        if (depth_normative or self.fusion is not None) and self.normative_positions:
            depth = lung_depth_from_windows(image, input_hu_windows(self.preprocessing_settings), spacing)
        if depth_normative:
            prepared["lung_depth"] = depth
        if self.fusion is not None and depth is None:
            # an input without a body frame (a crop): its descriptor term on its own grid, fused there (see
            # calibrated_input_map); small nodules lose their contrast on the 1.5 mm model grid
            prepared["descriptor_input"] = self.fusion.crop_term(prepared["image_hu"], affine_spacing(prepared["affine"]))
        elif self.fusion is not None:
            prepared["descriptor"] = self.fusion.descriptor_term(image, spacing, depth)
        x = image[None].float().to(self.device)
        body = prepared.pop("body")[None].to(self.device)
        res = self.run_model(x, body)
        del x
        return res, body

    def calibrated_input_map(self, prepared: dict) -> tuple[np.ndarray, float]:
        """Normative map, scan score and calibration on the model grid, then resampling to the input grid."""
        res, body = prepared.pop("raw")
        raw_map = res.anomaly_map[0].cpu()
        body_ms = body[0].cpu()
        if self.normative is not None:
            positions = body_ms[0] if self.normative_positions else None
            raw_map = self.normative.apply(raw_map, positions, prepared.pop("lung_depth", None))
        topk = self.calibration.get("topk_fraction", 0.001)
        window_scores = None if res.score_map is None else res.score_map[0].cpu()
        if "descriptor_input" in prepared:
            return self._fused_on_input_grid(prepared, raw_map, window_scores, topk)
        if self.fusion is not None:
            raw_map = self.fusion(raw_map, *prepared.pop("descriptor"))
        raw_score = scan_score(
            raw_map, window_scores, body_ms, self.score_method, topk, norm=self.calibration.get("score_norm")
        )
        del res, body
        cal_map = calibrate_map(raw_map, self.calibration) * (body_ms > 0.5)
        del raw_map, body_ms
        # back to the input grid through the world coordinates of both grids, slab by slab (exact geometry, low
        # memory; equivalent to MONAI's Invertd over this chain, see tests/apps/test_preprocessing.py)
        shape = tuple(prepared["image_hu"].shape)
        return resample_to_input(cal_map, prepared["model_affine"], prepared["affine"], shape), raw_score

    def _fused_on_input_grid(
        self, prepared: dict, raw_map: torch.Tensor, window_scores: torch.Tensor | None, topk: float
    ) -> tuple[np.ndarray, float]:
        """:meth:`calibrated_input_map` of an input whose descriptor term was computed on its own grid: the model term
        (and the window scores) resampled to the input grid, fused there, then scored and calibrated there."""
        shape = tuple(prepared["image_hu"].shape)
        to_input = functools.partial(
            resample_to_input, model_affine=prepared["model_affine"], input_affine=prepared["affine"], input_shape=shape
        )
        fused = self.fusion.fuse(torch.from_numpy(to_input(self.fusion.model_term(raw_map))), *prepared.pop("descriptor_input"))
        body = torch.from_numpy(np.asarray(prepared["body_in"], dtype=np.float32))
        scores = None if window_scores is None else torch.from_numpy(to_input(window_scores))
        raw_score = scan_score(fused, scores, body, self.score_method, topk, norm=self.calibration.get("score_norm"))
        return (calibrate_map(fused, self.calibration) * body).numpy(), raw_score

    def report_extra(self) -> dict:
        """:meth:`CalibratedMapPredictor.report_extra` and the normative map's settings."""
        extra = super().report_extra()
        extra["normative_map"] = (
            None
            if self.normative is None
            else {
                "kind": getattr(self.normative, "kind", "position"),
                "grid": list(getattr(self.normative, "grid", [])),
                "positions": bool(self.normative_positions),
            }
        )
        extra["fusion"] = (
            None
            if self.fusion is None
            else {
                "kind": self.fusion.kind,
                "descriptor": "lung_depth" if self.normative_positions else "plain (no lung envelope)",
                "bank_size": int(self.fusion.knn.bank.shape[0]),
                "k": self.fusion.knn.k,
                "scales_mm": list(self.fusion.knn.scales_mm),
                # the widths this input was described with: a crop gets the crop memory's
                "shape_scales_mm": list((self.fusion.knn if self.normative_positions else self.fusion.crop_knn).shape_scales_mm),
                "hu_max": self.fusion.knn.hu_max,
                "model_weight": self.fusion.model_weight,
                "search_mm": self.fusion.search_mm,
                "region": self.fusion.region,
                "grid": "model" if self.normative_positions else "input",
            }
        )
        return extra


def evaluate_cases(
    predictor: CalibratedMapPredictor,
    entries: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    write_outputs: bool = True,
) -> dict:
    """Predict every entry, then compute sample, voxel and lesion metrics against the entries' labels.

    Entries without a ``label`` are normal scans (sample label 0). Voxel metrics are computed inside each scan's
    body mask, in the input geometry, pooled over the lesion cases. Thresholds are the calibrated 0.5 at both
    levels (they come from normal data); ``best_dice`` is an oracle over thresholds and is reported as such.
    Writes ``output_dir/metrics.json`` (atomically) and returns the metrics.
    """
    from monai_simsid.export.report import to_jsonable
    from monai_simsid.metrics import compute_all_metrics

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    label_loader = LoadCT(is_label=True)
    scores, labels, maps, masks, regions, cases = [], [], [], [], [], []

    def add_case(item: Mapping[str, Any], pred: CasePrediction, hu: np.ndarray) -> None:
        if write_outputs:
            predictor.write(pred, out, hu)
        has_label = bool(item.get("label"))
        lesion = None
        if has_label:
            lesion = label_loader(item["label"])[0].numpy() > 0.5
            if lesion.shape != pred.anomaly_map.shape:
                raise InputError(item["label"], f"label shape {lesion.shape} differs from image shape {pred.anomaly_map.shape}")
        scores.append(pred.score)
        labels.append(int(has_label and lesion is not None and lesion.any()))
        cases.append({"case": pred.case, "score": pred.score, "label": pred.label, "lesion_case": bool(labels[-1])})
        if lesion is not None and lesion.any():
            maps.append(pred.anomaly_map)
            masks.append(lesion)
            regions.append(pred.body | lesion)

    # the next cases load in the predictor's worker processes while the model runs on this one (as in run())
    num_workers = min(predictor.num_workers, len(entries) - 1)
    with contextlib.closing(predictor._prepared_cases(entries, num_workers)) as prepared_cases:
        for item, prepared in prepared_cases:
            if "error" in prepared:
                raise InputError(*prepared["error"])
            add_case(item, *predictor.predict_prepared(prepared, return_image=True))
            prepared = None
    metrics = compute_all_metrics(
        sample_scores=scores,
        sample_labels=labels,
        sample_threshold=0.5,
        anomaly_maps=maps or None,
        lesion_masks=masks or None,
        region_masks=regions or None,
        voxel_threshold=0.5,
    )
    result = {"bundle": predictor.bundle_name, "version": predictor.bundle_version, "num_cases": len(cases), "metrics": metrics, "cases": cases}
    import json

    atomic_write_text(out / "metrics.json", json.dumps(to_jsonable(result), indent=2))
    return result


_PREDICTORS: dict = {}


def load_predictor(bundle_name: str, ckpt_path: str | os.PathLike, device: str | None = None, **overrides: Any) -> CalibratedMapPredictor:
    """Build a bundle's ``predictor`` from its ``inference.json`` (cached per bundle, checkpoint, device)."""
    from monai.bundle import ConfigParser

    from monai_simsid.apps.config import bundle_root

    key = (bundle_name, str(ckpt_path), device, repr(sorted(overrides.items())))
    if key not in _PREDICTORS:
        parser = ConfigParser()
        parser.read_config(os.path.join(bundle_root(bundle_name), "configs", "inference.json"))
        parser["ckpt_path"] = str(ckpt_path)
        if device is not None:
            parser["device"] = device
        for k, v in overrides.items():
            parser[k] = v
        try:
            _PREDICTORS[key] = parser.get_parsed_content("predictor")
        except Exception as exc:  # noqa: BLE001 - the config parser wraps the real cause
            err = find_input_error(exc)
            if err is None:
                raise
            raise err from None
    return _PREDICTORS[key]


def predict_map(bundle_name: str, ckpt_path: str | os.PathLike, image_path: str | os.PathLike, device: str | None = None, **overrides: Any) -> CasePrediction:
    """Predict one scan with a trained bundle: the calibrated map etc. in the input file's own voxel grid."""
    return load_predictor(bundle_name, ckpt_path, device, **overrides).predict({"image": str(image_path)})
