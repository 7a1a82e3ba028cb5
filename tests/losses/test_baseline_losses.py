from __future__ import annotations

import math

import pytest
import torch

from monai_simsid.losses import CutPasteLoss, GANomalyLoss, ReconstructionLoss
from monai_simsid.networks.nets import AutoEncoderTrainOutput, CutPasteTrainOutput, GANomalyTrainOutput

torch.set_num_threads(1)


def test_reconstruction_loss():
    x = torch.zeros(1, 1, 4, 4)
    out = AutoEncoderTrainOutput(torch.full_like(x, 2.0))
    assert ReconstructionLoss("l1")(x, out)["total"].item() == 2.0
    terms = ReconstructionLoss("L2")(x, out.reconstruction)
    assert terms["recon"].item() == 4.0 and terms["total"] is terms["recon"]
    with pytest.raises(ValueError):
        ReconstructionLoss("huber")
    with pytest.raises(ValueError):
        ReconstructionLoss()(x, torch.zeros(1, 1, 4, 5))


def test_cutpaste_loss():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    terms = CutPasteLoss()(CutPasteTrainOutput(logits, torch.zeros(2, 4)), torch.tensor([0, 2]))
    expected = 0.5 * (math.log(1 + 2 * math.exp(-10)) + math.log(3))
    assert math.isclose(terms["total"].item(), expected, rel_tol=1e-5)
    assert terms["accuracy"].item() == 0.5
    with pytest.raises(ValueError):
        CutPasteLoss()(logits, torch.tensor([0]))
    with pytest.raises(ValueError):
        CutPasteLoss(label_smoothing=1.0)


def test_ganomaly_loss_terms_and_weights():
    x = torch.zeros(1, 1, 4, 4)
    out = GANomalyTrainOutput(torch.ones_like(x), torch.zeros(1, 3, 1, 1), torch.full((1, 3, 1, 1), 2.0))
    f_real, f_fake = torch.zeros(1, 2, 2, 2, requires_grad=True), torch.full((1, 2, 2, 2), 3.0, requires_grad=True)
    terms = GANomalyLoss(adv_weight=1, con_weight=50, enc_weight=1)(x, out, f_real, f_fake)
    assert set(terms) == {"adv", "con", "enc", "total"}
    assert terms["adv"].item() == 9.0 and terms["con"].item() == 1.0 and terms["enc"].item() == 4.0
    assert math.isclose(terms["total"].item(), 9 + 50 + 4)
    terms["total"].backward()
    assert f_real.grad is None and f_fake.grad is not None  # real features are a fixed target
    assert math.isclose(GANomalyLoss().discriminator_loss(torch.zeros(2), torch.zeros(2)).item(), 2 * math.log(2),
                        rel_tol=1e-5)
    assert math.isclose(GANomalyLoss(adv_weight=2).generator_bce(torch.zeros(2)).item(), 2 * math.log(2), rel_tol=1e-5)
    with pytest.raises(ValueError):
        GANomalyLoss(con_weight=-1)
