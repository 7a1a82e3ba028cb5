"""Batch inference with worker processes: the next scans are prepared while the model runs, with the same outputs.

A tiny stand-in network (one fixed convolution) keeps this fast; what is checked is the batching around the model:
``AnomalyPredictor.run`` with ``num_workers=1`` writes the same files, ``scores.csv`` and ``errors.csv`` as the
serial path, and the cases really are prepared in another process, in order.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np
import pytest
import torch

from conftest import simple_ct
from monai_simsid.apps import build_preprocessing
from monai_simsid.apps.inference import AnomalyPredictor, CasePreparer
from monai_simsid.inferers import AnomalyInferer
from monai_simsid.utils.errors import InputError

CALIBRATION = {"scan_threshold": 0.05, "scan_std": 0.02, "voxel_threshold": 0.1, "voxel_scale": 0.05, "fpr": 0.05,
               "voxel_fpr": 0.001, "source": "test", "topk_fraction": 0.01}


class _Out(NamedTuple):
    anomaly_map: torch.Tensor
    score: torch.Tensor


class _TinyNet(torch.nn.Module):
    """Deterministic stand-in for an anomaly model: |conv(x)| as the map, its mean as the window score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-0.2, 0.2, 27).reshape(1, 1, 3, 3, 3))
            self.conv.bias.fill_(0.01)

    def forward(self, x: torch.Tensor, region: torch.Tensor) -> _Out:
        amap = self.conv(x).abs()
        return _Out(amap, amap.mean(dim=(1, 2, 3, 4)))


class _PidPreparer(CasePreparer):
    """Records the process that prepared each case."""

    def __call__(self, item):
        out = super().__call__(item)
        out["pid"] = os.getpid()
        return out


def _predictor(num_workers: int = 0) -> AnomalyPredictor:
    inferer = AnomalyInferer((32, 32, 32), (2, 2, 2), sw_batch_size=2, overlap=0.25, device="cpu")
    settings = {"target_spacing": [3.0, 3.0, 3.0]}
    return AnomalyPredictor(_TinyNet(), inferer, build_preprocessing(**settings), CALIBRATION, "simsid_ct", "test",
                            preprocessing_settings=settings, write_png=False, num_workers=num_workers)


@pytest.fixture
def cases(ct_file):
    return [{"image": str(ct_file(simple_ct(seed=k), name=f"scan{k}.nii.gz"))} for k in range(3)]


def _outputs(folder):
    """Every output file's bytes, less the per-stage seconds and pynrrd's time stamp line."""
    return {p.relative_to(folder).as_posix(): re.sub(rb"\n# on [^\n]*\n", b"\n", p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("_timings.json")}


def test_workers_write_the_same_outputs_as_the_serial_path(cases, tmp_path):
    serial = _predictor(0).run(cases, tmp_path / "serial")
    prefetched = _predictor(1).run(cases, tmp_path / "workers")
    assert serial == prefetched and serial["done"] == ["scan0", "scan1", "scan2"]
    ref, got = _outputs(tmp_path / "serial"), _outputs(tmp_path / "workers")
    assert len(ref) == 1 + 3 * 4  # scores.csv + map, mask, seg.nrrd, report per case
    assert ref.keys() == got.keys()
    for name in ref:
        assert ref[name] == got[name], name


def test_cases_are_prepared_in_a_worker_in_order(cases):
    predictor = _predictor(1)
    predictor.preparer = _PidPreparer(predictor.preprocessing, predictor.preprocessing_settings)
    prepared = list(predictor._prepared_cases(cases, 1))
    assert [item["image"] for item, _ in prepared] == [c["image"] for c in cases]
    assert [p["case"] for _, p in prepared] == ["scan0", "scan1", "scan2"]
    assert all(p["pid"] != os.getpid() for _, p in prepared)
    # a case prepared in the worker predicts exactly as predict() does in this process
    here, there = predictor.predict(cases[1]), predictor.predict_prepared(prepared[1][1])
    assert np.array_equal(here.anomaly_map, there.anomaly_map) and np.array_equal(here.mask, there.mask)
    assert here.raw_score == there.raw_score and here.findings == there.findings


def test_bad_inputs_among_good_ones_with_workers(cases, ct_file, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    mri = ct_file((simple_ct() + 1000.0) / 3.0, name="mri.nii.gz")  # fails inside the preprocessing chain
    entries = [cases[0], {"image": str(empty)}, cases[1], {"image": str(mri)}, cases[2]]
    serial = _predictor(0).run(entries, tmp_path / "serial")
    result = _predictor(1).run(entries, tmp_path / "workers")
    assert result == serial and result["done"] == ["scan0", "scan1", "scan2"]
    errors = (tmp_path / "workers" / "errors.csv").read_text()
    assert errors == (tmp_path / "serial" / "errors.csv").read_text()
    rows = errors.splitlines()
    assert rows[0] == "input,problem" and len(rows) == 3
    assert "empty.nii.gz" in rows[1] and "file is empty" in rows[1]
    assert "mri.nii.gz" in rows[2] and "do not look like CT" in rows[2]
    for case in ("scan0", "scan1", "scan2"):
        assert (tmp_path / "workers" / case / f"{case}_anomaly_map.nii.gz").is_file()
    assert not (tmp_path / "workers" / "empty").exists() and not (tmp_path / "workers" / "mri").exists()
    assert (tmp_path / "workers" / "scores.csv").read_bytes() == (tmp_path / "serial" / "scores.csv").read_bytes()


def test_fail_on_error_with_workers_raises_the_one_line_error(cases, tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    entries = [cases[0], {"image": str(tmp_path / "empty.nii.gz")}, cases[1]]
    with pytest.raises(InputError) as info:
        _predictor(1).run(entries, tmp_path / "out", fail_on_error=True)
    msg = str(info.value)
    assert "empty.nii.gz" in msg and "file is empty" in msg and "\n" not in msg
    assert (tmp_path / "out" / "scan0" / "scan0_anomaly_map.nii.gz").is_file()
    assert not (tmp_path / "out" / "scan1").exists()


def test_num_workers_must_not_be_negative():
    with pytest.raises(ValueError, match="num_workers"):
        _predictor(-1)


class _DiesInWorker(CasePreparer):
    """Kills the worker process (as the kernel's out-of-memory killer would) on one case."""

    def __init__(self, *args, parent: int, victim: str) -> None:
        super().__init__(*args)
        self.parent, self.victim = parent, victim

    def __call__(self, item):
        if os.getpid() != self.parent and self.victim in item["image"]:
            os._exit(1)
        return super().__call__(item)


def test_a_dead_worker_falls_back_to_this_process(cases, tmp_path):
    predictor = _predictor(1)
    predictor.preparer = _DiesInWorker(predictor.preprocessing, predictor.preprocessing_settings, parent=os.getpid(), victim="scan1")
    result = predictor.run(cases, tmp_path / "out")
    assert result == {"done": ["scan0", "scan1", "scan2"], "failed": []}


def test_evaluate_cases_prefetches_and_matches_the_serial_path(cases, ct_file, tmp_path):
    from monai_simsid.apps.inference import evaluate_cases

    predictor = _predictor(1)
    predictor.preparer = _PidPreparer(predictor.preprocessing, predictor.preprocessing_settings)
    seen = []
    original = predictor.predict_prepared
    predictor.predict_prepared = lambda prepared, **kw: (seen.append(prepared["pid"]), original(prepared, **kw))[1]
    with_workers = evaluate_cases(predictor, cases, tmp_path / "w", write_outputs=False)
    serial = evaluate_cases(_predictor(0), cases, tmp_path / "s", write_outputs=False)
    assert len(seen) == 3 and all(pid != os.getpid() for pid in seen)  # prepared in the worker
    assert with_workers["metrics"] == serial["metrics"] and with_workers["cases"] == serial["cases"]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="bad.nii.gz"):
        evaluate_cases(_predictor(1), cases[:1] + [{"image": str(bad)}], tmp_path / "b", write_outputs=False)


def test_preparer_reads_the_file_once_and_keeps_the_input_grid(cases, monkeypatch):
    """The loaded input-grid image is reused for ``image_hu`` and the body mask: one read per case, with the same
    values and affine that a separate read gives."""
    import nibabel as nib

    from monai_simsid.transforms.io.array import LoadCT

    reads = []
    original_call = LoadCT.__call__

    def counting_call(self, path):
        reads.append(str(path))
        return original_call(self, path)

    monkeypatch.setattr(LoadCT, "__call__", counting_call)
    path = cases[0]["image"]
    prepared = CasePreparer(build_preprocessing())({"image": path})
    assert reads == [path]
    ref = nib.load(path)
    np.testing.assert_allclose(prepared["affine"], ref.affine, atol=1e-5)
    np.testing.assert_allclose(prepared["image_hu"], ref.get_fdata(), atol=1e-3)
    assert prepared["body_in"].shape == ref.shape and prepared["image"].shape[0] == 1
