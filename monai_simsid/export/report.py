"""Per-case JSON report and the cohort ``scores.csv`` table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monai_simsid.utils.atomic import atomic_write_text

__all__ = [
    "LABELS",
    "REPORT_VERSION",
    "SCORES_HEADER",
    "ScoresTable",
    "append_scores_csv",
    "build_report",
    "to_jsonable",
    "write_report",
]

REPORT_VERSION = 1
LABELS = ("normal", "anomalous")
SCORES_HEADER = ("case", "score", "label", "findings")


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` made of plain JSON types: numpy and torch scalars/arrays become numbers/lists, paths
    become strings, and non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensors
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _check_label(label: str) -> str:
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return label


def _check_score(score: float, name: str = "score") -> float:
    try:
        value = float(score)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number, got {score!r}") from e
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {score!r}")
    return value


def build_report(
    case: str,
    score: float,
    label: str,
    threshold: float,
    threshold_source: str,
    findings: Sequence[Mapping],
    bundle_name: str,
    bundle_version: str,
    preprocessing: Mapping,
    extra: Mapping | None = None,
    created: bool = True,
) -> dict:
    """The per-case report, a JSON-serialisable dict.

    Args:
        case: case name (e.g. from :func:`monai_simsid.data.datalist.case_name`).
        score: case-level anomaly score.
        label: ``"normal"`` or ``"anomalous"``.
        threshold: the case-level decision threshold used.
        threshold_source: where the threshold comes from (e.g. ``"calibrated on validation normals (95th pct)"``).
        findings: list of findings from :func:`monai_simsid.transforms.post.extract_findings`.
        bundle_name, bundle_version: the model bundle that produced the result.
        preprocessing: preprocessing parameters (spacing, window, ...).
        extra: optional additional fields (output file names...); they may not override the standard ones.
        created: add a ``"created"`` UTC time stamp. Pass False for a deterministic report (same inputs, same
            bytes), as :class:`~monai_simsid.apps.inference.AnomalyPredictor` does.
    """
    if not isinstance(case, str) or not case:
        raise ValueError(f"case must be a non-empty string, got {case!r}")
    if not isinstance(preprocessing, Mapping):
        raise ValueError(f"preprocessing must be a dict, got {type(preprocessing).__name__}")
    if isinstance(findings, (str, bytes)) or not isinstance(findings, Sequence):
        raise ValueError(f"findings must be a list of dicts, got {type(findings).__name__}")
    if any(not isinstance(f, Mapping) for f in findings):
        raise ValueError("findings must be a list of dicts")
    report = {
        "report_version": REPORT_VERSION,
        "case": case,
        "score": _check_score(score),
        "label": _check_label(label),
        "threshold": _check_score(threshold, "threshold"),
        "threshold_source": str(threshold_source),
        "n_findings": len(findings),
        "findings": to_jsonable(list(findings)),
        "coordinate_system": "RAS and LPS, scanner millimetres",
        "coordinate_notes": (
            "*_ras_mm: NIfTI/nibabel world coordinates; *_lps_mm: DICOM/3D Slicer/ITK patient coordinates "
            "(x and y negated); *_voxel: [x, y, z] indices of the input volume as stored; bbox_voxel end exclusive"
        ),
        "bundle": {"name": str(bundle_name), "version": str(bundle_version)},
        "preprocessing": to_jsonable(dict(preprocessing)),
    }
    if created:
        report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if extra:
        clash = set(map(str, extra)) & set(report)
        if clash:
            raise ValueError(f"extra fields may not override standard report fields: {sorted(clash)}")
        report.update(to_jsonable(dict(extra)))
    return report


def write_report(report: Mapping, path: str | os.PathLike) -> Path:
    """Write a report as indented strict JSON, atomically; returns the path."""
    if not isinstance(report, Mapping):
        raise ValueError(f"report must be a dict, got {type(report).__name__}")
    text = json.dumps(to_jsonable(report), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


class ScoresTable:
    """The cohort table of case-level results, written as ``scores.csv`` (``case,score,label,findings``).

    Rows are kept in memory, one per case (adding a case again replaces its row, so a re-run does not duplicate
    it), and :meth:`write` rewrites the whole file atomically.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, case: str, score: float, label: str, n_findings: int) -> None:
        """Add or replace the row of ``case``."""
        if not isinstance(case, str) or not case:
            raise ValueError(f"case must be a non-empty string, got {case!r}")
        n = int(n_findings)
        if n < 0 or n != n_findings:
            raise ValueError(f"n_findings must be a non-negative integer, got {n_findings!r}")
        self.rows[case] = {"case": case, "score": _check_score(score), "label": _check_label(label), "findings": n}

    def to_csv(self) -> str:
        """The table as CSV text."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(SCORES_HEADER)
        for row in self.rows.values():
            writer.writerow([row["case"], repr(row["score"]), row["label"], row["findings"]])
        return buf.getvalue()

    def write(self, path: str | os.PathLike) -> Path:
        """Write the table to ``path`` atomically; returns the path."""
        return atomic_write_text(path, self.to_csv())

    @classmethod
    def read(cls, path: str | os.PathLike) -> ScoresTable:
        """Load a table written by :meth:`write`."""
        table = cls()
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != SCORES_HEADER:
                raise ValueError(f"{path}: expected the header {','.join(SCORES_HEADER)}, got {reader.fieldnames}")
            for row in reader:
                table.add(row["case"], float(row["score"]), row["label"], int(row["findings"]))
        return table


def append_scores_csv(path: str | os.PathLike, case: str, score: float, label: str, n_findings: int) -> ScoresTable:
    """Add (or replace) the row of ``case`` in the ``scores.csv`` at ``path`` and rewrite it atomically.

    Returns:
        the updated table.
    """
    table = ScoresTable.read(path) if Path(path).is_file() else ScoresTable()
    table.add(case, score, label, n_findings)
    table.write(path)
    return table
