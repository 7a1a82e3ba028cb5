from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_simsid.losses import CutPasteLoss
from monai_simsid.networks.blocks.density import GaussianDensity, ledoit_wolf_covariance
from monai_simsid.networks.nets import CutPasteNet, CutPasteOutput, CutPasteTrainOutput

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 8, 16), embed_dim=8)


@pytest.mark.parametrize("dims,shape", [(2, (3, 1, 32, 32)), (3, (2, 1, 32, 32, 32))])
def test_train_and_eval_shapes(dims, shape):
    torch.manual_seed(0)
    net = CutPasteNet(dims, **SMALL)
    x = torch.rand(*shape)
    out = net.train()(x)
    assert isinstance(out, CutPasteTrainOutput)
    assert out.logits.shape == (shape[0], 3) and out.embedding.shape == (shape[0], 8)
    assert CutPasteLoss()(out, torch.zeros(shape[0], dtype=torch.long))["total"].ndim == 0
    net.eval()
    with pytest.raises(RuntimeError, match="fit"):
        net(x)
    with torch.no_grad():
        net.fit_density(torch.randn(40, 8))
    ev = net(x)
    assert isinstance(ev, CutPasteOutput)
    assert ev.anomaly_map.shape == (shape[0], 1, *shape[2:]) and ev.score.shape == (shape[0],)
    assert ev.embedding.shape == (shape[0], 8)
    for b in range(shape[0]):
        assert torch.all(ev.anomaly_map[b] == ev.score[b])
    assert torch.allclose(ev.score, net.density(net.embed(x)))


def test_density_in_state_dict_and_encoder_export():
    torch.manual_seed(0)
    a = CutPasteNet(2, **SMALL)
    a.fit_density(torch.randn(30, 8) * 2 + 1)
    b = CutPasteNet(2, **SMALL)
    assert not b.density.is_fitted
    b.load_state_dict(a.state_dict())
    assert b.density.is_fitted and torch.equal(b.density.precision, a.density.precision)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(a.eval()(x).score, b.eval()(x).score)
    sd = a.encoder_state_dict()
    assert sd and all(k.startswith("encoder.") for k in sd)
    assert set(sd) == {k for k in a.state_dict() if k.startswith("encoder.")}


def test_mahalanobis_against_numpy():
    torch.manual_seed(0)
    emb = torch.randn(200, 5) @ torch.randn(5, 5) + torch.arange(5.0)
    dens = GaussianDensity(5).fit(emb)
    assert dens(dens.mean[None]).item() < 1e-3
    _, cov, _ = ledoit_wolf_covariance(emb)
    prec = np.linalg.inv(cov.numpy())
    mean = emb.double().mean(0).numpy()
    q = torch.randn(7, 5) * 3
    diff = q.double().numpy() - mean
    ref = np.sqrt(np.einsum("nd,de,ne->n", diff, prec, diff))
    np.testing.assert_allclose(dens(q).numpy(), ref, rtol=1e-3)
    with pytest.raises(ValueError):
        dens(torch.randn(3, 4))
    with pytest.raises(RuntimeError):
        GaussianDensity(5)(q)


@pytest.mark.parametrize("n,p", [(20, 8), (300, 6)])
def test_ledoit_wolf_matches_sklearn(n, p):
    sk = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + 3.0
    lw = sk.LedoitWolf().fit(x)
    mean, cov, shrinkage = ledoit_wolf_covariance(torch.from_numpy(x))
    assert abs(shrinkage - lw.shrinkage_) < 1e-8
    np.testing.assert_allclose(cov.numpy(), lw.covariance_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mean.numpy(), lw.location_, rtol=1e-10)
    dens = GaussianDensity(p).fit(torch.from_numpy(x).float())
    np.testing.assert_allclose(dens.precision.numpy(), lw.precision_, rtol=1e-3, atol=1e-4)


def test_bad_args():
    for kw in (dict(spatial_dims=0), dict(embed_dim=0), dict(num_classes=1), dict(channels=()), dict(in_channels=0)):
        with pytest.raises(ValueError):
            CutPasteNet(**kw)
    with pytest.raises(ValueError):
        GaussianDensity(0)
    with pytest.raises(ValueError):
        GaussianDensity(3).fit(torch.randn(1, 3))
    with pytest.raises(ValueError):
        GaussianDensity(3).fit(torch.randn(10, 4))
