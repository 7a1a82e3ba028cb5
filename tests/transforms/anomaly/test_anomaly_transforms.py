"""Tests of the synthetic-anomaly transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_simsid.transforms.anomaly import (
    PRETEXT_CLASSES,
    CutPaste,
    CutPasted,
    EllipsoidLesion,
    EllipsoidLesiond,
    ForeignPatchBlend,
    ForeignPatchBlendd,
    RandCutPaste,
    RandCutPasted,
    RandEllipsoidLesion,
    RandEllipsoidLesiond,
    RandForeignPatchBlend,
    RandForeignPatchBlendd,
    RandScar,
    RandScard,
    RandSyntheticAnomaly,
    RandSyntheticAnomalyd,
    Scar,
    Scard,
    pretext_class_index,
)

SHAPE3 = (1, 24, 24, 24)
SHAPE2 = (2, 32, 32)


def _img(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _changed(out, img):
    return np.any(_np(out) != _np(img), axis=0, keepdims=True)


# name -> (factory, needs_foreign)
RAND = {
    "cutpaste": (lambda: RandCutPaste(), False),
    "scar": (lambda: RandScar(), False),
    "scar_sheet": (lambda: RandScar(sheet_prob=1.0), False),
    "foreign": (lambda: RandForeignPatchBlend(), True),
    "ellipsoid": (lambda: RandEllipsoidLesion(), False),
    "ellipsoid_abs": (lambda: RandEllipsoidLesion(intensity_mode="absolute", intensity_range=(1.2, 1.5)), False),
    "synthetic": (lambda: RandSyntheticAnomaly(), False),
}


def _call(t, img, needs_foreign, **kw):
    if needs_foreign:
        foreign = _img((img.shape[0], *[s - 3 for s in img.shape[1:]]), seed=99)
        return t(img, foreign=foreign, **kw)
    return t(img, **kw)


@pytest.mark.parametrize("name", sorted(RAND))
@pytest.mark.parametrize("shape", [SHAPE3, SHAPE2])
def test_mask_is_exactly_the_changed_voxels(name, shape):
    factory, needs_foreign = RAND[name]
    img = _img(shape)
    t = factory().set_random_state(3)
    for _ in range(4):
        out, mask = _call(t, img, needs_foreign)
        assert out.shape == img.shape
        assert mask.shape == (1, *shape[1:])
        assert set(np.unique(mask)).issubset({0.0, 1.0})
        assert mask.sum() > 0
        np.testing.assert_array_equal(_changed(out, img), mask > 0)
    assert np.array_equal(img, _img(shape)), "the input must not be modified in place"


@pytest.mark.parametrize("name", sorted(RAND))
def test_seed_determinism_and_replay(name):
    factory, needs_foreign = RAND[name]
    img = _img(SHAPE3, seed=1)
    t1, t2 = factory().set_random_state(7), factory().set_random_state(7)
    outs = []
    for _ in range(3):
        o1, m1 = _call(t1, img, needs_foreign)
        o2, m2 = _call(t2, img, needs_foreign)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(m1, m2)
        assert t1.get_params() == t2.get_params()
        outs.append(o1)
        # deterministic replay with the exposed parameters
        sub = t1.transforms[t1.last_kind] if isinstance(t1, RandSyntheticAnomaly) else t1
        det = sub.deterministic_class(**t1.get_params())
        o3, m3 = _call(det, img, needs_foreign)
        np.testing.assert_array_equal(o1, o3)
        np.testing.assert_array_equal(m1, m3)
    assert not np.array_equal(outs[0], outs[1]), "successive calls should draw different anomalies"
    # a different seed gives a different anomaly
    o4, _ = _call(factory().set_random_state(8), img, needs_foreign)
    o5, _ = _call(factory().set_random_state(7), img, needs_foreign)
    assert not np.array_equal(o4, o5)


@pytest.mark.parametrize("name", ["cutpaste", "scar", "foreign", "ellipsoid"])
def test_types_dtypes_and_metadata_are_kept(name):
    factory, needs_foreign = RAND[name]
    img = _img(SHAPE3, seed=2)
    out_np, m_np = _call(factory().set_random_state(0), img, needs_foreign)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(m_np, np.ndarray)

    ten = torch.as_tensor(img)
    out_t, m_t = _call(factory().set_random_state(0), ten, needs_foreign)
    assert isinstance(out_t, torch.Tensor) and not isinstance(out_t, MetaTensor)
    assert out_t.dtype == torch.float32 and isinstance(m_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out_np)
    np.testing.assert_array_equal(m_t.numpy(), m_np)

    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    meta = MetaTensor(ten.clone(), affine=affine, meta={"filename_or_obj": "case_001.nii.gz"})
    out_m, m_m = _call(factory().set_random_state(0), meta, needs_foreign)
    assert isinstance(out_m, MetaTensor) and isinstance(m_m, MetaTensor)
    assert out_m.meta["filename_or_obj"] == "case_001.nii.gz"
    torch.testing.assert_close(out_m.affine, affine.to(out_m.affine.dtype))
    np.testing.assert_array_equal(out_m.numpy(), out_np)

    ints = np.rint(img * 1000).astype(np.int16)
    out_i, m_i = _call(factory().set_random_state(0), ints, needs_foreign)
    assert out_i.dtype == np.int16
    np.testing.assert_array_equal(_changed(out_i, ints), m_i > 0)


def _center(params):
    if "dst_box" in params:
        return [a + (b - a) // 2 for a, b in params["dst_box"]]
    if params.get("kind") == "tube":
        pts = params["points"]
        return [int(round(v)) for v in pts[len(pts) // 2]]
    return [int(round(v)) for v in params["center"]]


@pytest.mark.parametrize("name", ["cutpaste", "scar", "scar_sheet", "foreign", "ellipsoid"])
def test_restrict_mask_is_honoured(name):
    factory, needs_foreign = RAND[name]
    img = _img(SHAPE3, seed=4)
    region = np.zeros(SHAPE3, dtype=np.uint8)
    region[0, 3:7, 15:19, 4:8] = 1
    t = factory().set_random_state(5)
    centers = []
    for _ in range(8):
        out, mask = _call(t, img, needs_foreign, restrict_mask=region)
        c = _center(t.get_params())
        assert region[(0, *c)] == 1, f"anomaly centre {c} is outside the restrict mask"
        centers.append(tuple(c))
        np.testing.assert_array_equal(_changed(out, img), mask > 0)
    assert len(set(centers)) > 1
    # without channel dim and as a torch tensor
    _call(t, img, needs_foreign, restrict_mask=torch.as_tensor(region[0]))
    assert region[(0, *_center(t.get_params()))] == 1
    with pytest.raises(ValueError):
        _call(t, img, needs_foreign, restrict_mask=np.zeros(SHAPE3))
    with pytest.raises(ValueError):
        _call(t, img, needs_foreign, restrict_mask=np.ones((1, 10, 10, 10)))


@pytest.mark.parametrize("name", ["cutpaste", "scar", "foreign", "ellipsoid", "synthetic"])
def test_prob_zero_is_identity(name):
    factory, needs_foreign = RAND[name]
    t = factory()
    t.prob = 0.0
    img = _img(SHAPE2)
    out, mask = _call(t, img, needs_foreign)
    assert out is img
    assert mask.shape == (1, 32, 32) and mask.sum() == 0
    assert t.get_params() is None


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (CutPaste, {"src_box": ((0, 4), (0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4))}),
        (CutPaste, {"src_box": ((4, 2), (0, 4)), "dst_box": ((0, 4), (0, 2))}),
        (CutPaste, {"src_box": ((0, 4), (0, 2)), "dst_box": ((0, 4), (0, 2)), "rot90_k": 1}),
        (CutPaste, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4)), "flip_axes": (2,)}),
        (CutPaste, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4)), "rot_axes": (1, 1)}),
        (CutPaste, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4)), "intensity_scale": 0.0}),
        (Scar, {"kind": "blob"}),
        (Scar, {"kind": "tube", "points": [[0, 0, 0]]}),
        (Scar, {"kind": "tube", "points": [[0, 0, 0], [5, 5, 5]], "thickness": 0.0}),
        (Scar, {"kind": "sheet", "center": [1, 1, 1], "normal": [0, 0, 0], "extent": 3}),
        (Scar, {"kind": "sheet", "center": [1, 1, 1], "normal": [1, 0, 0]}),
        (ForeignPatchBlend, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4)), "alpha": 0.0}),
        (ForeignPatchBlend, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 4)), "alpha": 1.5}),
        (ForeignPatchBlend, {"src_box": ((0, 4), (0, 4)), "dst_box": ((0, 4), (0, 5))}),
        (EllipsoidLesion, {"center": (5, 5, 5), "radii": (2, 0, 2), "intensity": 1.0}),
        (EllipsoidLesion, {"center": (5, 5, 5), "radii": (2, 2), "intensity": 1.0}),
        (EllipsoidLesion, {"center": (5, 5), "radii": (2, 2), "intensity": 1.0, "roughness": 1.0}),
        (EllipsoidLesion, {"center": (5, 5), "radii": (2, 2), "intensity": 1.0, "intensity_mode": "local"}),
        (RandCutPaste, {"prob": 1.5}),
        (RandCutPaste, {"box_size_range": (0.0, 0.2)}),
        (RandCutPaste, {"box_size_range": (0.3, 0.2)}),
        (RandCutPaste, {"box_size_range": (0.1, 1.2)}),
        (RandCutPaste, {"max_aspect": 0.5}),
        (RandCutPaste, {"flip_prob": -0.1}),
        (RandCutPaste, {"intensity_scale_range": (0.0, 1.0)}),
        (RandScar, {"num_points_range": (1, 3)}),
        (RandScar, {"thickness_range": (0.0, 2.0)}),
        (RandScar, {"curvature": -1.0}),
        (RandScar, {"sheet_prob": 2.0}),
        (RandForeignPatchBlend, {"alpha_range": (0.0, 0.5)}),
        (RandForeignPatchBlend, {"alpha_range": (0.5, 1.1)}),
        (RandEllipsoidLesion, {"radius_range": (-0.1, 0.2)}),
        (RandEllipsoidLesion, {"roughness_range": (0.0, 1.0)}),
        (RandEllipsoidLesion, {"intensity_mode": "weird"}),
        (RandEllipsoidLesion, {"polarity": "up"}),
        (RandSyntheticAnomaly, {"weights": {"cutpaste": 1, "bogus": 1}}),
        (RandSyntheticAnomaly, {"weights": {"cutpaste": -1, "scar": 1}}),
        (RandSyntheticAnomaly, {"weights": {"cutpaste": 0, "scar": 0}}),
        (RandSyntheticAnomaly, {"weights": {"scar": 1}, "transforms": {"scar": RandCutPaste()}}),
        (RandForeignPatchBlendd, {"keys": "image"}),
        (RandForeignPatchBlendd, {"keys": "image", "foreign_sources": []}),
    ],
)
def test_bad_constructor_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_bad_call_arguments():
    img = _img(SHAPE3)
    with pytest.raises(ValueError):  # box outside the image
        CutPaste(((0, 4), (0, 4), (20, 30)), ((0, 4), (0, 4), (0, 10)))(img)
    with pytest.raises(ValueError):  # 2D box on a 3D image
        CutPaste(((0, 4), (0, 4)), ((0, 4), (0, 4)))(img)
    with pytest.raises(ValueError):  # no channel dim
        RandCutPaste()(img[0, 0])
    with pytest.raises(ValueError):
        RandForeignPatchBlend()(img)
    with pytest.raises(ValueError):  # channel mismatch
        ForeignPatchBlend(((0, 2),) * 3, ((0, 2),) * 3)(img, foreign=np.zeros((3, 8, 8, 8)))


def test_cutpaste_values():
    img = _img((2, 10, 12, 8), seed=6).astype(np.float64)
    src, dst = ((1, 4), (2, 7), (0, 3)), ((5, 10), (6, 9), (4, 7))
    out, mask = CutPaste(src, dst, flip_axes=(2,), rot90_k=1, rot_axes=(0, 1), intensity_scale=2.0,
                         intensity_shift=0.5)(img)
    patch = np.rot90(np.flip(img[:, 1:4, 2:7, 0:3], axis=3), k=1, axes=(1, 2))
    mean = patch.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out[:, 5:10, 6:9, 4:7], (patch - mean) * 2.0 + mean + 0.5)
    expected = np.zeros((1, 10, 12, 8), bool)
    expected[0, 5:10, 6:9, 4:7] = True
    np.testing.assert_array_equal(mask > 0, expected)
    rest = ~expected[0]
    np.testing.assert_array_equal(out[:, rest], img[:, rest])


def test_scar_geometry():
    img = np.zeros((1, 16, 16, 16), np.float32)
    out, mask = Scar("tube", intensity=1.0, thickness=1.0, points=[[8, 8, 2], [8, 8, 12]])(img)
    expected = np.zeros_like(img, dtype=bool)
    expected[0, 8, 8, 2:13] = True
    np.testing.assert_array_equal(mask > 0, expected)
    np.testing.assert_array_equal(out[expected], 1.0)
    _, thick = Scar("tube", intensity=1.0, thickness=3.0, points=[[8, 8, 2], [8, 8, 12]])(img)
    assert thick.sum() > mask.sum() and thick[0, 9, 9, 5] == 1 and thick[0, 10, 8, 5] == 0
    # curved tube: 26-connected without gaps
    from scipy import ndimage

    _, curved = Scar("tube", 1.0, 1.0, points=[[2, 2, 2], [9, 5, 3], [13, 13, 11]])(img)
    _, n = ndimage.label(curved[0] > 0, structure=np.ones((3, 3, 3)))
    assert n == 1
    _, sheet = Scar("sheet", intensity=-1.0, thickness=1.0, center=[8, 8, 8], normal=[1, 0, 0], extent=4.0)(img)
    assert sheet[0, 8].sum() == sheet.sum() > 40  # a single slab orthogonal to axis 0
    assert sheet[0, 8, 8, 12] == 1 and sheet[0, 8, 8, 13] == 0


def test_foreign_blend_values():
    img, foreign = _img((1, 12, 12), 1), _img((1, 9, 9), 2)
    out, mask = ForeignPatchBlend(((1, 5), (2, 8)), ((6, 10), (0, 6)), alpha=0.25)(img, foreign=foreign)
    np.testing.assert_allclose(out[:, 6:10, 0:6], 0.75 * img[:, 6:10, 0:6] + 0.25 * foreign[:, 1:5, 2:8], rtol=1e-6)
    assert mask.sum() == 24 and mask[0, 6:10, 0:6].all()
    # a one-channel foreign image is broadcast over the channels
    out2, _ = ForeignPatchBlend(((0, 2), (0, 2)), ((0, 2), (0, 2)), alpha=1.0)(_img((2, 5, 5)), foreign=foreign)
    np.testing.assert_array_equal(out2[0, :2, :2], foreign[0, :2, :2])
    np.testing.assert_array_equal(out2[1, :2, :2], foreign[0, :2, :2])


def test_ellipsoid_intensity_modes():
    img = _img(SHAPE3, seed=3) * 0.1
    out, mask = EllipsoidLesion((12, 12, 12), (5, 4, 4), intensity=0.8, roughness=0.0)(img)
    assert abs(out[0, 12, 12, 12] - 0.8) < 0.05
    assert 100 < mask.sum() < 24**3 / 2
    assert mask[0, 12, 12, 12] == 1 and mask[0, 0, 0, 0] == 0
    bright, mb = EllipsoidLesion((12, 12, 12), (4, 4, 4), intensity=0.5, intensity_mode="relative", edge_seed=3)(img)
    dark, md = EllipsoidLesion((12, 12, 12), (4, 4, 4), intensity=-0.5, intensity_mode="relative", edge_seed=3)(img)
    np.testing.assert_array_equal(mb, md)
    inside = mb[0] > 0
    assert bright[0][inside].mean() > img[0][inside].mean() + 0.1 > dark[0][inside].mean() + 0.2
    # edge seed controls the boundary
    _, m_other = EllipsoidLesion((12, 12, 12), (4, 4, 4), 0.5, roughness=0.3, edge_seed=4)(img)
    _, m_same = EllipsoidLesion((12, 12, 12), (4, 4, 4), 0.5, roughness=0.3, edge_seed=3)(img)
    assert not np.array_equal(m_other, m_same)


def test_synthetic_anomaly_pretext_classes():
    assert pretext_class_index("normal") == 0 and pretext_class_index("cutpaste") == 1
    assert pretext_class_index("scar") == 2 and PRETEXT_CLASSES[:3] == ("normal", "cutpaste", "scar")
    with pytest.raises(ValueError):
        pretext_class_index("blob")
    img = _img(SHAPE2)
    t = RandSyntheticAnomaly(weights={"normal": 1, "cutpaste": 1, "scar": 1}).set_random_state(0)
    seen = set()
    for _ in range(30):
        out, mask = t(img)
        seen.add(t.last_class)
        if t.last_class == 0:
            assert out is img and mask.sum() == 0 and t.get_params() is None
        else:
            assert mask.sum() > 0
            assert ("dst_box" in t.get_params()) == (t.last_class == 1)
    assert seen == {0, 1, 2}
    only_scar = RandSyntheticAnomaly(weights={"scar": 1, "cutpaste": 0})
    only_scar(img)
    assert only_scar.last_kind == "scar" and only_scar.last_class == 2
    with pytest.raises(ValueError):  # foreign chosen without a foreign image
        RandSyntheticAnomaly(weights={"foreign": 1})(img)


# ------------------------------------------------------------------------------------------------------ dictionary
def test_rand_dict_versions_write_mask_and_replay():
    img = _img(SHAPE3, seed=8)
    for cls in (RandCutPasted, RandScard, RandEllipsoidLesiond):
        t = cls(keys="image").set_random_state(2)
        d = t({"image": img, "other": 1})
        np.testing.assert_array_equal(_changed(d["image"], img), d["mask"] > 0)
        assert d["mask"].sum() > 0 and d["other"] == 1
        d2 = cls(keys="image").set_random_state(2)({"image": img})
        np.testing.assert_array_equal(d["image"], d2["image"])
        det_out, _ = t.transform.deterministic_class(**t.get_params())(img)
        np.testing.assert_array_equal(det_out, d["image"])


def test_dict_mixed_types_union():
    img = _img(SHAPE3, 1)
    t = RandScard(keys=("a", "b")).set_random_state(1)
    d = t({"a": img, "b": torch.as_tensor(img)})
    np.testing.assert_array_equal(np.asarray(d["mask"]) > 0, _changed(d["a"], img))
    np.testing.assert_array_equal(d["b"].numpy(), d["a"])


def test_dict_multiple_keys_union_and_missing():
    img, img2 = _img(SHAPE3, 1), _img(SHAPE3, 2)
    existing = np.zeros(SHAPE3, np.uint8)
    existing[0, 0, 0, 0] = 1
    t = RandCutPasted(keys=("image", "pet"), restrict_key="body").set_random_state(0)
    body = np.zeros(SHAPE3, bool)
    body[0, 12:16, 12:16, 12:16] = True
    d = t({"image": img, "pet": img2, "mask": existing, "body": body})
    params = t.get_params()
    assert body[(0, *_center(params))]
    det = CutPaste(**params)
    np.testing.assert_array_equal(d["pet"], det(img2)[0])  # same anomaly on every key
    m = np.asarray(d["mask"])
    assert m.dtype == np.uint8 and m[0, 0, 0, 0] == 1
    np.testing.assert_array_equal(m > 0, _changed(d["image"], img) | _changed(d["pet"], img2) | (existing > 0))
    with pytest.raises(KeyError):
        RandCutPasted(keys=("image", "pet"))({"image": img})
    d3 = RandCutPasted(keys=("image", "pet"), allow_missing_keys=True)({"image": img})
    assert "pet" not in d3 and d3["mask"].sum() > 0
    assert RandCutPasted(keys="pet", allow_missing_keys=True)({"image": img}) == {"image": img}
    skipped = RandScard(keys="image", prob=0.0)({"image": torch.as_tensor(img)})
    assert isinstance(skipped["mask"], torch.Tensor) and skipped["mask"].sum() == 0
    assert torch.equal(skipped["image"], torch.as_tensor(img))


def test_foreign_dict_sources():
    img, other = _img(SHAPE3, 1), _img(SHAPE3, 2)
    d = RandForeignPatchBlendd(keys="image", foreign_key="foreign", alpha_range=(1.0, 1.0)).set_random_state(1)
    out = d({"image": img, "foreign": other})
    p = d.get_params()
    src = tuple(slice(a, b) for a, b in p["src_box"])
    dst = tuple(slice(a, b) for a, b in p["dst_box"])
    np.testing.assert_array_equal(out["image"][(0, *dst)], other[(0, *src)])
    np.testing.assert_array_equal(_changed(out["image"], img), out["mask"] > 0)
    sources = [np.full(SHAPE3, 5.0, np.float32), np.full(SHAPE3, -5.0, np.float32)]
    t = RandForeignPatchBlendd(keys="image", foreign_sources=sources, alpha_range=(1.0, 1.0)).set_random_state(0)
    values = set()
    for _ in range(6):
        o = t({"image": img})
        values |= set(np.unique(o["image"][o["mask"].astype(bool)]).tolist())
    assert values == {5.0, -5.0}
    with pytest.raises(ValueError):
        RandForeignPatchBlendd(keys="image", foreign_key="foreign")({"image": img})


def test_synthetic_dict_labels():
    img = _img(SHAPE3, 3)
    t = RandSyntheticAnomalyd(keys="image", weights={"normal": 1, "cutpaste": 1, "scar": 1}, label_key="label")
    t.set_random_state(4)
    labels = []
    for _ in range(15):
        d = t({"image": img})
        labels.append(d["label"])
        assert (d["mask"].sum() > 0) == (d["label"] != 0)
        np.testing.assert_array_equal(_changed(d["image"], img), d["mask"] > 0)
    assert set(labels) == {0, 1, 2}
    f = RandSyntheticAnomalyd(keys="image", weights={"foreign": 1}, foreign_key="f", label_key="y")
    d = f({"image": img, "f": _img(SHAPE3, 4)})
    assert d["y"] == 3 and d["mask"].sum() > 0


def test_deterministic_dict_versions():
    img = _img(SHAPE3, 5)
    data = {"image": img, "f": _img(SHAPE3, 6)}
    cases = [
        (
            CutPasted("image", ((0, 4),) * 3, ((10, 14),) * 3, intensity_shift=0.3),
            CutPaste(((0, 4),) * 3, ((10, 14),) * 3, intensity_shift=0.3),
            {},
        ),
        (Scard("image", "tube", 2.0, 2.0, points=[[3, 3, 3], [20, 10, 5]]),
         Scar("tube", 2.0, 2.0, points=[[3, 3, 3], [20, 10, 5]]), {}),
        (ForeignPatchBlendd("image", "f", ((0, 5),) * 3, ((5, 10),) * 3, 0.5),
         ForeignPatchBlend(((0, 5),) * 3, ((5, 10),) * 3, 0.5), {"foreign": data["f"]}),
        (EllipsoidLesiond("image", (12, 12, 12), (3, 4, 5), 0.9), EllipsoidLesion((12, 12, 12), (3, 4, 5), 0.9), {}),
    ]
    for dt, at, kw in cases:
        d = dt(dict(data))
        o, m = at(img, **kw)
        np.testing.assert_array_equal(d["image"], o)
        np.testing.assert_array_equal(d["mask"], m)
        assert m.sum() > 0
