"""Synthetic-anomaly supervision of SimSID: batched corruption, anomaly head, and the no-leak restoration check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_simsid.losses.simsid import AnomalyHeadLoss, SimSIDLoss, masked_restoration_loss
from monai_simsid.networks.nets.simsid import SimSID, SimSIDOutput
from monai_simsid.transforms.anomaly.batch import BatchAnomalyCorruption

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 16, 32), embed_dim=16, num_heads=4, num_slots=16, top_k=3, disc_channels=(4, 8, 8, 8, 8))


# ------------------------------------------------------------------------------------------- batched corruption
def test_corruption_reproducible_and_mask_exact():
    x = torch.rand(4, 2, 16, 16, 16, dtype=torch.float64)
    corrupt = BatchAnomalyCorruption(clean_fraction=0.0, max_anomalies=3, seed=5)
    a, ma, ia = corrupt(x, seed=7)
    b, mb, ib = corrupt(x, seed=7)
    c, mc, _ = corrupt(x, seed=8)
    assert torch.equal(a, b) and torch.equal(ma, mb) and ia == ib
    assert not torch.equal(a, c)
    assert a.dtype == x.dtype and ma.shape == (4, 1, 16, 16, 16) and ma.dtype == torch.float32
    assert set(torch.unique(ma).tolist()) <= {0.0, 1.0} and ma.sum() > 0
    assert torch.equal(ma.bool(), (a != x).any(1, keepdim=True))  # exactly the changed voxels
    assert all(len(w) >= 1 for w in ia)
    # another base seed gives other anomalies
    d, _, _ = BatchAnomalyCorruption(clean_fraction=0.0, max_anomalies=3, seed=6)(x, seed=7)
    assert not torch.equal(a, d)


def test_corruption_clean_fraction_kinds_and_clip():
    x = torch.rand(8, 1, 16, 16)  # 2D works too
    all_clean = BatchAnomalyCorruption(clean_fraction=1.0)
    y, m, info = all_clean(x, seed=0)
    assert torch.equal(y, x) and m.sum() == 0 and info == [[]] * 8
    for kind in ("ellipsoid", "foreign", "cutpaste"):
        corrupt = BatchAnomalyCorruption(clean_fraction=0.0, weights={kind: 1.0}, clip=(0.0, 1.0), seed=1)
        y, m, info = corrupt(x, seed=3)
        assert {p["kind"] for w in info for p in w} == {kind}
        assert torch.equal(m.bool(), (y != x).any(1, keepdim=True)) and m.sum() > 0
        assert y.min() >= 0 and y.max() <= 1
    # mostly bright ellipsoids: the mean change inside the masks is positive
    bright = BatchAnomalyCorruption(clean_fraction=0.0, weights={"ellipsoid": 1.0}, bright_prob=1.0, seed=2)
    y, m, _ = bright(torch.full((4, 1, 24, 24, 24), 0.2), seed=0)
    assert ((y - 0.2)[m.bool()] > 0).all()
    with pytest.raises(ValueError):
        BatchAnomalyCorruption(weights={"scar": 1.0})
    with pytest.raises(ValueError):
        BatchAnomalyCorruption(clean_fraction=1.5)


WINDOWS = [[-1000, -400], [-160, 240], [-1000, 500]]


def _windowed(hu: torch.Tensor) -> torch.Tensor:
    from monai_simsid.transforms import HUWindows

    return torch.stack([HUWindows(WINDOWS)(h).as_tensor() for h in hu])


def test_tissue_lesions_are_one_density_in_every_window():
    torch.manual_seed(0)
    hu = -850.0 + 30.0 * torch.randn(4, 1, 24, 24, 24)  # noisy lung
    x = _windowed(hu)
    corrupt = BatchAnomalyCorruption(clean_fraction=0.0, weights={"tissue": 1.0}, hu_windows=WINDOWS,
                                     tissue_hu_range=(40.0, 40.0), radius_range=(0.2, 0.3), seed=3)
    y, m, info = corrupt(x, seed=1)
    y2, m2, _ = corrupt(x, seed=1)
    assert torch.equal(y, y2) and torch.equal(m, m2)
    assert {p["kind"] for w in info for p in w} == {"tissue"} and m.sum() > 0
    assert torch.equal(m.bool(), (y != x).any(1, keepdim=True))
    # every changed voxel is one HU value seen through the three windows: back from the wide one, windowed again
    wide_hu = (y[:, 2:3] + 1.0) / 2.0 * 1500.0 - 1000.0
    changed = m.expand_as(y).bool()  # up to min_change (1e-3), which undoes tiny changes channel by channel
    assert torch.allclose(_windowed(wide_hu)[changed], y[changed], atol=2e-3)
    # the lesion's core reaches 40 HU: the lung window saturates, the soft-tissue window is mid-grey (0.0)
    core = (wide_hu - 40.0).abs() < 1.0
    assert core.sum() > 0
    assert torch.allclose(y[:, 0:1][core], torch.ones(()), atol=1e-4)
    assert torch.allclose(y[:, 1:2][core], torch.zeros(()), atol=0.01)
    # an additive ellipsoid shifts every channel alike: the channels then no longer show one HU value
    plain, pm, _ = BatchAnomalyCorruption(clean_fraction=0.0, weights={"ellipsoid": 1.0}, radius_range=(0.2, 0.3),
                                         bright_prob=1.0, value_range=(-1, 1), clip=(-1, 1), seed=3)(x, seed=1)
    changed = pm.expand_as(plain).bool()
    plain_hu = (plain[:, 2:3] + 1.0) / 2.0 * 1500.0 - 1000.0
    assert (_windowed(plain_hu)[changed] - plain[changed]).abs().max() > 0.1


def test_tissue_lesions_need_the_hu_windows():
    with pytest.raises(ValueError, match="hu_windows"):
        BatchAnomalyCorruption(weights={"tissue": 1.0})
    corrupt = BatchAnomalyCorruption(clean_fraction=0.0, weights={"tissue": 1.0}, hu_windows=WINDOWS)
    with pytest.raises(ValueError, match="one channel per HU window"):
        corrupt(torch.zeros(1, 2, 8, 8, 8), seed=0)
    with pytest.raises(ValueError, match="tissue_hu_range"):
        BatchAnomalyCorruption(hu_windows=WINDOWS, tissue_hu_range=(100.0, -100.0))


def test_corruption_centres_cover_the_whole_window_rim_included():
    s = 20
    corrupt = BatchAnomalyCorruption(clean_fraction=0.0, max_anomalies=1, radius_range=(0.05, 0.1),
                                     box_size_range=(0.1, 0.2), seed=0)
    x = torch.rand(8, 1, s, s, s)
    centres, kinds = [], []
    for it in range(40):
        _, mask, info = corrupt(x, seed=it)
        for w in info:
            centres += [p["center"] for p in w]
            kinds += [p["kind"] for p in w]
    c = np.asarray(centres)  # (320, 3)
    assert len(set(kinds)) == 3
    octant = ((c >= (s - 1) / 2) * np.array([1, 2, 4])).sum(1)
    counts = np.bincount(octant.astype(int), minlength=8)
    assert (counts > 0).all() and counts.min() >= 0.4 * len(c) / 8  # roughly uniform over the 8 octants
    rim = ((c < 0.1 * s) | (c > 0.9 * s - 1)).any(1)
    # uniform centres fall in the outer 10 % band with probability 1 - 0.8**3 = 0.49
    assert 0.35 < rim.mean() < 0.65
    for d in range(3):  # each axis is covered up to both faces
        assert c[:, d].min() <= 1.0 and c[:, d].max() >= s - 2.0


# ------------------------------------------------------------------------------------------- anomaly head
def test_anomaly_head_maps_and_state_dict():
    torch.manual_seed(0)
    kw = dict(roi_size=(32, 32, 32), region_grid=(1, 1, 1), **SMALL)
    plain = SimSID(3, **kw)
    assert plain.anomaly_head is None and not any(k.startswith("anomaly_head") for k in plain.state_dict())
    with pytest.raises(ValueError):
        SimSID(3, map_mode="head", **kw)
    with pytest.raises(ValueError):
        SimSID(3, anomaly_head=True, map_mode="bogus", **kw)
    net = SimSID(3, anomaly_head=True, map_mode="head", **kw).eval()
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("anomaly_head.") or k == "recon_scale" for k in missing)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, SimSIDOutput) and out.anomaly_map.shape == x.shape
        assert out.anomaly_map.min() >= 0 and out.anomaly_map.max() <= 1
        prob = torch.sigmoid(net.head_logits(x, out.reconstruction))
        assert torch.allclose(out.anomaly_map, prob)
        net.map_mode = "recon"
        rec = net(x).anomaly_map
        assert torch.allclose(rec, (x - out.reconstruction).abs())
        net.map_mode = "combined"
        net.update_recon_scale(torch.full((100,), 0.25))
        assert torch.isclose(net.recon_scale, torch.tensor(0.25))
        comb = net(x).anomaly_map
        assert torch.allclose(comb, 0.5 * rec / 0.25 + 0.5 * prob, atol=1e-6)
    # the head is trainable through the generator parameters
    names = {id(p) for p in net.generator_parameters()}
    assert all(id(p) in names for p in net.anomaly_head.parameters())


def test_head_and_restoration_losses():
    logits = torch.tensor([[10.0, -10.0, 10.0, -10.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert AnomalyHeadLoss()(logits, mask) < 1e-3
    assert AnomalyHeadLoss()(-logits, mask) > 5
    recon, clean = torch.ones(1, 1, 4), torch.zeros(1, 1, 4)
    m = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    assert masked_restoration_loss(recon, clean, m).item() == 1.0
    assert masked_restoration_loss(recon, clean, torch.zeros_like(m)).item() == 0.0


# ------------------------------------------------------------------------------------------- no-leak check
R = 32


def _normal_windows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth 'normal' windows: a dark background with low-frequency intensity variation."""
    low = torch.randn(n, 1, 3, 3, 3, generator=gen) * 0.1
    return 0.2 + F.interpolate(low, size=(R,) * 3, mode="trilinear", align_corners=True)


def _train(restore_weight: float, iters: int, seed: int = 0) -> SimSID:
    torch.manual_seed(seed)
    net = SimSID(3, roi_size=(R,) * 3, block_grid=(2, 2, 2), region_grid=(1, 1, 1), channels=(8, 16, 32, 64),
                 embed_dim=32, num_heads=4, num_slots=32, top_k=3, with_discriminator=False, overlapping_up=False)
    opt = torch.optim.Adam(net.generator_parameters(), lr=2e-3)
    loss_fn = SimSIDLoss()
    corrupt = BatchAnomalyCorruption(clean_fraction=0.5, weights={"ellipsoid": 1.0}, value_range=(0, 1), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for it in range(iters):
        x = _normal_windows(2, gen)
        x_in, mask, _ = corrupt(x, seed=it)
        if restore_weight == 0:
            x_in = x
        out = net(x_in)
        loss = loss_fn(x, out)["total"]
        if restore_weight > 0:
            loss = loss + restore_weight * masked_restoration_loss(out.student_recon, x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _blob_ratio(net: SimSID) -> float:
    x = _normal_windows(2, torch.Generator().manual_seed(1234))
    grid = torch.stack(torch.meshgrid(*[torch.arange(R, dtype=torch.float32)] * 3, indexing="ij"))
    blob = ((grid - torch.tensor([16.0, 14.0, 17.0]).view(3, 1, 1, 1)).norm(dim=0) < 6).expand_as(x)
    xb = x.clone()
    xb[blob] = 0.7
    with torch.no_grad():
        amap = net(xb).anomaly_map
    return float(amap[blob].mean() / amap[~blob].mean())


def test_restoration_error_is_high_inside_a_pasted_dense_blob():
    # Measured (80 iterations, seeds 0/1): blob/outside error ratio 10.1 / 7.9 with restoration. The same tiny
    # SimSID trained WITHOUT restoration gives 10.6 / 10.1 (it does not reproduce the blob at this budget either,
    # nor after 250 iterations: 12.2 vs 11.6 with restoration), so only the positive property is asserted.
    ratio = _blob_ratio(_train(restore_weight=10.0, iters=80))
    assert ratio > 2.0, ratio
