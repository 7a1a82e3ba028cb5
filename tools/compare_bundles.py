#!/usr/bin/env python
"""Side-by-side comparison of the anomaly-detection bundles: train, evaluate, tabulate and plot.

Example::

    python tools/compare_bundles.py --datalist data/synthetic/datalist.json \\
        --bundles simsid_ct,autoencoder_ct,cutpaste_ct,ganomaly_ct --output_dir cmp --max_epochs 3
    # the same through the benchmark tool
    python tools/benchmark.py --datalist data/synthetic/datalist.json \\
        --bundles simsid_ct,autoencoder_ct,cutpaste_ct,ganomaly_ct --output_dir cmp

For each bundle ``b`` (in order; a failing bundle gets a row with its error and the others still run):

1. **train** - runs the documented bundle command in a subprocess (printed before it starts)::

       python -m monai.bundle run --config_file bundles/b/configs/train.json \\
           --datalist DL --output_dir OUT/b/train [--max_epochs N] [--KEY VALUE ...]

   and times it (wall clock). With ``--reuse`` an existing ``OUT/b/train/models/model.pt`` is used instead (its
   training time is taken from a previous ``OUT/results.json`` when there is one, else "n/a").
2. **evaluate** on the datalist's ``test`` section (``--section``)::

       python -m monai.bundle run --config_file "['bundles/b/configs/inference.json','bundles/b/configs/evaluate.json']" \\
           --ckpt_path OUT/b/train/models/model.pt --datalist DL --datalist_section test --output_dir OUT/b/eval

   then reads ``OUT/b/eval/metrics.json`` and the per-case ``<case>/<case>_timings.json`` timings.

Outputs in ``OUT``: ``results.json`` (everything, including the commands, logs' paths and the per-case scores),
``results.md`` (one row per model: every metric of ``metrics.json``, training seconds, inference seconds per scan,
peak memory; undefined metrics are "n/a") and ``roc_pr.png`` (sample-level ROC and precision-recall curves, one line
per model, from the per-case scores and lesion flags of ``metrics.json``). Each subprocess's output goes to
``OUT/b/train.log`` / ``OUT/b/eval.log`` (``--verbose`` also echoes it to the console).

Measurements
------------
- *training seconds*: wall clock of the training subprocess (includes start-up, validation and calibration).
- *inference s/scan*: mean over the evaluated cases of ``preprocess_s + model_s + postprocess_s`` from the case
  ``<case>_timings.json`` files (writing the outputs excluded; it is listed separately in ``results.json``, as is the
  evaluation subprocess's wall clock per case).
- *peak memory*: peak resident set size (RSS) of each subprocess in MiB. Measured with ``/usr/bin/time -v``
  ("Maximum resident set size") when that program exists; otherwise with
  ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` read after the subprocess ends, which is the largest RSS of
  *any* child waited for so far by this process, so in that mode a value is an upper bound (it never decreases
  from one model to the next). ``results.json`` records which method was used (``memory_method``). GPU memory is
  not measured.

Overrides
---------
``--extra-override KEY=VALUE`` (repeatable) adds ``--KEY VALUE`` to the *training* command (e.g.
``roi_size=[32,32,32]``); prefix the key with ``eval:`` for the evaluation command only, or ``all:`` for both
(e.g. ``all:device=cpu``). Inference reads the window size and model settings from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
DEFAULT_BUNDLES = ("simsid_ct", "autoencoder_ct", "cutpaste_ct", "ganomaly_ct")
TIME_BIN = "/usr/bin/time"

__all__ = [
    "DEFAULT_BUNDLES",
    "RunResult",
    "Runner",
    "SubprocessRunner",
    "build_parser",
    "compare",
    "display_command",
    "eval_command",
    "format_markdown",
    "main",
    "pr_curve",
    "roc_curve",
    "save_roc_pr_plot",
    "train_command",
]


# ----------------------------------------------------------------------------------------------- subprocess runner
@dataclass
class RunResult:
    """Outcome of one subprocess: exit status, wall-clock seconds, peak RSS (MiB, None if unknown), output tail."""

    returncode: int
    seconds: float
    peak_rss_mib: float | None = None
    output_tail: str = ""


Runner = Callable[[Sequence[str], Path], RunResult]
"""``runner(cmd, log_path) -> RunResult``: runs ``cmd`` (argv list), writing its output to ``log_path``."""


class SubprocessRunner:
    """Default :data:`Runner`: runs the command, logs its output and measures wall time and peak RSS.

    Args:
        use_time: wrap the command in ``/usr/bin/time -v`` for the peak RSS (default: when that program exists);
            otherwise ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the run (an upper bound, see the
            module docstring).
        echo: also print the subprocess's output lines to the console.
    """

    def __init__(self, use_time: bool | None = None, echo: bool = False):
        self.use_time = (os.path.isfile(TIME_BIN) and os.access(TIME_BIN, os.X_OK)) if use_time is None else use_time
        self.echo = echo
        self.memory_method = (
            f"{TIME_BIN} -v (maximum resident set size of the subprocess)"
            if self.use_time
            else "resource.getrusage(RUSAGE_CHILDREN).ru_maxrss after the subprocess (max over all children so far)"
        )

    def __call__(self, cmd: Sequence[str], log_path: Path) -> RunResult:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full = list(cmd)
        time_file = None
        if self.use_time:
            fd, time_file = tempfile.mkstemp(prefix="compare_bundles_time_", suffix=".txt")
            os.close(fd)
            full = [TIME_BIN, "-v", "-o", time_file, *full]
        tail: list[str] = []
        t0 = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + display_command(list(cmd)) + "\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # live log lines
            proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if len(tail) > 40:
                    del tail[0]
                if self.echo:
                    print("    | " + line.rstrip("\n"), flush=True)
            rc = proc.wait()
        seconds = time.perf_counter() - t0
        peak = None
        if time_file is not None:
            peak = _parse_time_v(Path(time_file))
            Path(time_file).unlink(missing_ok=True)
        if peak is None:  # no /usr/bin/time, or it wrote nothing
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # KiB on Linux
        return RunResult(rc, seconds, peak, "".join(tail))


def _parse_time_v(path: Path) -> float | None:
    """Peak RSS in MiB from a ``/usr/bin/time -v`` report (None when absent)."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if "Maximum resident set size" in line:
                return int(line.rsplit(":", 1)[1].strip()) / 1024.0
    except (OSError, ValueError):
        pass
    return None


# ----------------------------------------------------------------------------------------------------- commands
def display_command(cmd: Sequence[str]) -> str:
    """Shell form of ``cmd`` as the docs write it (a config list in double quotes), ready to copy."""
    parts = []
    for a in cmd:
        if "'" in a and not any(c in a for c in '"$`\\'):
            parts.append(f'"{a}"')
        else:
            parts.append(shlex.quote(a))
    return " ".join(parts)


def _bundle_config(bundle: str, name: str) -> str:
    return str(BUNDLES_DIR / bundle / "configs" / name)


def _split_overrides(overrides: Iterable[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``KEY=VALUE`` strings -> (training overrides, evaluation overrides); see the module docstring."""
    train, ev = [], []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--extra-override expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key.startswith("eval:"):
            ev.append((key[5:], value))
        elif key.startswith("all:"):
            train.append((key[4:], value))
            ev.append((key[4:], value))
        else:
            train.append((key.removeprefix("train:"), value))
    return train, ev


def train_command(bundle: str, datalist: str | Path, output_dir: str | Path, max_epochs: int | None = None,
                  overrides: Sequence[tuple[str, str]] = (), python: str = sys.executable) -> list[str]:
    """The documented training command of ``bundle`` (argv list)."""
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", _bundle_config(bundle, "train.json"),
           "--datalist", str(datalist), "--output_dir", str(output_dir)]
    if max_epochs is not None:
        cmd += ["--max_epochs", str(max_epochs)]
    for k, v in overrides:
        cmd += [f"--{k}", v]
    return cmd


def eval_command(bundle: str, ckpt_path: str | Path, datalist: str | Path, output_dir: str | Path, section: str = "test",
                 overrides: Sequence[tuple[str, str]] = (), python: str = sys.executable) -> list[str]:
    """The documented evaluation command of ``bundle`` (inference.json + evaluate.json) on ``section``."""
    configs = "[" + ",".join(repr(_bundle_config(bundle, n)) for n in ("inference.json", "evaluate.json")) + "]"
    cmd = [python, "-m", "monai.bundle", "run", "--config_file", configs, "--ckpt_path", str(ckpt_path),
           "--datalist", str(datalist), "--output_dir", str(output_dir)]
    if section != "test":  # "test" is the bundles' default section; keep the command the documented one
        cmd += ["--datalist_section", section]
    for k, v in overrides:
        cmd += [f"--{k}", v]
    return cmd


# ---------------------------------------------------------------------------------------------------- curves
def _binary_clf_counts(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps, thresholds) at each distinct score, from the highest score down."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1 - tps).astype(np.float64)
    return fps, tps, s[last_of_run]


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> dict | None:
    """Sample ROC curve (higher score = more anomalous); None when one class is missing.

    Returns ``{"fpr", "tpr", "thresholds", "auc"}``; the points are every distinct score (as sklearn's
    ``roc_curve(..., drop_intermediate=False)``), starting at (0, 0) with threshold ``inf``.
    """
    fps, tps, thr = _binary_clf_counts(scores, labels)
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        return None
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.r_[np.inf, thr], "auc": auc}


def pr_curve(scores: Sequence[float], labels: Sequence[int]) -> dict | None:
    """Sample precision-recall curve; None without positives.

    Same convention as sklearn's ``precision_recall_curve`` (>= 1.3): one point per distinct score, thresholds
    increasing, and a final point (recall 0, precision 1) without a threshold. ``ap`` is the step-wise average
    precision (sklearn's ``average_precision_score``).
    """
    fps, tps, thr = _binary_clf_counts(scores, labels)
    if tps.size == 0 or tps[-1] == 0:
        return None
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    thresholds = thr[::-1]
    ap = float(-np.sum(np.diff(recall) * precision[:-1]))
    return {"precision": precision, "recall": recall, "thresholds": thresholds, "ap": ap}


def save_roc_pr_plot(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot sample-level ROC and PR curves (one line per model with per-case scores) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 5))
    prevalence = None
    for r in results:
        cases = r.get("cases") or []
        if not cases:
            continue
        scores = [c["score"] for c in cases]
        labels = [int(bool(c["lesion_case"])) for c in cases]
        name = r["bundle"]
        try:
            roc, pr = roc_curve(scores, labels), pr_curve(scores, labels)
        except ValueError as err:
            print(f"  ! {name}: no curves ({err})")
            continue
        if roc is not None:
            ax_roc.plot(roc["fpr"], roc["tpr"], drawstyle="default", marker=".", label=f"{name} (AUC {roc['auc']:.3f})")
        if pr is not None:
            ax_pr.step(pr["recall"], pr["precision"], where="post", marker=".", label=f"{name} (AP {pr['ap']:.3f})")
            prevalence = sum(labels) / len(labels)
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="Sample-level ROC", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="grey", lw=0.8, ls="--", label=f"chance ({prevalence:.2f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Sample-level precision-recall", xlim=(-0.02, 1.02), ylim=(-0.02, 1.05))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- tables
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}" if math.isfinite(v) else "n/a"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _metric_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Scalar metric names of all models, in order of first appearance (``*_reason`` entries excluded)."""
    names: list[str] = []
    for r in results:
        for k, v in (r.get("metrics") or {}).items():
            if k.endswith("_reason") or isinstance(v, (dict, list, str)):
                continue
            if k not in names:
                names.append(k)
    return names


def format_markdown(results: Sequence[Mapping[str, Any]], title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Markdown table: one row per model, every scalar metric, training s, inference s/scan, peak RSS, errors.

    A metric that is missing or None/NaN for a model reads "n/a"; its reason (``<metric>_reason`` in
    ``metrics.json``) is listed under the table.
    """
    names = _metric_names(results)
    header = ["model", "status", *names, "train s", "infer s/scan", "peak RSS train MiB", "peak RSS eval MiB", "error"]
    lines = []
    if title:
        lines += [f"# {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    reasons = []
    for r in results:
        m = r.get("metrics") or {}
        train_s = r.get("train_seconds")
        train_cell = _fmt(train_s, 1)
        if r.get("train_reused"):
            train_cell = f"{train_cell} (reused)" if train_s is not None else "n/a (reused)"
        row = [
            _fmt(r["bundle"]),
            _fmt(r.get("status", "?")),
            *[_fmt(m.get(k)) for k in names],
            train_cell,
            _fmt(r.get("infer_seconds_per_scan"), 2),
            _fmt(r.get("peak_rss_train_mib"), 0),
            _fmt(r.get("peak_rss_eval_mib"), 0),
            _fmt(r.get("error") or ""),
        ]
        lines.append("| " + " | ".join(row) + " |")
        for k in names:
            if m.get(k) is None and m.get(f"{k}_reason"):
                reasons.append(f"- {r['bundle']} `{k}`: {m[f'{k}_reason']}")
    if reasons:
        lines += ["", "n/a reasons:", *reasons]
    if notes:
        lines += ["", *[f"{n}" for n in notes]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- driver
def _read_timings(eval_dir: Path, cases: Sequence[Mapping[str, Any]]) -> dict:
    """Per-case inference seconds (preprocess + model + postprocess) and write seconds from ``<case>_timings.json``."""
    infer, write, per_case = [], [], {}
    for c in cases:
        rep = eval_dir / c["case"] / f"{c['case']}_timings.json"
        if not rep.is_file():
            continue
        t = json.loads(rep.read_text()) or {}
        pred_s = sum(float(t.get(k, 0.0)) for k in ("preprocess_s", "model_s", "postprocess_s"))
        infer.append(pred_s)
        if "write_s" in t:
            write.append(float(t["write_s"]))
        per_case[c["case"]] = t
    return {
        "infer_seconds_per_scan": float(np.mean(infer)) if infer else None,
        "write_seconds_per_scan": float(np.mean(write)) if write else None,
        "timings_per_case": per_case,
    }


def _previous_results(out: Path) -> dict:
    try:
        prev = json.loads((out / "results.json").read_text())
        return {r["bundle"]: r for r in prev.get("results", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_bundle(bundle: str, datalist: Path, out: Path, runner: Runner, *, max_epochs: int | None = None,
               reuse: bool = False, section: str = "test", train_overrides: Sequence[tuple[str, str]] = (),
               eval_overrides: Sequence[tuple[str, str]] = (), previous: Mapping[str, Any] | None = None) -> dict:
    """Train (or reuse) and evaluate one bundle; never raises: a failure is recorded under ``error``."""
    bdir = out / bundle
    train_dir, eval_dir = bdir / "train", bdir / "eval"
    ckpt = train_dir / "models" / "model.pt"
    rec: dict[str, Any] = {"bundle": bundle, "status": "ok", "error": None, "train_seconds": None, "train_reused": False,
                           "peak_rss_train_mib": None, "peak_rss_eval_mib": None, "ckpt_path": str(ckpt),
                           "metrics": None, "cases": None, "infer_seconds_per_scan": None}
    step = "setup"
    try:
        if not (BUNDLES_DIR / bundle / "configs" / "train.json").is_file():
            raise FileNotFoundError(f"no bundle {bundle!r} under {BUNDLES_DIR}")
        step = "train"
        if reuse and ckpt.is_file():
            print(f"[{bundle}] reuse: {ckpt} exists, training skipped", flush=True)
            rec["train_reused"] = True
            prev = (previous or {}).get(bundle) or {}
            rec["train_seconds"] = prev.get("train_seconds")
            rec["peak_rss_train_mib"] = prev.get("peak_rss_train_mib")
        else:
            cmd = train_command(bundle, datalist, train_dir, max_epochs, train_overrides)
            rec["train_command"] = display_command(cmd)
            log = bdir / "train.log"
            print(f"[{bundle}] train: {rec['train_command']}\n[{bundle}]   log: {log}", flush=True)
            res = runner(cmd, log)
            rec["train_seconds"], rec["peak_rss_train_mib"] = res.seconds, res.peak_rss_mib
            if res.returncode != 0:
                raise RuntimeError(f"training exited with status {res.returncode} (see {log}): {_last_error(res.output_tail)}")
            if not ckpt.is_file():
                raise RuntimeError(f"training finished but wrote no {ckpt}")
            print(f"[{bundle}] trained in {res.seconds:.1f} s, peak RSS {_fmt(res.peak_rss_mib, 0)} MiB", flush=True)
        step = "evaluate"
        cmd = eval_command(bundle, ckpt, datalist, eval_dir, section, eval_overrides)
        rec["eval_command"] = display_command(cmd)
        log = bdir / "eval.log"
        print(f"[{bundle}] evaluate ({section}): {rec['eval_command']}\n[{bundle}]   log: {log}", flush=True)
        metrics_path = eval_dir / "metrics.json"
        metrics_path.unlink(missing_ok=True)  # never read a stale file
        res = runner(cmd, log)
        rec["eval_seconds"], rec["peak_rss_eval_mib"] = res.seconds, res.peak_rss_mib
        if res.returncode != 0:
            raise RuntimeError(f"evaluation exited with status {res.returncode} (see {log}): {_last_error(res.output_tail)}")
        if not metrics_path.is_file():
            raise RuntimeError(f"evaluation finished but wrote no {metrics_path}")
        step = "read metrics"
        result = json.loads(metrics_path.read_text())
        rec["metrics"], rec["cases"] = result.get("metrics") or {}, result.get("cases") or []
        rec.update(_read_timings(eval_dir, rec["cases"]))
        if rec["cases"]:
            rec["eval_wall_seconds_per_scan"] = res.seconds / len(rec["cases"])
        print(f"[{bundle}] evaluated {len(rec['cases'])} case(s) in {res.seconds:.1f} s: sample AUROC "
              f"{_fmt(rec['metrics'].get('sample_auroc'))}, voxel AUROC {_fmt(rec['metrics'].get('voxel_auroc'))}", flush=True)
    except Exception as exc:  # noqa: BLE001 - one bundle's failure must not stop the comparison
        rec["status"] = f"failed ({step})"
        rec["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
        rec["traceback"] = traceback.format_exc()
        print(f"[{bundle}] FAILED at {step}: {rec['error']}", flush=True)
    return rec


def _last_error(tail: str) -> str:
    """The most informative line of a subprocess's output tail (the last one that looks like an error)."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def compare(datalist: str | Path, bundles: Sequence[str], output_dir: str | Path, runner: Runner | None = None, *,
            max_epochs: int | None = None, reuse: bool = False, section: str = "test",
            extra_overrides: Sequence[str] = (), plot: bool = True) -> dict:
    """Run the comparison and write ``results.json``, ``results.md`` and ``roc_pr.png``; returns the summary."""
    datalist = Path(datalist).resolve()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runner = runner if runner is not None else SubprocessRunner()
    train_ov, eval_ov = _split_overrides(extra_overrides)
    previous = _previous_results(out) if reuse else {}
    try:
        from tqdm.auto import tqdm

        it = tqdm(bundles, desc="bundles", unit="bundle", file=sys.stderr, dynamic_ncols=True)
    except ImportError:  # pragma: no cover - tqdm is a MONAI dependency in practice
        it = bundles
    results = []
    t0 = time.perf_counter()
    for i, b in enumerate(it):
        print(f"\n=== [{i + 1}/{len(bundles)}] {b} ===", flush=True)
        if hasattr(it, "set_postfix_str"):
            it.set_postfix_str(b)
        results.append(run_bundle(b, datalist, out, runner, max_epochs=max_epochs, reuse=reuse, section=section,
                                  train_overrides=train_ov, eval_overrides=eval_ov, previous=previous))
    memory_method = getattr(runner, "memory_method", "reported by the runner")
    summary = {
        "datalist": str(datalist),
        "section": section,
        "bundles": list(bundles),
        "max_epochs": max_epochs,
        "reuse": reuse,
        "extra_overrides": list(extra_overrides),
        "memory_method": memory_method,
        "inference_timing": "mean over cases of preprocess_s + model_s + postprocess_s from <case>_timings.json",
        "total_seconds": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    from monai_simsid.export.report import to_jsonable

    (out / "results.json").write_text(json.dumps(to_jsonable(summary), indent=1) + "\n")
    notes = [
        f"Datalist: `{datalist}` (section `{section}`); max_epochs: {max_epochs if max_epochs is not None else 'bundle default'}"
        + (f"; overrides: {', '.join(f'`{o}`' for o in extra_overrides)}" if extra_overrides else "") + ".",
        "train s: wall clock of the training subprocess; infer s/scan: mean preprocess + model + postprocess seconds "
        "from the case reports; best_dice is an oracle (threshold chosen on the ground truth).",
        f"Peak memory: {memory_method}.",
    ]
    md = format_markdown(results, title="Bundle comparison", notes=notes)
    (out / "results.md").write_text(md)
    print("\n" + md, flush=True)
    if plot:
        try:
            png = save_roc_pr_plot(results, out / "roc_pr.png")
            print(f"curves: {png}")
        except Exception as exc:  # noqa: BLE001 - the table matters more than the figure
            print(f"could not draw the curves: {type(exc).__name__}: {exc}")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of the tool."""
    p = argparse.ArgumentParser(description="Train and evaluate anomaly-detection bundles side by side.")
    p.add_argument("--datalist", required=True, help="Decathlon-style datalist (training/validation/test sections)")
    p.add_argument("--bundles", default=",".join(DEFAULT_BUNDLES), help="comma-separated bundle names (default: all four)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True, help="output folder")
    p.add_argument("--max_epochs", "--max-epochs", dest="max_epochs", type=int, default=None,
                   help="training epochs for every bundle (default: each bundle's own)")
    p.add_argument("--reuse", action="store_true", help="skip training where OUT/<bundle>/train/models/model.pt exists")
    p.add_argument("--section", default="test", help="datalist section to evaluate on (default: test)")
    p.add_argument("--extra-override", "--extra_override", dest="extra_override", action="append", default=[],
                   metavar="KEY=VALUE", help="extra bundle override, repeatable: KEY=VALUE (training), eval:KEY=VALUE, all:KEY=VALUE")
    p.add_argument("--no-plot", action="store_true", help="do not draw roc_pr.png")
    p.add_argument("--verbose", action="store_true", help="echo the subprocesses' output")
    return p


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    """Entry point; returns 0 when every bundle was trained and evaluated, 1 when some failed, 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
    if not bundles:
        parser.error("--bundles is empty")
    if not Path(args.datalist).is_file():
        parser.error(f"datalist not found: {args.datalist}")
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error("--max_epochs must be >= 1")
    try:
        _split_overrides(args.extra_override)
    except ValueError as err:
        parser.error(str(err))
    runner = runner if runner is not None else SubprocessRunner(echo=args.verbose)
    print(f"comparing {', '.join(bundles)} on {args.datalist} -> {args.output_dir}")
    print(f"peak memory via {getattr(runner, 'memory_method', 'the runner')}")
    summary = compare(args.datalist, bundles, args.output_dir, runner, max_epochs=args.max_epochs, reuse=args.reuse,
                      section=args.section, extra_overrides=args.extra_override, plot=not args.no_plot)
    failed = [r["bundle"] for r in summary["results"] if r["error"]]
    if failed:
        print(f"{len(failed)} bundle(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
