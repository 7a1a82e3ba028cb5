"""Property test: the preprocessing round trip restores any input geometry exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import simple_ct
from monai_simsid.apps import build_preprocessing, invert_to_input

PRE = build_preprocessing(target_spacing=[3.0, 3.0, 3.0], pad_divisor=16)


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(16, 40), st.integers(16, 40), st.integers(8, 30)),
    spacing=st.tuples(*[st.floats(0.6, 4.0)] * 3),
    origin=st.tuples(*[st.floats(-300, 300)] * 3),
    angles=st.tuples(*[st.floats(-0.6, 0.6)] * 3),
    flip=st.sampled_from([(1, 1, 1), (-1, -1, 1), (1, -1, -1)]),
)
def test_round_trip_restores_shape_and_affine(tmp_path_factory, shape, spacing, origin, angles, flip):
    aff = np.eye(4)
    aff[:3, :3] = _rotation(*angles) @ np.diag(np.asarray(spacing) * np.asarray(flip))
    aff[:3, 3] = origin
    path = tmp_path_factory.mktemp("geo") / "x.nii.gz"
    nib.save(nib.Nifti1Image(simple_ct(shape=shape), aff), str(path))
    d = PRE({"image": path})
    out = invert_to_input(torch.ones_like(d["image"]), d, PRE)
    assert tuple(out.shape[1:]) == shape
    np.testing.assert_allclose(out.affine.numpy(), aff, atol=1e-5)
