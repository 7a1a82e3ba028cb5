from __future__ import annotations

import pytest
import torch

from monai_simsid.losses import GANomalyLoss
from monai_simsid.networks.nets import (
    ConvAutoEncoder,
    CutPasteNet,
    GANomaly,
    GANomalyOutput,
    GANomalyTrainOutput,
    SimSID,
)

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 8, 16), latent_dim=10, roi_size=32, disc_channels=(4, 8, 8, 8, 8))


@pytest.mark.parametrize("dims", [2, 3])
def test_train_and_eval(dims):
    torch.manual_seed(0)
    net = GANomaly(dims, map_latent_weight=0.5, **SMALL)
    x = torch.rand(2, 1, *(32,) * dims)
    out = net.train()(x)
    assert isinstance(out, GANomalyTrainOutput)
    assert out.reconstruction.shape == x.shape
    assert out.latent.shape == out.latent_hat.shape == (2, 10) + (1,) * dims
    logits, feats = net.discriminate(x)
    assert logits.shape == (2,) and feats.shape[:2] == (2, 8)
    ev = net.eval()(x, torch.tensor([0, 1]))
    assert isinstance(ev, GANomalyOutput)
    assert ev.reconstruction.shape == x.shape and ev.anomaly_map.shape == x.shape and ev.score.shape == (2,)
    z, z_hat = net.encode(x), net.to_latent_hat(net.encoder_hat(ev.reconstruction))
    assert torch.allclose(ev.score, (z - z_hat).pow(2).flatten(1).mean(1), atol=1e-6)
    recon_err = (x - ev.reconstruction).abs()
    expected = recon_err + 0.5 * ev.score.reshape(-1, *(1,) * (dims + 1))
    assert torch.allclose(ev.anomaly_map, expected, atol=1e-6)


def test_losses_backward_and_parameter_groups():
    torch.manual_seed(0)
    net = GANomaly(2, **SMALL).train()
    loss = GANomalyLoss()
    x = torch.rand(2, 1, 32, 32)
    out = net(x)
    _, f_real = net.discriminate(x)
    _, f_fake = net.discriminate(out.reconstruction)
    terms = loss(x, out, f_real, f_fake)
    assert set(terms) == {"adv", "con", "enc", "total"}
    terms["total"].backward()
    assert net.encoder.levels[0][0].weight.grad is not None
    r, _ = net.discriminate(x)
    f, _ = net.discriminate(out.reconstruction.detach())
    assert loss.discriminator_loss(r, f).item() > 0
    gen, disc = list(net.generator_parameters()), list(net.discriminator_parameters())
    assert disc and {id(p) for p in gen}.isdisjoint({id(p) for p in disc})
    assert len(gen) + len(disc) == len(list(net.parameters()))


def _enc_equal(net, sd, prefix="encoder."):
    own = net.encoder.state_dict()
    return all(torch.equal(own[k], v) for k, v in ((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix)))


def test_transfer_from_cutpaste_and_freeze(tmp_path):
    torch.manual_seed(0)
    cp = CutPasteNet(3, channels=SMALL["channels"], embed_dim=8)
    for p in cp.encoder.parameters():
        torch.nn.init.normal_(p)
    net = GANomaly(3, **SMALL)
    sd = cp.encoder_state_dict()
    assert not _enc_equal(net, sd)
    res = net.load_encoder_from(sd, freeze=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert _enc_equal(net, sd)
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.encoder_hat.parameters()) and net.to_latent.weight.requires_grad
    # second encoder untouched
    assert not torch.equal(net.encoder_hat.levels[0][0].weight, net.encoder.levels[0][0].weight)
    net.freeze_encoder(False)
    assert all(p.requires_grad for p in net.encoder.parameters())
    # from a path holding a checkpoint dict
    path = tmp_path / "cp.pt"
    torch.save({"state_dict": cp.state_dict(), "epoch": 3}, path)
    net2 = GANomaly(3, **SMALL)
    net2.load_encoder_from(str(path))
    assert _enc_equal(net2, cp.state_dict())


@pytest.mark.parametrize("source", ["ae", "simsid"])
def test_transfer_from_other_models(source):
    torch.manual_seed(1)
    if source == "ae":
        other = ConvAutoEncoder(2, channels=SMALL["channels"])
    else:
        other = SimSID(2, roi_size=(32, 32), block_grid=(2, 2), region_grid=(1, 1), channels=SMALL["channels"],
                       embed_dim=16, num_heads=4, num_slots=8, top_k=2, with_discriminator=False)
    net = GANomaly(2, **SMALL)
    net.load_encoder_from(other.state_dict())
    assert _enc_equal(net, other.state_dict())


def test_transfer_errors():
    net = GANomaly(2, **SMALL)
    with pytest.raises(ValueError, match="no encoder"):
        net.load_encoder_from({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        net.load_encoder_from(GANomaly(2, **{**SMALL, "channels": (4, 8, 8, 32)}).state_dict())


def test_bad_args():
    bad = [dict(spatial_dims=4), dict(latent_dim=0), dict(map_latent_weight=-1.0), dict(roi_size=40),
           dict(roi_size=(32, 32)), dict(channels=()), dict(disc_channels=(4,) * 6)]
    for kw in bad:
        with pytest.raises(ValueError):
            GANomaly(**{"spatial_dims": 3, **SMALL, **kw})
    net = GANomaly(2, **SMALL)
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 64, 64))  # not the built roi
