"""Trainers of the baseline models: auto-encoder, CutPaste (pretext data, regeneration, density) and GANomaly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset

from monai_simsid.data.pretext import PretextDataset
from monai_simsid.engines import CutPasteTrainer, GANomalyTrainer, ReconstructionTrainer, fit_cutpaste_density
from monai_simsid.handlers.pretext import DensityFitHandler, RegeneratePretextHandler
from monai_simsid.networks.nets.autoencoder import ConvAutoEncoder
from monai_simsid.networks.nets.cutpaste import CutPasteNet
from monai_simsid.networks.nets.ganomaly import GANomaly
from monai_simsid.transforms.anomaly.pretext import CutPastePretextd
from monai_simsid.transforms.body import RandBodyWindowsd

torch.set_num_threads(1)


def smooth_blobs(shape, rng: np.random.Generator, num_blobs: int = 3) -> np.ndarray:
    """Sum of a few Gaussian blobs in [0, 1] on a faint gradient: a smooth, structured 'normal' window."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = 0.2 + 0.1 * grids[0]
    for _ in range(num_blobs):
        c = rng.uniform(-0.6, 0.6, len(shape))
        r = rng.uniform(0.2, 0.4)
        img = img + 0.5 * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * r**2))
    return np.clip(img, 0, 1).astype(np.float32)


class WindowDataset(Dataset):
    """Random-but-structured normal windows ``{"image": (1, *roi), "region": 0}``."""

    def __init__(self, n: int, roi: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = [torch.from_numpy(smooth_blobs((roi,) * 3, rng))[None] for _ in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "region": torch.tensor(0)}


def normal_scans(num: int = 2, size: int = 28, seed: int = 0) -> list[dict]:
    """Preprocessed-like normal scans: smooth blobs inside an ellipsoidal body, -1 outside."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    body = ((g[0] / 0.9) ** 2 + (g[1] / 0.8) ** 2 + (g[2] / 0.95) ** 2 < 1).astype(np.float32)
    scans = []
    for _ in range(num):
        img = np.where(body > 0, smooth_blobs((size,) * 3, rng, 6), 0.0).astype(np.float32)
        scans.append({"image": torch.from_numpy(img)[None], "body": torch.from_numpy(body)[None]})
    return scans


def run_losses(trainer) -> list[dict]:
    outputs: list[dict] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine):
        outputs.append(engine.state.output)

    trainer.run()
    return outputs


def assert_decreases(outputs: list[dict], key: str = "loss") -> None:
    assert all(key in o and np.isfinite(o[key]) for o in outputs)
    losses = [o[key] for o in outputs]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_reconstruction_trainer_decreases_loss():
    torch.manual_seed(0)
    loader = DataLoader(WindowDataset(16, 16), batch_size=4, shuffle=True)
    net = ConvAutoEncoder(3, 1, channels=(4, 8))
    trainer = ReconstructionTrainer(
        "cpu", max_epochs=6, train_data_loader=loader, network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
    )
    outputs = run_losses(trainer)
    assert len(outputs) == 24 and "recon" in outputs[0]
    assert_decreases(outputs)


def test_pretext_transform_and_dataset():
    t = CutPastePretextd("image", mask_key=None)
    t.set_random_state(1)
    out = t({"image": torch.rand(1, 16, 16, 16)})
    assert out["pretext_label"].dtype == torch.long and int(out["pretext_label"]) in (0, 1, 2)
    assert "mask" not in out
    with pytest.raises(ValueError):
        CutPastePretextd("image", label_key="")

    scans = normal_scans()
    # on-the-fly pipeline: window sampling then the pretext transform (Compose maps it over the windows)
    pipeline = Compose([RandBodyWindowsd(["image"], (16, 16, 16), num_samples=3), CutPastePretextd("image")])
    pipeline.set_random_state(0)
    windows = pipeline(scans[0])
    assert len(windows) == 3
    assert all(w["pretext_label"].ndim == 0 and w["image"].shape == (1, 16, 16, 16) for w in windows)

    ds = PretextDataset(scans, roi_size=(16, 16, 16), num_samples=24, seed=3, region_grid=(1, 1, 1))
    assert len(ds) == 24 and ds[0]["image"].shape == (1, 16, 16, 16)
    labels = ds.labels()
    assert set(labels.tolist()) == {0, 1, 2}
    # normal samples are untouched windows, anomalous ones have a non-empty change mask
    for s in ds.samples:
        assert (float(s["mask"].sum()) > 0) == (int(s["pretext_label"]) != 0)
    before = torch.stack([s["image"] for s in ds.samples])
    same = PretextDataset(scans, roi_size=(16, 16, 16), num_samples=24, seed=3, region_grid=(1, 1, 1))
    assert torch.equal(before, torch.stack([s["image"] for s in same.samples]))
    assert torch.equal(labels, same.labels())
    ds.regenerate(4)
    assert not torch.equal(before, torch.stack([s["image"] for s in ds.samples]))
    ds.regenerate(3)
    assert torch.equal(before, torch.stack([s["image"] for s in ds.samples]))
    with pytest.raises(ValueError):
        PretextDataset([], roi_size=(16, 16, 16))
    with pytest.raises(ValueError):
        PretextDataset(scans, roi_size=(16, 16, 16), num_samples=0)


def test_pretext_windows_keep_clear_of_an_excluded_region():
    from monai.data import MetaTensor

    from monai_simsid.data.exclusion import item_exclusion

    scans = normal_scans(num=1, size=40)
    mask = torch.zeros(1, 40, 40, 40)
    mask[0, 18:22, 18:22, 18:22] = 1
    scans[0]["exclude"] = MetaTensor(mask, affine=torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))  # grown by 3 voxels
    grown = item_exclusion(scans[0])
    ds = PretextDataset(scans, roi_size=(12, 12, 12), num_samples=40, seed=0, region_grid=(1, 1, 1))
    for s in ds.samples:
        a = s["window_start"].numpy()
        assert not grown[a[0] : a[0] + 12, a[1] : a[1] + 12, a[2] : a[2] + 12].any()
    plain = PretextDataset([{k: v for k, v in scans[0].items() if k != "exclude"}], roi_size=(12, 12, 12),
                           num_samples=40, seed=0, region_grid=(1, 1, 1))  # fmt: skip
    assert any(grown[a[0] : a[0] + 12, a[1] : a[1] + 12, a[2] : a[2] + 12].any()
               for a in (s["window_start"].numpy() for s in plain.samples))  # fmt: skip


def test_cutpaste_trainer_regeneration_and_density():
    torch.manual_seed(0)
    scans = normal_scans()
    # the pretext set stays fixed here: 32 iterations are enough to fit it, not to learn the task in general
    ds = PretextDataset(scans, (16, 16, 16), num_samples=32, seed=0, region_grid=(1, 1, 1))
    net = CutPasteNet(3, 1, channels=(8, 16), embed_dim=16)
    density = DensityFitHandler(net, scans, (16, 16, 16), num_windows_per_scan=24, seed=0)
    trainer = CutPasteTrainer(
        "cpu", max_epochs=16, train_data_loader=DataLoader(ds, batch_size=16, shuffle=True), network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3), train_handlers=[density],
    )
    outputs = run_losses(trainer)
    assert len(outputs) == 32 and {"ce", "accuracy"} <= set(outputs[0])
    assert_decreases(outputs)

    # regeneration: epochs 1-2 use the initial samples, then seed + epoch // 2 every 2 epochs (none after the last)
    seen_seeds: list[int] = []
    regen = RegeneratePretextHandler(ds, every_n_epochs=2, seed=100)
    first = ds[0]["image"].clone()
    trainer = CutPasteTrainer(
        "cpu", max_epochs=6, train_data_loader=DataLoader(ds, batch_size=4), network=CutPasteNet(3, 1, (4, 8), 8),
        optimizer=torch.optim.SGD(net.parameters(), 0.0), epoch_length=1, train_handlers=[regen],
    )
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen_seeds.append(ds.seed))
    trainer.run()
    assert seen_seeds == [0, 0, 101, 101, 102, 102] and ds.seed == 102
    assert not torch.equal(first, ds[0]["image"])
    # a resumed run (state.epoch restored to 4) starts with the samples of its block
    ds.regenerate(0)
    regen_resumed = RegeneratePretextHandler(ds, every_n_epochs=2, seed=100)
    trainer = CutPasteTrainer(
        "cpu", max_epochs=5, train_data_loader=DataLoader(ds, batch_size=4), network=CutPasteNet(3, 1, (4, 8), 8),
        optimizer=torch.optim.SGD(net.parameters(), 0.0), epoch_length=1, train_handlers=[regen_resumed],
    )
    trainer.state.epoch, trainer.state.iteration = 4, 4
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: seen_seeds.append(ds.seed))
    trainer.run()
    assert seen_seeds[-1] == 102

    # the density was fitted at COMPLETED: eval mode works and scores are finite
    assert net.density.is_fitted
    net.eval()
    rng = np.random.default_rng(7)
    normal = torch.stack([torch.from_numpy(smooth_blobs((16,) * 3, rng, 6))[None]
                          for _ in range(6)]).float()
    with torch.no_grad():
        out = net(normal)
        assert out.score.shape == (6,) and torch.isfinite(out.score).all()
        assert out.anomaly_map.shape == (6, 1, 16, 16, 16)
        # Mahalanobis distance: the fitted mean scores ~0, an embedding far away scores much higher
        mean = net.density.mean[None].float()
        far = mean + 10.0 * net.density.mean.abs().max().clamp_min(1.0)
        d = net.density(torch.cat([mean, far]))
        assert float(d[0]) < 1e-3 < float(d[1])
        # a pasted bright cube is more anomalous than normal windows on average
        bright = normal.clone()
        bright[:, :, 4:10, 4:10, 4:10] = 3.0
        assert float(net(bright).score.mean()) > float(out.score.mean())


def test_cutpaste_trainer_in_iteration_pretext_and_density_function():
    torch.manual_seed(0)
    loader = DataLoader(WindowDataset(8, 16), batch_size=4)
    net = CutPasteNet(3, 1, channels=(4, 8), embed_dim=8)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    with pytest.raises(ValueError, match="pretext_label"):
        CutPasteTrainer("cpu", 1, loader, net, opt).run()
    trainer = CutPasteTrainer("cpu", 1, loader, net, opt, pretext_transform=CutPastePretextd("image"), seed=1)
    outputs = run_losses(trainer)
    assert len(outputs) == 2 and all(np.isfinite(o["loss"]) for o in outputs)
    with pytest.raises(ValueError):
        fit_cutpaste_density(net, normal_scans(1), (16, 16, 16), num_windows_per_scan=1)
    assert net.training
    fit_cutpaste_density(net, normal_scans(1), (16, 16, 16), num_windows_per_scan=8)
    assert net.training and net.density.is_fitted


def test_ganomaly_trainer_decreases_loss_and_reinit():
    torch.manual_seed(0)
    loader = DataLoader(WindowDataset(16, 16), batch_size=4, shuffle=True)
    net = GANomaly(3, 1, channels=(8, 16), latent_dim=16, roi_size=16, disc_channels=(8, 16))
    trainer = GANomalyTrainer(
        "cpu", max_epochs=6, train_data_loader=loader, network=net,
        g_optimizer=torch.optim.Adam(net.generator_parameters(), 2e-3, betas=(0.5, 0.999)),
        d_optimizer=torch.optim.Adam(net.discriminator_parameters(), 2e-3, betas=(0.5, 0.999)),
    )
    outputs = run_losses(trainer)
    assert len(outputs) == 24 and {"adv", "con", "enc", "d_loss", "d_reinit"} <= set(outputs[0])
    assert_decreases(outputs)
    assert trainer.num_d_reinits == 0

    # a huge threshold forces the paper's re-initialisation of D at every iteration
    before = [p.detach().clone() for p in net.discriminator_parameters()]
    trainer = GANomalyTrainer(
        "cpu", 1, DataLoader(WindowDataset(4, 16), batch_size=4), net,
        torch.optim.SGD(net.generator_parameters(), 0.0), torch.optim.SGD(net.discriminator_parameters(), 0.0),
        reinit_d_below=1e9,
    )
    outputs = run_losses(trainer)
    assert outputs[0]["d_reinit"] == 1.0 and trainer.num_d_reinits == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, net.discriminator_parameters()))
    assert GANomalyTrainer("cpu", 1, loader, net, trainer.g_optimizer, trainer.d_optimizer,
                           reinit_d_below=True).reinit_d_below == 1e-5
    with pytest.raises(ValueError):
        GANomalyTrainer("cpu", 1, loader, net, trainer.g_optimizer, trainer.d_optimizer, reinit_d_below=-1.0)
    with pytest.raises(ValueError):
        GANomalyTrainer("cpu", 1, loader, ConvAutoEncoder(3, 1, (4, 8)), trainer.g_optimizer, trainer.d_optimizer)


def test_handler_arguments():
    with pytest.raises(ValueError):
        RegeneratePretextHandler(object(), 1)
    with pytest.raises(ValueError):
        RegeneratePretextHandler(CutPastePretextd("image"), 0)
    with pytest.raises(ValueError):
        DensityFitHandler(CutPasteNet(3, 1, (4, 8), 8), [], (16, 16, 16))
