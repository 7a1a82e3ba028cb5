from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_simsid.utils import spacing_from_affine


def test_spacing_of_a_rotated_anisotropic_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [10.0, -4.0, 3.0]
    np.testing.assert_allclose(spacing_from_affine(affine), [0.7, 0.9, 2.5])
    np.testing.assert_allclose(spacing_from_affine(torch.as_tensor(affine)), [0.7, 0.9, 2.5])


def test_spacing_of_a_2d_affine():
    np.testing.assert_allclose(spacing_from_affine(np.diag([-1.5, 2.0, 1.0])), [1.5, 2.0])


@pytest.mark.parametrize("bad", [np.eye(4)[:3], np.ones(4), np.ones((1, 1))])
def test_bad_affine_raises(bad):
    with pytest.raises(ValueError, match="square"):
        spacing_from_affine(bad)


def test_one_function_everywhere():
    from monai_simsid.transforms.post import spacing_from_affine as post_spacing

    assert post_spacing is spacing_from_affine
