"""Tests of the normative multi-scale descriptor memory (:mod:`monai_simsid.apps.descriptor_knn`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from monai_simsid.apps.descriptor_knn import DescriptorKNN, hessian_shape_descriptors, multiscale_descriptors


def _lung_with_vessels(seed: int, nodule_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm lung block: noisy parenchyma (-850 HU) crossed by straight vessels (radius 1.5 mm, +40 HU), and
    optionally a spherical nodule of radius ``nodule_mm`` at the centre. Returns the image and the nodule mask."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    img = rng.normal(-850.0, 30.0, shape).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    for _ in range(6):
        point, direction = rng.uniform(5, 35, 3), rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        rel = grid - point
        dist = np.linalg.norm(rel - (rel @ direction)[..., None] * direction, axis=-1)
        img[dist <= 1.5] = 40.0
    nodule = np.linalg.norm(grid - 19.5, axis=-1) <= nodule_mm
    img[nodule] = 40.0
    return img, nodule


@pytest.fixture(scope="module")
def fitted():
    normals = [_lung_with_vessels(s)[0] for s in (1, 2, 3)]
    masks = [np.ones(n.shape, bool) for n in normals]
    knn = DescriptorKNN(scales_mm=(1.5, 3.0, 5.0), k=5, bank_size=20000).fit(normals, masks, [(1.0, 1.0, 1.0)] * 3)
    return knn, normals, masks


def test_descriptors_are_smoothed_hu_in_mm():
    img = np.full((20, 20, 8), -800.0, np.float32)
    img[10, 10, 4] = 400.0
    mask = np.zeros(img.shape, bool)
    mask[10, 10, 4] = mask[2, 2, 2] = True
    f = multiscale_descriptors(img, (1.0, 1.0, 4.0), mask, scales_mm=(1.0, 4.0))
    assert f.shape == (2, 2) and f.dtype == np.float32
    # row order follows the mask's C order: (2,2,2) then (10,10,4); the point raises the finer scale more
    assert f[0, 0] == pytest.approx(-800.0, abs=1e-3)
    assert f[1, 0] > f[1, 1] > -800.0
    clipped = multiscale_descriptors(np.where(img > 0, 3000.0, img), (1.0, 1.0, 4.0), mask, scales_mm=(1.0, 4.0))
    np.testing.assert_allclose(clipped, f)  # HU above 400 is clipped: a metal voxel counts as dense tissue
    with pytest.raises(ValueError, match="scales_mm"):
        multiscale_descriptors(img, (1.0, 1.0, 1.0), scales_mm=(0.0,))


def test_nodule_scores_above_vessels_and_parenchyma(fitted):
    knn = fitted[0]
    image, nodule = _lung_with_vessels(seed=7, nodule_mm=5.0)  # a scan not in the bank
    vessels = (image > -400) & ~ndimage.binary_dilation(nodule, iterations=3)
    whole = np.ones(image.shape, bool)
    score = knn(image, whole, (1.0, 1.0, 1.0))
    assert score.shape == image.shape and score.dtype == np.float32
    assert vessels.sum() > 200
    # dense tissue alone is not anomalous (every normal has vessels); a dense blob wider than a vessel is
    assert score[nodule].mean() > np.percentile(score[vessels], 99)
    assert score[nodule].mean() > 3 * np.median(score)
    mask = np.zeros(image.shape, bool)
    mask[10:30, 10:30, 10:30] = True
    inside = knn(image, mask, (1.0, 1.0, 1.0))
    assert np.all(inside[~mask] == 0) and np.all(inside[mask] > 0)
    # a voxel's descriptor needs only its neighbourhood: scoring inside a mask equals scoring everywhere there
    np.testing.assert_allclose(inside[mask], score[mask], rtol=1e-5)


def test_bank_comes_from_normal_masks_only(fitted):
    knn, normals, masks = fitted
    assert knn.bank.shape == (20000, 3 + 2 * 3)  # smoothed HU at 3 scales, blob and tube strength at 3 (default)
    pooled = np.concatenate([
        np.concatenate([
            multiscale_descriptors(n, (1.0, 1.0, 1.0), m, knn.scales_mm),
            hessian_shape_descriptors(n, (1.0, 1.0, 1.0), m, knn.shape_scales_mm),
        ], axis=1)
        for n, m in zip(normals, masks)
    ])
    np.testing.assert_allclose(knn.bank.std(axis=0), np.ones(9), atol=0.05)  # features divided by their normal spread
    # every bank row is one of the normal descriptors (a sample, nothing else)
    bank = knn.bank.astype(np.float64) * knn.scale
    dist, _ = cKDTree(pooled).query(bank[:200], k=1)
    assert np.max(dist) < 1e-2


def test_state_round_trip_and_errors(fitted):
    knn, normals, masks = fitted
    img, sp = normals[0], (1.0, 1.0, 1.0)
    again = DescriptorKNN.from_dict(knn.state_dict())
    np.testing.assert_array_equal(again(img, masks[0], sp), knn(img, masks[0], sp))
    with pytest.raises(RuntimeError, match="not fitted"):
        DescriptorKNN()(img, masks[0], sp)
    with pytest.raises(ValueError, match="missing"):
        DescriptorKNN.from_dict({"scales_mm": [1.0], "k": 1})
    with pytest.raises(ValueError, match="do not fit"):
        DescriptorKNN.from_dict({**knn.state_dict(), "scale": np.ones(2)})
    with pytest.raises(ValueError, match="k must be"):
        DescriptorKNN(k=0)
    with pytest.raises(ValueError, match="same length"):
        DescriptorKNN().fit([img], [], [sp])
    with pytest.raises(ValueError, match="shape"):
        knn(img, masks[0][:-1], sp)


def _chest(seed: int, mass: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A 3 mm chest phantom (:func:`conftest.simple_ct` with lung vessels) and, optionally, a soft-tissue mass of
    radius 15 mm inside the right lung, touching its lateral wall (a juxtapleural mass). Returns image and mass mask."""
    from conftest import simple_ct

    shape = (64, 64, 48)
    img = simple_ct(shape, seed=seed)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    lungs = img < -400
    for _ in range(8):  # vessels (radius 1 voxel) crossing the lungs
        point, direction = rng.uniform(10, 50, 3), rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        rel = grid - point
        img[(np.linalg.norm(rel - (rel @ direction)[..., None] * direction, axis=-1) <= 1.0) & lungs] = 40.0
    centre = np.array([(0.62 + 1) / 2 * 63, 31.5, 23.5])  # the lung spans x in 0.1..0.7 (normalised)
    blob = (np.linalg.norm(grid - centre, axis=-1) <= 5.0) & lungs if mass else np.zeros(shape, bool)
    img[blob] = 40.0
    return img, blob


def test_lung_envelope_depth_is_signed_and_exact():
    from monai_simsid.apps.descriptor_knn import DEPTH_RANGE_MM, lung_envelope_depth
    from monai_simsid.apps.rules import lung_region_mask

    img, sp = _chest(0)[0], (3.0, 3.0, 3.0)
    depth = lung_envelope_depth(img, sp).reshape(img.shape)
    env = lung_region_mask(img, sp, dilation_mm=0.0)
    assert env.any() and np.all(depth[env] > 0) and np.all(depth[~env] <= 0)
    # the bounding-box computation equals the whole-array signed distance (the array's edge outside), clipped
    padded = np.pad(env, 1)
    full = ndimage.distance_transform_edt(padded, sampling=sp) - ndimage.distance_transform_edt(~padded, sampling=sp)
    np.testing.assert_allclose(depth, np.clip(full[1:-1, 1:-1, 1:-1], *DEPTH_RANGE_MM), atol=1e-4)
    # a field of view cut through the lungs: voxels at the cut are not deep
    cut = lung_envelope_depth(img[:, :, 20:], sp).reshape(img[:, :, 20:].shape)
    assert np.all(cut[:, :, 0] <= 3.0) and np.all(cut[:, :, 0][env[:, :, 20]] > 0)
    mask = env & (np.arange(img.shape[0])[:, None, None] < 32)
    np.testing.assert_allclose(lung_envelope_depth(img, sp, mask), depth[mask])
    air = np.full((20, 20, 20), -1000.0, np.float32)  # no body, no envelope: the outside limit everywhere
    assert np.all(lung_envelope_depth(air, sp) == DEPTH_RANGE_MM[0])


def test_depth_context_tells_a_juxtapleural_mass_from_the_chest_wall():
    from monai_simsid.apps.rules import lung_region_mask

    sp = (3.0, 3.0, 3.0)
    normals = [_chest(s)[0] for s in (1, 2, 3)]
    regions = [lung_region_mask(n, sp) for n in normals]
    image, mass = _chest(7, mass=True)
    region = lung_region_mask(image, sp)
    assert mass.sum() > 50 and np.all(region[mass])  # the envelope's closing takes the juxtapleural mass in
    above = {}
    for context in (None, "lung_depth"):
        # smoothed HU only: the shape features also tell the mass from the chest wall, and would hide the context's part
        knn = DescriptorKNN(k=5, bank_size=30000, context=context, shape_scales_mm=())
        score = knn.fit(normals, regions, [sp] * 3)(image, region, sp)[region]
        y = mass[region]
        # share of the mass above the 99th percentile of the rest of the region (chest-wall band, vessels, lung)
        above[context] = (score[y] > np.percentile(score[~y], 99)).mean()
    # soft tissue is normal in the chest-wall band that the region includes; deep inside the envelope it is not
    assert above["lung_depth"] > 0.85
    assert above["lung_depth"] > above[None] + 0.2


def test_context_is_validated_and_kept_in_the_state(tmp_path):
    with pytest.raises(ValueError, match="context"):
        DescriptorKNN(context="depth")
    img, sp = _chest(1)[0], (3.0, 3.0, 3.0)
    from monai_simsid.apps.rules import lung_region_mask

    region = lung_region_mask(img, sp)
    knn = DescriptorKNN(scales_mm=(3.0, 6.0), k=3, bank_size=5000, context="lung_depth", shape_scales_mm=())
    knn.fit([img], [region], [sp])
    assert knn.bank.shape == (5000, 3) and knn.num_features == 3
    path = knn.save(tmp_path / "memory.npz")
    again, _ = DescriptorKNN.load(path)
    assert again.context == "lung_depth"
    np.testing.assert_array_equal(again(img, region, sp), knn(img, region, sp))
    with pytest.raises(ValueError, match="do not fit"):  # a context-free state cannot take this bank
        DescriptorKNN.from_dict({**knn.state_dict(), "context": None})


def test_fit_scans_streams_a_uniform_sample_of_all_scans():
    """Scans read one at a time give the same bank as lists, and the bank samples every voxel alike."""
    sp = (1.0, 1.0, 1.0)
    images = [np.full((30, 30, 30), hu, np.float32) for hu in (-800.0, -600.0)]
    masks = [np.ones((30, 30, 30), bool), np.zeros((30, 30, 30), bool)]
    masks[1][:10] = True  # 9000 voxels against 27000
    knn = DescriptorKNN(scales_mm=(2.0,), k=3, bank_size=4000, seed=3)
    streamed = knn.fit_scans(iter(list(zip(images, masks, [sp, sp])))).bank.copy()
    np.testing.assert_array_equal(streamed, knn.fit(images, masks, [sp, sp]).bank)
    raw = knn.bank[:, 0] * knn.scale[0]
    from_first = int(np.sum(np.abs(raw + 800.0) < 1.0))
    assert from_first + int(np.sum(np.abs(raw + 600.0) < 1.0)) == 4000
    assert abs(from_first - 3000) < 150  # 27000 of 36000 voxels: 3/4 of the bank (hypergeometric sd ~24)
    with pytest.raises(ValueError, match="no normal scan"):
        knn.fit_scans(iter([]))


def test_hessian_shape_tells_a_blob_from_a_tube_and_a_sheet():
    shape, sp = (48, 48, 48), (1.0, 1.0, 1.0)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    img = np.full(shape, -850.0, np.float32)
    img[np.linalg.norm(grid - (12, 12, 24), axis=-1) <= 3.0] = 40.0  # a blob (nodule) of radius 3 mm
    img[np.linalg.norm(grid[..., :2] - (36, 12), axis=-1) <= 2.0] = 40.0  # a tube (vessel) along z, radius 2 mm
    img[:, 34:37, :] = np.where(grid[:, 34:37, :, 0] > 20, 40.0, img[:, 34:37, :])  # a sheet (fissure), 3 mm thick
    centres = [(12, 12, 24), (36, 12, 24), (36, 35, 24), (12, 24, 40)]  # blob, tube, sheet, parenchyma
    mask = np.zeros(shape, bool)
    for c in centres:
        mask[c] = True
    f = hessian_shape_descriptors(img, sp, mask, scales_mm=(2.0,))
    assert f.shape == (4, 2) and f.dtype == np.float32
    order = np.argsort([np.ravel_multi_index(c, shape) for c in centres])  # rows follow the mask's C order
    blob, tube, sheet, lung = f[np.argsort(order)]
    # curved down in all three directions only in the blob; in at least two in the blob and the tube
    assert blob[0] > 100 and blob[0] > 5 * tube[0] and blob[0] > 5 * sheet[0]
    assert tube[1] > 100 and tube[1] > 5 * sheet[1]
    np.testing.assert_allclose(lung, 0.0, atol=1.0)
    # derivatives are in mm and scale-normalised: the same blob sampled at 2 mm gives about the same strength
    coarse = hessian_shape_descriptors(img[::2, ::2, ::2], (2.0, 2.0, 2.0), None, (2.0,)).reshape(24, 24, 24, 2)
    assert coarse[6, 6, 12, 0] == pytest.approx(blob[0], rel=0.25)
    # a width finer than the voxels is taken at one voxel (second derivatives below the sampling are noise)
    np.testing.assert_array_equal(
        hessian_shape_descriptors(img[::2, ::2, ::2], (2.0, 2.0, 2.0), None, (0.5,)), coarse.reshape(-1, 2)
    )
    assert hessian_shape_descriptors(img, sp, mask, scales_mm=()).shape == (4, 0)
    # a spacing read back in float32 (0.8 -> 0.800000012) gives the same features: no derivative kernel is cut short
    # enough for its sum, times the -850 HU of the lung, to show (scipy's default cut did, at 1.875 voxels)
    lung = np.random.default_rng(0).normal(-850.0, 20.0, (30, 30, 24)).astype(np.float32)
    exact = hessian_shape_descriptors(lung, (0.6, 0.6, 0.8), None, (1.5,))
    rounded = hessian_shape_descriptors(lung, tuple(float(np.float32(s)) for s in (0.6, 0.6, 0.8)), None, (1.5,))
    np.testing.assert_allclose(rounded, exact, atol=0.05)
    with pytest.raises(ValueError, match="shape_scales_mm"):
        hessian_shape_descriptors(img, sp, mask, scales_mm=(-1.0,))


def test_shape_features_tell_a_small_nodule_from_vessels():
    """A nodule hardly wider than the vessels: smoothed HU alone ranks it among the vessel crossings; with the
    Hessian shape features it stands above every vessel."""
    sp = (1.0, 1.0, 1.0)
    normals = [_lung_with_vessels(s)[0] for s in (1, 2, 3, 4)]
    masks = [np.ones(n.shape, bool) for n in normals]
    image, nodule = _lung_with_vessels(seed=7, nodule_mm=2.5)
    vessels = (image > -400) & ~ndimage.binary_dilation(nodule, iterations=3)
    whole = np.ones(image.shape, bool)
    above = {}
    for shape_scales in ((), (1.5, 3.0)):
        knn = DescriptorKNN(scales_mm=(1.5, 3.0, 5.0), k=5, bank_size=30000, shape_scales_mm=shape_scales)
        score = knn.fit(normals, masks, [sp] * 4)(image, whole, sp)
        assert knn.bank.shape[1] == 3 + 2 * len(shape_scales)
        above[shape_scales] = score[nodule].max() / np.percentile(score[vessels], 99.5)
    assert above[()] < 1.0 < above[(1.5, 3.0)]


def test_shape_features_are_kept_in_the_state_and_without_context():
    from monai_simsid.apps.rules import lung_region_mask

    img, sp = _chest(1)[0], (3.0, 3.0, 3.0)
    region = lung_region_mask(img, sp)
    knn = DescriptorKNN(scales_mm=(3.0, 6.0), k=3, bank_size=5000, context="lung_depth", shape_scales_mm=(3.0,))
    knn.fit([img], [region], [sp])
    assert knn.num_features == 2 + 2 + 1 and knn.bank.shape == (5000, 5)
    again = DescriptorKNN.from_dict(knn.state_dict())
    assert again.shape_scales_mm == (3.0,)
    np.testing.assert_array_equal(again(img, region, sp), knn(img, region, sp))
    crop = knn.without_context()  # drops the depth (the last feature) and keeps the shape features
    assert crop.context is None and crop.shape_scales_mm == (3.0,)
    np.testing.assert_array_equal(crop.bank, knn.bank[:, :4])
    # a memory stored before the shape features: its state has no shape_scales_mm, and it describes without them
    old = {**knn.state_dict(), "bank": knn.bank[:, [0, 1, 4]], "scale": knn.scale[[0, 1, 4]]}
    del old["shape_scales_mm"]
    assert DescriptorKNN.from_dict(old).shape_scales_mm == ()
    with pytest.raises(ValueError, match="shape_scales_mm"):
        DescriptorKNN(shape_scales_mm=(0.0,))


def test_a_memory_keeps_a_subset_of_its_shape_widths():
    """``with_shape_scales`` gives the memory that fitting with those widths would give, from the same voxels."""
    normals = [_lung_with_vessels(s)[0] for s in (1, 2)]
    masks, sp = [np.ones(n.shape, bool) for n in normals], [(1.0, 1.0, 1.0)] * 2
    args = dict(scales_mm=(1.5, 3.0), k=3, bank_size=4000, context="lung_depth")
    wide = DescriptorKNN(shape_scales_mm=(1.5, 3.0, 8.0), **args).fit(normals, masks, sp)
    narrow = DescriptorKNN(shape_scales_mm=(1.5, 8.0), **args).fit(normals, masks, sp)
    kept = wide.with_shape_scales((1.5, 8.0))
    assert kept.shape_scales_mm == (1.5, 8.0) and kept.context == "lung_depth" and kept.num_features == 2 + 4 + 1
    np.testing.assert_allclose(kept.bank, narrow.bank, rtol=1e-6)
    np.testing.assert_allclose(kept.scale, narrow.scale, rtol=1e-6)
    assert np.array_equal(kept.bank_sources, wide.bank_sources)
    assert wide.with_shape_scales(()).num_features == 2 + 1
    with pytest.raises(ValueError, match="not among"):
        wide.with_shape_scales((5.0,))
    with pytest.raises(RuntimeError, match="not fitted"):
        DescriptorKNN().with_shape_scales(())


def test_a_wide_shape_width_sees_the_centre_of_a_large_mass():
    """A mass of 30 mm is flat inside: at widths of 1.5 and 3 mm its centre has no curvature, like parenchyma, and
    at 5 mm little; at a width near its radius / sqrt(3) it is a blob (why whole scans get a width of 8 mm)."""
    shape, sp = (40, 40, 40), (2.0, 2.0, 2.0)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) * 2.0 for n in shape], indexing="ij"), -1)
    img = np.full(shape, -850.0, np.float32)
    img[np.linalg.norm(grid - 40.0, axis=-1) <= 15.0] = 40.0
    centre = np.zeros(shape, bool)
    centre[20, 20, 20] = True
    blob = hessian_shape_descriptors(img, sp, centre, (1.5, 3.0, 5.0, 8.0))[0, ::2]
    assert np.all(blob[:2] < 0.01 * blob[3]) and blob[3] > 3 * blob[2] and blob[3] > 100


def test_descriptors_are_the_same_on_one_thread_and_on_several():
    """The Gaussian filters run on torch's thread count in parallel (scipy releases the GIL): same results."""
    import torch

    image, _ = _lung_with_vessels(seed=5, nodule_mm=3.0)
    mask = image > -900
    threads = torch.get_num_threads()
    try:
        out = {}
        for n in (1, 3):
            torch.set_num_threads(n)
            out[n] = (
                multiscale_descriptors(image, (1.0, 1.0, 1.2), mask, (1.5, 3.0)),
                hessian_shape_descriptors(image, (1.0, 1.0, 1.2), mask, (1.5, 4.0)),
            )
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(out[1], out[3]):
        assert one.shape[0] == mask.sum() and np.array_equal(one, several)
    # and the same as scipy's filter on the whole image, read at the mask
    np.testing.assert_array_equal(out[1][0][:, 1], ndimage.gaussian_filter(image, (3.0, 3.0, 2.5), mode="nearest")[mask])


def test_closed_form_eigenvalues_match_lapack():
    from monai_simsid.apps.descriptor_knn import _symmetric_eigenvalues

    rng = np.random.default_rng(0)
    h = rng.normal(size=(5000, 3, 3)) * rng.uniform(0.01, 100, size=(5000, 1, 1))
    h = h + h.transpose(0, 2, 1)
    h[:3] = np.diag([2.0, 2.0, 2.0])  # degenerate: a multiple of the identity, and two equal eigenvalues
    h[3:6] = np.diag([-1.0, 3.0, 3.0])
    h[6] = 0.0
    got = np.stack(_symmetric_eigenvalues(h[:, 0, 0], h[:, 1, 1], h[:, 2, 2], h[:, 0, 1], h[:, 0, 2], h[:, 1, 2]), 1)
    np.testing.assert_allclose(got, np.linalg.eigvalsh(h), atol=1e-7 * np.abs(h).max())


def test_hu_ceiling_reads_contrast_as_dense_soft_tissue_and_is_kept(tmp_path):
    """``hu_max`` clips the HU before they are described: with 130, a 500 HU vessel describes as a 130 HU one; the
    setting rides with the state, the file and every derived memory; a state without it clips at 400."""
    img, _ = _lung_with_vessels(1)
    bright, ceiling = img.copy(), img.copy()
    bright[img > 0], ceiling[img > 0] = 500.0, 130.0
    sp = (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(multiscale_descriptors(bright, sp, hu_max=130), multiscale_descriptors(ceiling, sp))
    np.testing.assert_array_equal(hessian_shape_descriptors(bright, sp, hu_max=130), hessian_shape_descriptors(ceiling, sp))
    assert not np.allclose(multiscale_descriptors(bright, sp), multiscale_descriptors(ceiling, sp))  # 400 by default
    knn = DescriptorKNN(scales_mm=(1.5, 3.0), k=3, bank_size=3000, hu_max=130).fit([img], [np.ones(img.shape, bool)], [sp])
    mask = np.ones(img.shape, bool)
    np.testing.assert_array_equal(knn(bright, mask, sp), knn(ceiling, mask, sp))
    assert DescriptorKNN.from_dict(knn.state_dict()).hu_max == 130.0 and knn.without_context().hu_max == 130.0
    knn.save(tmp_path / "m.npz")
    assert DescriptorKNN.load(tmp_path / "m.npz")[0].hu_max == 130.0
    old = knn.state_dict()
    del old["hu_max"]
    assert DescriptorKNN.from_dict(old).hu_max == 400.0
    for bad in (-500, float("nan")):
        with pytest.raises(ValueError, match="hu_max"):
            DescriptorKNN(hu_max=bad)


def test_a_ceiling_at_unenhanced_blood_makes_the_memory_blind_to_contrast():
    """simsid_ct clips at 40 HU (unenhanced blood): a memory of contrast-enhanced normals (vessels at 300 HU) scores
    one of them imaged without contrast (vessels at 45 HU) as it scores it with contrast. With a ceiling of 130 the
    unenhanced vessels lie 85 HU below every normal vessel and score higher: the phase itself looks anomalous."""
    def anatomy(seed: int) -> tuple[np.ndarray, np.ndarray]:  # vessels 3.5 mm in radius, as at the hilum
        img, _ = _lung_with_vessels(seed)
        return img, ndimage.binary_dilation(img > 0, iterations=2)

    def phase(img: np.ndarray, vessels: np.ndarray, vessel_hu: float) -> np.ndarray:
        out = img.copy()
        out[vessels] = vessel_hu
        return out

    normals = [phase(*anatomy(s), 300.0) for s in (1, 2, 3)]
    masks = [np.ones(n.shape, bool) for n in normals]
    test, vessels = anatomy(1)  # the anatomy of the first normal
    sp = (1.0, 1.0, 1.0)
    for ceiling in (40.0, 130.0):
        knn = DescriptorKNN(scales_mm=(1.5, 3.0), shape_scales_mm=(1.5,), k=3, bank_size=20000, hu_max=ceiling)
        knn.fit(normals, masks, [sp] * 3)
        mask = np.ones(test.shape, bool)
        plain, enhanced = knn(phase(test, vessels, 45.0), mask, sp), knn(phase(test, vessels, 300.0), mask, sp)
        if ceiling == 40.0:
            np.testing.assert_array_equal(plain, enhanced)
        else:
            assert np.median(plain[vessels]) > 1.2 * np.median(enhanced[vessels])
