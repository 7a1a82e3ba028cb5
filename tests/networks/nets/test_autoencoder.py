from __future__ import annotations

import pytest
import torch

from monai_simsid.losses import ReconstructionLoss
from monai_simsid.networks.nets import AutoEncoderOutput, AutoEncoderTrainOutput, ConvAutoEncoder

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 8, 16))


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 32, 32)), (3, (2, 1, 32, 32, 32))])
def test_shapes_train_and_eval(dims, shape):
    torch.manual_seed(0)
    net = ConvAutoEncoder(dims, **SMALL)
    x = torch.rand(*shape)
    out = net.train()(x)
    assert isinstance(out, AutoEncoderTrainOutput) and out.reconstruction.shape == x.shape
    assert net.encode(x).shape == (2, 16) + (2,) * dims
    ev = net.eval()(x, torch.tensor([0, 1]))
    assert isinstance(ev, AutoEncoderOutput)
    assert ev.reconstruction.shape == x.shape and ev.anomaly_map.shape == (2, 1, *shape[2:]) and ev.score.shape == (2,)
    assert torch.allclose(ev.anomaly_map, (x - ev.reconstruction).abs())
    assert torch.allclose(ev.score, ev.anomaly_map.flatten(1).mean(1))


def test_latent_channels_and_multichannel_map():
    net = ConvAutoEncoder(2, in_channels=2, channels=(4, 8), latent_channels=3).eval()
    x = torch.rand(1, 2, 16, 16)
    assert net.encode(x).shape == (1, 3, 4, 4)
    ev = net(x)
    assert ev.anomaly_map.shape == (1, 1, 16, 16)
    assert torch.allclose(ev.anomaly_map, (x - ev.reconstruction).abs().mean(1, keepdim=True))


def test_encoder_keys_match_simsid_layout():
    keys = ConvAutoEncoder(3, **SMALL).state_dict().keys()
    assert any(k.startswith("encoder.levels.") for k in keys) and any(k.startswith("decoder.") for k in keys)


def test_training_reduces_loss():
    torch.manual_seed(0)
    net = ConvAutoEncoder(2, channels=(8, 16), norm=None).train()
    x = torch.rand(4, 1, 16, 16)
    loss_fn = ReconstructionLoss("l2")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(x, net(x))["total"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_args():
    with pytest.raises(ValueError):
        ConvAutoEncoder(4)
    with pytest.raises(ValueError):
        ConvAutoEncoder(3, channels=())
    with pytest.raises(ValueError):
        ConvAutoEncoder(3, latent_channels=0)
    with pytest.raises(ValueError):
        ConvAutoEncoder(3, in_channels=0)
    net = ConvAutoEncoder(2, **SMALL)
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 24, 24))  # not divisible by 16
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 32, 32, 32))  # wrong number of dims
