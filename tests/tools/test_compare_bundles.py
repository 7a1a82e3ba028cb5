"""Tests of tools/compare_bundles.py: the markdown table, the numpy ROC/PR curves, --reuse and failure handling.

The subprocess runner is replaced by a fake, so nothing is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool

REPO = Path(__file__).resolve().parents[2]




cb = load_tool("compare_bundles")

CASES = [
    {"case": "normal_005", "score": 0.2, "label": "normal", "lesion_case": False},
    {"case": "abnormal_002_ct", "score": 0.9, "label": "anomalous", "lesion_case": True},
    {"case": "abnormal_003_ct", "score": 0.4, "label": "normal", "lesion_case": True},
]


def _metrics_json(auroc=0.75):
    return {
        "bundle": "x",
        "metrics": {"sample_auroc": auroc, "sample_ap": 0.8, "voxel_auroc": None, "voxel_auroc_reason": "no maps",
                    "aupro": float("nan"), "lesion_detection_rate": 0.5},
        "cases": CASES,
    }


class FakeRunner:
    """Records the commands; 'trains' by writing model.pt and 'evaluates' by writing metrics.json and reports."""

    memory_method = "fake"

    def __init__(self, fail_train: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.fail_train = set(fail_train)

    def __call__(self, cmd, log_path):
        cmd = list(cmd)
        self.calls.append(cmd)
        out = Path(cmd[cmd.index("--output_dir") + 1])
        cfg = cmd[cmd.index("--config_file") + 1]
        bundle = Path(log_path).parent.name
        if cfg.endswith("train.json"):
            if bundle in self.fail_train:
                return cb.RunResult(1, 2.0, 100.0, "RuntimeError: boom in training\n")
            (out / "models").mkdir(parents=True, exist_ok=True)
            (out / "models" / "model.pt").write_bytes(b"fake")
            return cb.RunResult(0, 12.5, 900.0, "")
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(_metrics_json()))
        for i, c in enumerate(CASES):
            (out / c["case"]).mkdir(exist_ok=True)
            t = {"preprocess_s": 0.5, "model_s": 1.0 + i, "postprocess_s": 0.5, "write_s": 3.0}
            (out / c["case"] / f"{c['case']}_timings.json").write_text(json.dumps(t))
        return cb.RunResult(0, 9.0, 700.0, "")


def test_markdown_table_na_and_columns():
    results = [
        {"bundle": "simsid_ct", "status": "ok", "metrics": _metrics_json(0.75)["metrics"], "train_seconds": 61.23,
         "infer_seconds_per_scan": 2.345, "peak_rss_train_mib": 1500.4, "peak_rss_eval_mib": 800.0, "error": None},
        {"bundle": "ganomaly_ct", "status": "failed (train)", "metrics": None, "train_seconds": None,
         "infer_seconds_per_scan": None, "peak_rss_train_mib": None, "peak_rss_eval_mib": None,
         "error": "training exited with status 1 | bad"},
    ]
    md = cb.format_markdown(results)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["model", "status"]
    for k in ("sample_auroc", "sample_ap", "voxel_auroc", "aupro", "lesion_detection_rate", "train s", "infer s/scan"):
        assert k in header
    assert "voxel_auroc_reason" not in header
    ok = dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")]))
    assert ok["sample_auroc"] == "0.750"
    assert ok["voxel_auroc"] == "n/a"  # None
    assert ok["aupro"] == "n/a"  # NaN
    assert ok["train s"] == "61.2"
    assert ok["infer s/scan"] == "2.35"
    assert ok["peak RSS train MiB"] == "1500"
    failed_cells = lines[3].replace("\\|", "<pipe>").strip("|").split("|")
    assert len(failed_cells) == len(header)  # the error's '|' is escaped, the row keeps its columns
    failed = dict(zip(header, [c.strip() for c in failed_cells]))
    assert failed["sample_auroc"] == "n/a" and failed["train s"] == "n/a"
    assert "status 1" in failed["error"]
    assert "no maps" in md  # reason listed under the table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_pr_match_sklearn(seed):
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 25)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties included
    roc = cb.roc_curve(scores, labels)
    fpr, tpr, thr = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    np.testing.assert_allclose(roc["thresholds"][1:], thr[1:])
    assert roc["auc"] == pytest.approx(roc_auc_score(labels, scores))
    pr = cb.pr_curve(scores, labels)
    p, r, t = precision_recall_curve(labels, scores)
    np.testing.assert_allclose(pr["precision"], p)
    np.testing.assert_allclose(pr["recall"], r)
    np.testing.assert_allclose(pr["thresholds"], t)
    assert pr["ap"] == pytest.approx(average_precision_score(labels, scores))


def test_curves_small_example_and_undefined():
    roc = cb.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(roc["fpr"], [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(roc["tpr"], [0, 0.5, 0.5, 1, 1])
    assert roc["auc"] == pytest.approx(0.75)
    assert cb.roc_curve([0.1, 0.2], [1, 1]) is None  # no normals
    assert cb.pr_curve([0.1, 0.2], [0, 0]) is None  # no lesions
    with pytest.raises(ValueError):
        cb.roc_curve([0.1, 0.2, 0.3], [0, 1])


def test_reuse_skips_training(tmp_path):
    dl = tmp_path / "datalist.json"
    dl.write_text("{}")
    out = tmp_path / "out"
    ckpt = out / "simsid_ct" / "train" / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"trained before")
    runner = FakeRunner()
    rc = cb.main(["--datalist", str(dl), "--bundles", "simsid_ct,autoencoder_ct", "--output_dir", str(out), "--reuse",
                  "--max_epochs", "2", "--no-plot"], runner=runner)
    assert rc == 0
    configs = [c[c.index("--config_file") + 1] for c in runner.calls]
    trained = [c for c in configs if c.endswith("train.json")]
    # simsid_ct was reused (not trained); autoencoder_ct had no model.pt and was trained
    assert len(trained) == 1 and "autoencoder_ct" in trained[0]
    assert ckpt.read_bytes() == b"trained before"
    assert sum("evaluate.json" in c for c in configs) == 2
    ev = next(c for c in runner.calls if "simsid_ct" in c[c.index("--config_file") + 1] and "evaluate.json" in c[c.index("--config_file") + 1])
    assert ev[ev.index("--ckpt_path") + 1] == str(ckpt.resolve())
    train_cmd = next(c for c in runner.calls if c[c.index("--config_file") + 1].endswith("train.json"))
    assert train_cmd[train_cmd.index("--max_epochs") + 1] == "2"
    res = {r["bundle"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert res["simsid_ct"]["train_reused"] is True and res["simsid_ct"]["train_seconds"] is None
    assert res["autoencoder_ct"]["train_reused"] is False and res["autoencoder_ct"]["train_seconds"] == 12.5
    assert res["simsid_ct"]["metrics"]["sample_auroc"] == 0.75
    assert res["simsid_ct"]["infer_seconds_per_scan"] == pytest.approx(3.0)  # mean of 2, 3, 4 s (write excluded)
    md = (out / "results.md").read_text()
    assert "n/a (reused)" in md


def test_failed_bundle_gets_a_row_and_others_run(tmp_path):
    dl = tmp_path / "datalist.json"
    dl.write_text("{}")
    out = tmp_path / "out"
    runner = FakeRunner(fail_train={"cutpaste_ct"})
    rc = cb.main(["--datalist", str(dl), "--bundles", "cutpaste_ct,no_such_bundle,ganomaly_ct", "--output_dir", str(out),
                  "--extra-override", "roi_size=[32,32,32]", "--extra-override", "eval:sw_batch_size=2"], runner=runner)
    assert rc == 1
    res = {r["bundle"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert res["cutpaste_ct"]["status"] == "failed (train)" and "boom in training" in res["cutpaste_ct"]["error"]
    assert res["no_such_bundle"]["error"] and "no bundle" in res["no_such_bundle"]["error"]
    assert res["ganomaly_ct"]["status"] == "ok" and res["ganomaly_ct"]["metrics"]["sample_auroc"] == 0.75
    tr = next(c for c in runner.calls if "ganomaly_ct" in c[c.index("--config_file") + 1] and c[c.index("--config_file") + 1].endswith("train.json"))
    assert tr[tr.index("--roi_size") + 1] == "[32,32,32]" and "--sw_batch_size" not in tr
    ev = next(c for c in runner.calls if "evaluate.json" in c[c.index("--config_file") + 1])
    assert ev[ev.index("--sw_batch_size") + 1] == "2" and "--roi_size" not in ev
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 4  # the header and three model rows
    assert "boom in training" in md


def test_plot_written(tmp_path):
    results = [{"bundle": "a", "cases": CASES}, {"bundle": "b", "cases": [dict(c, score=1 - c["score"]) for c in CASES]},
               {"bundle": "failed", "cases": None}]
    png = cb.save_roc_pr_plot(results, tmp_path / "roc_pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_dispatches_on_bundles(tmp_path, capsys):
    bench = load_tool("benchmark", "simsid_benchmark_cmp")
    argv = ["--datalist", str(tmp_path / "missing.json"), "--bundles", "simsid_ct", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:  # handed to compare_bundles, whose parser rejects the missing datalist
        bench.main(argv)
    assert exc.value.code == 2
    assert "datalist not found" in capsys.readouterr().err
    # without --bundles the real-data benchmark still runs (and skips an absent data folder)
    assert bench.main(["--data-dir", str(tmp_path / "no_data")]) == 0
    assert "nothing to benchmark" in capsys.readouterr().out


def test_commands_are_the_documented_ones():
    import shlex

    tr = cb.train_command("simsid_ct", "/d/dl.json", "/o/simsid_ct/train", 3, [("roi_size", "[32,32,32]")], python="python")
    assert tr[:5] == ["python", "-m", "monai.bundle", "run", "--config_file"]
    assert tr[5].endswith("bundles/simsid_ct/configs/train.json")
    assert tr[6:] == ["--datalist", "/d/dl.json", "--output_dir", "/o/simsid_ct/train", "--max_epochs", "3", "--roi_size", "[32,32,32]"]
    ev = cb.eval_command("cutpaste_ct", "/m.pt", "/d/dl.json", "/e", section="validation", python="python")
    cfg = ev[ev.index("--config_file") + 1]
    assert cfg.startswith("['") and cfg.endswith("evaluate.json']") and "cutpaste_ct/configs/inference.json" in cfg
    assert ev[ev.index("--datalist_section") + 1] == "validation"
    assert "--datalist_section" not in cb.eval_command("cutpaste_ct", "/m.pt", "/d.json", "/e")  # test is the default
    shown = cb.display_command(ev)
    assert f'"{cfg}"' in shown and shlex.split(shown) == ev  # copy-pasteable
