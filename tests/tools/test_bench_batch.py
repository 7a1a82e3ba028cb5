"""tools/bench_batch.py: the random-weights predictor matches the bundle's inputs, and failures are not timed."""

from __future__ import annotations

import argparse

import pytest

from conftest import load_tool


def _args(folder, out, **kw):
    base = dict(threads=0, input=str(folder), one_run=0, device="cpu", sw_batch_size=2, overlap=0.25, every=1,
                output=str(out))
    return argparse.Namespace(**{**base, **kw})


def test_predictor_input_has_the_network_channels_and_every_scan_runs(tmp_path):
    tool = load_tool("bench_batch")
    paths = tool.write_scans(tmp_path / "scans", 2, [48, 48, 32], [3.0, 3.0, 3.0], 1)
    predictor, cfg = tool.build_predictor(0, "cpu", 2, 0.25)
    x = predictor.preprocessing({"image": paths[0]})["image"]
    assert x.shape[0] == cfg["in_channels"] == 3  # the training default: three HU windows
    run = tool.run_once(_args(tmp_path / "scans", tmp_path / "out"))
    assert run["done"] == 2 and run["failed"] == 0
    assert [s["scans"] for s in run["memory_mib"]] == [1, 2]


def test_failed_scans_stop_the_run(tmp_path):
    tool = load_tool("bench_batch")
    tool.write_scans(tmp_path / "scans", 1, [48, 48, 32], [3.0, 3.0, 3.0], 1)
    (tmp_path / "scans" / "broken.nii.gz").write_bytes(b"not a nifti")  # a batch goes on past a bad file
    with pytest.raises(RuntimeError, match="1 of 2 scans failed.*broken"):
        tool.run_once(_args(tmp_path / "scans", tmp_path / "out"))
