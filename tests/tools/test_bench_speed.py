"""tools/bench_speed.py: the references it compares with, and timings that take turns."""

from __future__ import annotations

import json

import torch

from conftest import load_tool


def _tool():
    return load_tool("bench_speed")


def _in_channels(net: torch.nn.Module) -> int:
    return next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d)).in_channels


def test_reference_is_one_channel_plus_same_channels_for_a_multichannel_model():
    nets = _tool()._reference_nets({"in_channels": 3, "channels": [8, 16, 32, 64]})
    assert list(nets) == ["reference", "reference_same_channels"]
    assert nets["reference"][0] == 1 and _in_channels(nets["reference"][1]) == 1
    assert nets["reference_same_channels"][0] == 3 and _in_channels(nets["reference_same_channels"][1]) == 3
    out = nets["reference"][1](torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 1, 32, 32, 32)


def test_single_channel_model_has_one_reference_and_seeded_weights():
    tool = _tool()
    a = tool._reference_nets({"in_channels": 1, "channels": [4, 8]})
    b = tool._reference_nets({"in_channels": 1, "channels": [4, 8]})
    assert list(a) == ["reference"]
    for pa, pb in zip(a["reference"][1].parameters(), b["reference"][1].parameters()):
        assert torch.equal(pa, pb)


def test_timings_take_turns():
    order = []
    ticks = iter(range(100))
    times = _tool()._interleaved_seconds(
        {"model": lambda: order.append("model"), "reference": lambda: order.append("reference")}, 3,
        clock=lambda: float(next(ticks)),
    )
    assert order == ["model", "reference"] * 3
    assert times == {"model": [1.0] * 3, "reference": [1.0] * 3}


def test_ratio_keys_pair_runs_taken_side_by_side():
    keys = _tool()._ratio_keys(2.0, [1.0, 3.0], [1.0, 0.5, 3.0], "reference_model", "ratio_vs_reference")
    assert keys["ratio_vs_reference"] == 2.0
    assert keys["reference_model_s_min"] == 0.5
    assert keys["ratio_vs_reference_min"] == 2.0  # best model 1.0 / best reference 0.5
    assert keys["ratio_vs_reference_median"] == 1.5  # median of 1.0 / 0.5 and 3.0 / 3.0
    assert "ratio_vs_reference_min" not in _tool()._ratio_keys(2.0, [], [1.0], "reference_model", "ratio_vs_reference")


def test_small_scan_reports_both_ratios(capsys):
    rc = _tool().main(["--shapes", "48x48x32", "--device", "cpu", "--repeats", "2"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["shapes"]["48x48x32"]
    for key in ("ratio_vs_reference", "ratio_vs_reference_min", "ratio_vs_reference_median",
                "ratio_vs_reference_same_channels", "ratio_vs_reference_same_channels_min", "model_s_min"):
        assert row[key] > 0, key
