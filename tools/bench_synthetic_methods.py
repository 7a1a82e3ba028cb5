"""Score the benchmark's training-free methods on a synthetic datalist, with the metrics of ``evaluate.json``.

The learned bundles are checked on the synthetic set with their ``evaluate.json``; this tool puts the methods of
``tools/benchmark.py`` (``intensity_rule``, ``local_zscore``, ``descriptor_knn``) on the same footing: a method fits on
the datalist's ``training`` normals only, scores every ``test`` case, and
:func:`monai_simsid.metrics.compute_all_metrics` pools the voxel metrics over the lesion cases inside each case's
body mask (plus its lesion), as ``evaluate.json`` does. The scan score is the mean of the top 0.1% of the map inside
the lung region (the benchmark's). Maps are 0 outside the lung region, so a lesion outside the lungs counts as missed.

Usage::

    python tools/bench_synthetic_methods.py --datalist /tmp/syn/data/datalist.json --methods intensity_rule,descriptor_knn
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai_simsid.export.report import to_jsonable  # noqa: E402
from monai_simsid.metrics import compute_all_metrics  # noqa: E402
from monai_simsid.transforms.body.array import compute_body_mask  # noqa: E402

_spec = importlib.util.spec_from_file_location("simsid_benchmark_tool", Path(__file__).with_name("benchmark.py"))
bench = sys.modules["simsid_benchmark_tool"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

__all__ = ["evaluate_method", "main"]

METRICS = ("sample_auroc", "voxel_auroc", "voxel_ap", "aupro")


def evaluate_method(datalist: str | Path, method: str) -> dict:
    """Fit ``method`` on the datalist's training normals and compute the metrics on its test cases."""
    datalist = Path(datalist)
    data = json.loads(datalist.read_text())
    root = datalist.parent
    train = [root / d["image"] for d in data.get("training", []) if not d.get("label")]
    if not train or not data.get("test"):
        raise ValueError(f"{datalist}: needs normal 'training' entries and 'test' entries.")
    ctx = bench.BenchmarkContext(root, train)
    fn = bench.resolve_method(method)(ctx)
    scores, labels, maps, masks, regions = [], [], [], [], []
    for item in data["test"]:
        path = root / item["image"]
        image, affine, spacing = bench.load_volume(path)
        score = fn(path, image, affine, spacing)
        scores.append(bench.scan_score(score, ctx.lung_mask(image, spacing)))
        lesion = bench.load_volume(root / item["label"])[0] > 0.5 if item.get("label") else None
        labels.append(int(lesion is not None and bool(lesion.any())))
        if labels[-1]:
            maps.append(score)
            masks.append(lesion)
            regions.append(compute_body_mask(image, spacing) | lesion)
    metrics = compute_all_metrics(
        sample_scores=scores, sample_labels=labels, anomaly_maps=maps or None, lesion_masks=masks or None,
        region_masks=regions or None,
    )
    return {"method": method, "num_cases": len(scores), "metrics": metrics}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints one JSON line per method and a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datalist", required=True)
    p.add_argument("--methods", default="intensity_rule,local_zscore,descriptor_knn")
    args = p.parse_args(argv)
    rows = []
    for m in [m.strip() for m in args.methods.split(",") if m.strip()]:
        try:
            res = evaluate_method(args.datalist, m)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps(to_jsonable(res)))
        rows.append(res)
    print("| method | " + " | ".join(METRICS) + " |")
    print("| --- |" + " --- |" * len(METRICS))
    for r in rows:
        vals = [r["metrics"].get(k) for k in METRICS]
        print(f"| {r['method']} | " + " | ".join("–" if v is None else f"{float(v):.3f}" for v in vals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
