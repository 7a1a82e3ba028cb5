"""SimSIDTrainer with and without synthetic-anomaly supervision."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from monai_simsid.engines.simsid_trainer import SimSIDTrainer
from monai_simsid.networks.nets.simsid import SimSID
from monai_simsid.transforms.anomaly.batch import BatchAnomalyCorruption

torch.set_num_threads(1)

SMALL = dict(roi_size=(32, 32, 32), region_grid=(1, 1, 1), channels=(4, 8, 16, 32), embed_dim=16, num_heads=4,
             num_slots=16, top_k=3, disc_channels=(4, 8, 8, 8, 8), overlapping_up=False)


def _loader(n=3):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(2, 1, 32, 32, 32, generator=g), "region": torch.zeros(2, dtype=torch.long)}
            for _ in range(n)]


def _trainer(net, **kw):
    g_opt = torch.optim.Adam(net.generator_parameters(), lr=1e-3)
    disc = list(net.discriminator_parameters())
    d_opt = torch.optim.Adam(disc, lr=1e-3) if disc else None
    return SimSIDTrainer("cpu", max_epochs=1, train_data_loader=_loader(), network=net, g_optimizer=g_opt,
                         d_optimizer=d_opt, **kw)


def test_supervised_trainer_runs_and_reports_restore_and_head():
    torch.manual_seed(0)
    net = SimSID(3, anomaly_head=True, map_mode="combined", **SMALL)
    head_before = [p.detach().clone() for p in net.anomaly_head.parameters()]
    outputs = []
    trainer = _trainer(net, restore_weight=10.0, head_weight=1.0, corruption={"clean_fraction": 0.0}, corruption_seed=3)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    assert trainer.state.iteration == 3 and len(outputs) == 3
    for out in outputs:
        assert {"restore", "head", "recon", "teacher", "distill", "loss", "g_adv", "d_loss"} <= set(out)
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
        assert out["restore"] > 0 and out["head"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(head_before, net.anomaly_head.parameters()))
    assert float(net.recon_scale) > 0
    net.eval()
    with torch.no_grad():
        amap = net(torch.rand(1, 1, 32, 32, 32)).anomaly_map
    assert amap.shape == (1, 1, 32, 32, 32) and torch.isfinite(amap).all()


def test_corruption_is_seeded_by_iteration():
    corrupt = BatchAnomalyCorruption(clean_fraction=0.0, seed=3)
    seen = []

    class Spy(BatchAnomalyCorruption):
        def __call__(self, x, seed=0):
            seen.append(seed)
            return corrupt(x, seed)

    net = SimSID(3, with_discriminator=False, **{k: v for k, v in SMALL.items() if k != "disc_channels"})
    trainer = _trainer(net, restore_weight=1.0, corruption=Spy())
    trainer.run()
    assert seen == [1, 2, 3]


def test_defaults_unchanged_and_validation():
    torch.manual_seed(0)
    net = SimSID(3, **SMALL)
    trainer = _trainer(net)
    assert not trainer.supervised
    outs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outs.append(e.state.output))
    trainer.run()
    assert set(outs[0]) == {"recon", "teacher", "distill", "loss", "g_adv", "d_loss"}
    with pytest.raises(ValueError):
        _trainer(SimSID(3, **SMALL), head_weight=1.0)  # no anomaly head
    with pytest.raises(ValueError):
        _trainer(SimSID(3, **SMALL), restore_weight=-1.0)
