"""A topk-calibrated predictor skips SimSID's discriminator pass; the map and the scan score do not change."""

from __future__ import annotations

import numpy as np
import torch

from monai_simsid.apps import build_preprocessing
from monai_simsid.apps.inference import AnomalyPredictor
from monai_simsid.inferers import AnomalyInferer
from monai_simsid.networks.nets import SimSID

CAL = {"scan_threshold": 1.0, "scan_std": 1.0, "voxel_threshold": 0.5, "voxel_scale": 0.1, "fpr": 0.05,
       "voxel_fpr": 0.001, "source": "test", "topk_fraction": 0.001}  # fmt: skip


def _predictor(method: str) -> AnomalyPredictor:
    torch.manual_seed(0)
    net = SimSID(3, 1, roi_size=(32, 32, 32), channels=(4, 8), embed_dim=16, num_heads=2, num_slots=8,
                 disc_channels=(4,) * 5)  # fmt: skip
    inferer = AnomalyInferer((32, 32, 32), (3, 3, 3), sw_batch_size=4)
    return AnomalyPredictor(net, inferer, build_preprocessing(), {**CAL, "score_method": method}, "simsid_ct", "t",
                            device="cpu", write_png=False)  # fmt: skip


def test_topk_skips_the_discriminator_without_changing_results(ct_file):
    path = str(ct_file())
    fast = _predictor("topk")
    assert fast.network.window_score is False
    calls = []
    fast.network.discriminator.register_forward_hook(lambda *a: calls.append(1))
    a = fast.predict({"image": path})
    assert not calls  # no discriminator pass at all
    slow = _predictor("topk")
    slow.network.window_score = True  # what every window paid before
    b = slow.predict({"image": path})
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert a.score == b.score


def test_window_score_methods_keep_the_discriminator():
    assert _predictor("discriminator").network.window_score is True


def test_topk_skips_the_score_map_without_changing_the_anomaly_map():
    pred = _predictor("topk")
    torch.manual_seed(1)
    x = torch.randn(1, 1, 40, 36, 44)
    body = torch.zeros(1, 1, 40, 36, 44)
    body[..., 4:36, 4:32, 6:40] = 1
    fast = pred.run_model(x, body)
    assert fast.score_map is None  # the topk scan score does not read it: not built, not stitched
    full = pred.inferer(x, pred.network, body)
    assert full.score_map is not None and full.score_map.shape == full.anomaly_map.shape
    assert torch.equal(fast.anomaly_map, full.anomaly_map)
    assert _predictor("discriminator").run_model(x, body).score_map is not None


def test_predictor_decodes_only_the_map_channels(ct_file):
    path = str(ct_file())
    windows = [[-1000, -400], [-160, 240], [-1000, 500]]
    torch.manual_seed(0)
    net = SimSID(3, 3, roi_size=(32, 32, 32), channels=(4, 8, 16), embed_dim=16, num_heads=2, num_slots=8,
                 disc_channels=(4,) * 5, up_mode="shuffle", overlapping_up=False, out_kernel_size=1,
                 map_channels=[0])  # fmt: skip
    inferer = AnomalyInferer((32, 32, 32), (3, 3, 3), sw_batch_size=4)
    predictor = AnomalyPredictor(net, inferer, build_preprocessing(hu_windows=windows), CAL, "simsid_ct", "t",
                                 device="cpu", write_png=False)  # fmt: skip
    assert net.map_only is True
    decode, decoded = net.student_decoder.forward_tokens, []

    def spy(*args, **kwargs):
        out = decode(*args, **kwargs)
        decoded.append(out.shape[1])
        return out

    net.student_decoder.forward_tokens = spy
    a = predictor.predict({"image": path}).anomaly_map
    only = set(decoded)
    net.map_only = False
    decoded.clear()
    b = predictor.predict({"image": path}).anomaly_map
    assert only == {1} and set(decoded) == {3}  # the block-token path (CPU), one channel against three
    np.testing.assert_allclose(a, b, atol=1e-6)
