"""Tests of :func:`monai_simsid.apps.calibration.acquisition_check`: does a scan's slice match the normal reference's?"""

from __future__ import annotations

import pytest

from monai_simsid.apps.calibration import SLICE_RATIO, acquisition_check


def test_acquisition_check_notes_thicker_slices_than_the_normals():
    cal = {"normal_slice_mm": [1.5, 2.5], "slice_thickness_mm": None}
    same = acquisition_check((0.7, 0.7, 2.5), cal)
    assert same == {"slice_mm": 2.5, "normal_slice_mm": 2.5, "note": None}
    assert acquisition_check((0.6, 0.6, 2.5 * SLICE_RATIO), cal)["note"] is None  # at the ratio: still alike
    thick = acquisition_check((0.63, 0.63, 5.0), cal)  # lung2's 5 mm slices against normals of 2.5 mm at most
    assert thick["slice_mm"] == 5.0 and thick["normal_slice_mm"] == 2.5
    assert "thicker" in thick["note"] and "calibration_thickness_mm 5" in thick["note"]
    # the slice is the largest voxel size, whichever axis it lies on
    assert "thicker" in acquisition_check((5.0, 0.63, 0.63), cal)["note"]
    assert acquisition_check((1.0, 1.0, 1.0), cal)["note"] is None  # thinner than thin normals: nothing to say


def test_acquisition_check_with_normals_resliced_for_thick_scans():
    cal = {"normal_slice_mm": [1.5, 2.5], "slice_thickness_mm": 5.0}
    assert acquisition_check((0.63, 0.63, 5.0), cal) == {"slice_mm": 5.0, "normal_slice_mm": 5.0, "note": None}
    thin = acquisition_check((1.0, 1.0, 1.0), cal)
    assert "re-sliced to 5 mm" in thin["note"] and "thinner" in thin["note"]
    assert "thicker" in acquisition_check((1.0, 1.0, 10.0), cal)["note"]


@pytest.mark.parametrize("cal", [{}, {"normal_slice_mm": []}, {"scan_threshold": 1.0}])
def test_acquisition_check_without_recorded_slices(cal):
    assert acquisition_check((1.0, 1.0, 5.0), cal) is None  # a checkpoint calibrated before they were recorded
