from __future__ import annotations

import pytest
import torch

from monai_simsid.networks.nets import SimSID, SimSIDDiscriminator, SimSIDOutput, SimSIDTrainOutput

torch.set_num_threads(1)

SMALL = dict(channels=(4, 8, 16, 32), embed_dim=16, num_heads=4, num_slots=16, top_k=3, disc_channels=(4, 8, 8, 8, 8))


@pytest.mark.parametrize("hierarchical", [False, True])
def test_simsid_3d_train_and_eval(hierarchical):
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(3, 3, 3),
                 hierarchical_memory=hierarchical, **SMALL)
    x = torch.rand(2, 1, 32, 32, 32)
    region = torch.tensor([0, 26])
    out = net.train()(x, region)
    assert isinstance(out, SimSIDTrainOutput)
    assert out.teacher_recon.shape == out.student_recon.shape == x.shape
    assert [f.shape[1:] for f in out.student_features] == [f.shape[1:] for f in out.teacher_features]
    assert out.student_features[0].shape == (2, 32, 4, 4, 4) and len(out.student_features) == 4
    ev = net.eval()(x, region)
    assert isinstance(ev, SimSIDOutput)
    assert ev.reconstruction.shape == x.shape and ev.anomaly_map.shape == x.shape and ev.score.shape == (2,)
    assert torch.allclose(ev.anomaly_map, (x - ev.reconstruction).abs())
    assert torch.allclose(ev.score, -net.discriminate(ev.reconstruction))


def test_simsid_2d_paper_structure():
    net = SimSID(2, roi_size=(64, 64), block_grid=(2, 2), region_grid=(1, 1), **SMALL).eval()
    assert net.inpainting.nb_index.shape == (4, 8)  # 2x2 grid, 8-neighbourhood
    x = torch.rand(3, 1, 64, 64)
    ev = net(x)
    assert ev.anomaly_map.shape == (3, 1, 64, 64) and ev.score.shape == (3,)
    out = net.train()(x)
    assert out.student_recon.shape == x.shape and out.student_features[-1].shape == (3, 4, 64, 64)


def test_feature_weight_and_no_discriminator():
    torch.manual_seed(0)
    kw = dict(roi_size=(32, 32), block_grid=(2, 2), region_grid=(1, 1), with_discriminator=False, **SMALL)
    a = SimSID(2, map_feature_weight=0.0, **kw).eval()
    b = SimSID(2, map_feature_weight=1.0, **kw).eval()
    b.load_state_dict(a.state_dict())
    assert a.discriminator is None and list(a.discriminator_parameters()) == []
    x = torch.rand(1, 1, 32, 32)
    ma, mb = a(x).anomaly_map, b(x).anomaly_map
    assert (mb - ma).min() >= 0 and (mb - ma).max() > 0
    assert torch.allclose(a(x).score, ma.mean())


def test_parameter_groups_and_state_dict():
    net = SimSID(3, roi_size=(32, 32, 32), **SMALL)
    gen, disc = list(net.generator_parameters()), list(net.discriminator_parameters())
    assert len(disc) > 0 and {id(p) for p in gen}.isdisjoint({id(p) for p in disc})
    assert len(gen) + len(disc) == len(list(net.parameters()))
    keys = net.state_dict().keys()
    assert any(k.startswith("discriminator.") for k in keys)
    assert net.inpainting.memory.memory.shape == (27 * 8, 16, 16)
    assert len(net.decoder_memory) == 2 and net.decoder_memory[1].memory.memory.shape == (27 * 8, 16, 16)


def test_validation_errors():
    with pytest.raises(ValueError):
        SimSID(3, roi_size=(48, 48, 48), block_grid=(2, 2, 2), **SMALL)  # 48 % 32
    with pytest.raises(ValueError):
        SimSID(3, roi_size=(32, 32), block_grid=(2, 2, 2), **SMALL)
    with pytest.raises(ValueError):
        SimSID(3, roi_size=(32, 32, 32), block_grid=(2, 2), **SMALL)
    with pytest.raises(ValueError):
        SimSID(3, roi_size=(32, 32, 32), block_grid=(1, 1, 1), **SMALL)
    with pytest.raises(ValueError):
        SimSID(3, roi_size=(32, 32, 32), decoder_memory_levels=5, **SMALL)
    with pytest.raises(ValueError, match="convs_per_level"):
        SimSID(3, roi_size=(32, 32, 32), encoder_convs=0, **SMALL)
    net = SimSID(2, roi_size=(32, 32), block_grid=(2, 2), region_grid=(2, 2), **SMALL)
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 32, 32), torch.tensor([4]))
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 48, 32))


def test_discriminator_shape_agnostic():
    d = SimSIDDiscriminator(3, 1, channels=(4, 8, 8, 8, 8)).eval()
    assert d(torch.rand(2, 1, 32, 48, 40)).shape == (2, 1)
    with pytest.raises(ValueError):
        d(torch.rand(1, 1, 16, 32, 32))


def test_distill_map_mode():
    torch.manual_seed(0)
    net = SimSID(3, roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(3, 3, 3), **SMALL).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    region = torch.tensor([0, 26])
    with torch.no_grad():
        recon_map = net(x, region)
        net.map_mode = "distill"
        out = net(x, region)
        teacher, _ = net.teacher_decoder(net.encoder(x))
    assert torch.allclose(out.reconstruction, recon_map.reconstruction)  # the student is unchanged
    assert torch.allclose(out.anomaly_map, (teacher - out.reconstruction).abs().mean(1, keepdim=True), atol=1e-5)
    assert not torch.allclose(out.anomaly_map, recon_map.anomaly_map)
    net.map_mode = "nonsense"
    with pytest.raises(ValueError, match="map_mode"):
        net(x, region)


@pytest.mark.parametrize("channels", [[0], [1, 2], [2, 0]])
def test_map_channels(channels):
    torch.manual_seed(0)
    kw = dict(roi_size=(32, 32, 32), block_grid=(2, 2, 2), region_grid=(3, 3, 3), **SMALL)
    net = SimSID(3, in_channels=3, **kw).eval()
    sub = SimSID(3, in_channels=3, map_channels=channels, **kw).eval()
    sub.load_state_dict(net.state_dict())  # the option adds no weights
    x = torch.rand(2, 3, 32, 32, 32)
    region = torch.tensor([0, 26])
    with torch.no_grad():
        full, part = net(x, region), sub(x, region)
    assert torch.allclose(part.reconstruction, full.reconstruction)  # every channel is still reconstructed
    expected = (x[:, channels] - full.reconstruction[:, channels]).abs().mean(1, keepdim=True)
    assert torch.allclose(part.anomaly_map, expected, atol=1e-6)
    assert not torch.allclose(part.anomaly_map, full.anomaly_map)


@pytest.mark.parametrize("channels", [[], [3], [0, 0], [-1], "null", [0.5], [True]])
def test_map_channels_refused(channels):
    with pytest.raises(ValueError, match="map_channels"):
        SimSID(3, in_channels=3, roi_size=(32, 32, 32), map_channels=channels, **SMALL)
