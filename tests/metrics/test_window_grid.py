"""Window-grid strength: a map that repeats with the window stride is flagged, anatomy-like maps are not."""

from __future__ import annotations

import numpy as np
import pytest

from monai_simsid.metrics.grid import compute_window_grid_strength, profile_periodicity, window_stride


def test_window_stride_matches_sliding_window_layout():
    assert window_stride([64, 64, 32], 0.25) == [48, 48, 24]
    assert window_stride([32], 0.0) == [32]


def test_periodic_profile_scores_high_and_noise_low():
    rng = np.random.default_rng(0)
    n, period = 240, 24
    i = np.arange(n)
    trend = np.linspace(0, 3, n)
    periodic = trend + np.abs(((i % period) / period) - 0.5)  # rim-bright windows: a sawtooth per window
    assert profile_periodicity(periodic, period) > 0.9
    noise = trend + rng.normal(0, 0.2, n)
    assert profile_periodicity(noise, period) < 0.15
    # the same sawtooth at an unrelated period is not taken for the window grid
    other = trend + np.abs(((i % 17) / 17) - 0.5)
    assert profile_periodicity(other, period) < 0.3
    assert np.isnan(profile_periodicity(np.ones(30), period))  # shorter than two periods


def test_grid_in_a_3d_map_is_found_on_its_axis_only():
    rng = np.random.default_rng(1)
    shape, stride = (96, 120, 72), (24, 24, 24)
    amap = rng.random(shape) * 0.1
    y = np.arange(shape[1])
    amap += 0.5 * np.abs(((y % stride[1]) / stride[1]) - 0.5)[None, :, None]
    mask = np.zeros(shape, bool)
    mask[8:-8, 10:-10, 4:-4] = True
    s = compute_window_grid_strength(amap, stride, mask=mask)
    assert s[1] > 0.9 and s[0] < 0.2 and s[2] < 0.2
    with pytest.raises(ValueError):
        compute_window_grid_strength(amap, stride[:2])
    with pytest.raises(ValueError):
        compute_window_grid_strength(amap, stride, mask=mask[:-1])
