from __future__ import annotations

import math

import pytest
import torch

from monai_simsid.losses import AdversarialLoss, SimSIDLoss, discriminator_loss, generator_adversarial_loss
from monai_simsid.networks.nets import SimSID, SimSIDTrainOutput

torch.set_num_threads(1)


def test_terms_and_weights():
    x = torch.zeros(1, 1, 4, 4)
    out = SimSIDTrainOutput(torch.ones_like(x), 2 * torch.ones_like(x), [torch.zeros(1, 2, 2, 2)], [torch.ones(1, 2, 2, 2)])
    terms = SimSIDLoss(recon_weight=10.0, teacher_weight=0.01, distill_weight=0.001)(x, out)
    assert set(terms) == {"recon", "teacher", "distill", "total"}
    assert terms["recon"].item() == 4.0 and terms["teacher"].item() == 1.0 and terms["distill"].item() == 1.0
    assert math.isclose(terms["total"].item(), 40.0 + 0.01 + 0.001, rel_tol=1e-6)
    with pytest.raises(ValueError):
        SimSIDLoss(recon_weight=-1)


def test_adversarial_losses():
    z = torch.zeros(3)
    assert math.isclose(generator_adversarial_loss(z, 0.005).item(), 0.005 * math.log(2), rel_tol=1e-5)
    assert math.isclose(discriminator_loss(z, z, 1.0).item(), 2 * math.log(2), rel_tol=1e-5)
    adv = AdversarialLoss()
    assert adv.discriminator_loss(torch.full((3,), 10.0), torch.full((3,), -10.0)) < 1e-5
    assert adv.generator_loss(torch.full((3,), -10.0)) > adv.generator_loss(torch.full((3,), 10.0))


def test_loss_decreases_with_adam():
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), region_grid=(1, 1, 1), channels=(4, 8, 16, 32), embed_dim=16, num_heads=2,
                 num_slots=16, top_k=3, with_discriminator=False).train()
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 32)] * 3, indexing="ij"))
    x = torch.stack([(grid.pow(2).sum(0) < r).float() for r in (0.3, 0.6)])[:, None]  # two spheres
    loss_fn = SimSIDLoss()
    opt = torch.optim.Adam(net.generator_parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        total = loss_fn(x, net(x))["total"]
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]
