"""Tests of monai_simsid.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from monai_simsid.metrics import (
    SampleAPMetric,
    SampleAUROCMetric,
    SampleF1Metric,
    VoxelAPMetric,
    VoxelAUROCMetric,
    VoxelBestDiceMetric,
    compute_all_metrics,
    compute_aupro,
    compute_best_dice,
    compute_dice_at_threshold,
    compute_lesion_detection_rate,
    compute_sample_ap,
    compute_sample_auroc,
    compute_sample_f1,
    compute_voxel_ap,
    compute_voxel_auroc,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("n_levels", [None, 4])  # continuous scores, and heavily tied scores
def test_sample_auroc_ap_match_sklearn(rng, n_levels):
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    if n_levels:
        s = np.round(s * n_levels / 4).astype(np.float32)
    assert compute_sample_auroc(s, y).value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert compute_sample_ap(s, y).value == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # torch inputs give the same value
    assert compute_sample_auroc(torch.as_tensor(s), torch.as_tensor(y)).value == pytest.approx(roc_auc_score(y, s))


def test_sample_ties_hand_computed():
    # one positive tied with one negative -> AUROC counts the tie as 1/2
    s, y = [0.5, 0.5, 0.1, 0.9], [1, 0, 0, 1]
    assert compute_sample_auroc(s, y).value == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    # AP: threshold 0.9 -> R=.5 P=1; threshold 0.5 -> R=1, P=2/3
    assert compute_sample_ap(s, y).value == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_sample_f1_matches_sklearn(rng):
    y = rng.integers(0, 2, 100)
    s = rng.normal(size=100) + y
    thr = 0.4
    res = compute_sample_f1(s, y, threshold=thr)
    pred = (s >= thr).astype(int)
    assert res.value == pytest.approx(f1_score(y, pred))
    assert res.precision.value == pytest.approx(precision_score(y, pred))
    assert res.recall.value == pytest.approx(recall_score(y, pred))
    assert res.tp + res.fp + res.fn + res.tn == 100
    # inclusive vs strict threshold on a tie
    assert compute_sample_f1([1.0, 0.0], [1, 0], threshold=1.0).value == 1.0
    assert compute_sample_f1([1.0, 0.0], [1, 0], threshold=1.0, inclusive=False).value == 0.0


def test_sample_undefined_and_invalid():
    for fn in (compute_sample_auroc, compute_sample_ap):
        res = fn([0.1, 0.2], [0, 0])
        assert res.value is None and "positive" in res.reason
    res = compute_sample_auroc([0.1, 0.2], [1, 1])
    assert res.value is None and "negative" in res.reason
    f1 = compute_sample_f1([0.1, 0.9], [0, 0], threshold=0.5)
    assert f1.value is None and f1.recall.value is None and f1.precision.value == 0.0
    f1 = compute_sample_f1([0.1, 0.2], [1, 0], threshold=0.5)
    assert f1.value == 0.0 and f1.precision.value is None and f1.precision.reason
    with pytest.raises(ValueError):
        compute_sample_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        compute_sample_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError):
        compute_sample_auroc([np.nan, 0.2], [0, 1])


def _volume(rng, shape=(12, 14, 10)):
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 3:6, 2:5] = 1
    label[8:10, 9:12, 6:9] = 1
    amap = rng.normal(size=shape).astype(np.float32) + 1.5 * label
    amap = np.round(amap, 1)  # many exact ties
    body = np.zeros(shape, dtype=bool)
    body[1:11, 1:13, 1:9] = True
    return amap, label, body


def test_voxel_auroc_ap_match_sklearn_with_ties_and_region(rng):
    amap, label, body = _volume(rng)
    assert compute_voxel_auroc(amap, label).value == pytest.approx(roc_auc_score(label.ravel(), amap.ravel()))
    assert compute_voxel_ap(amap, label).value == pytest.approx(average_precision_score(label.ravel(), amap.ravel()))
    res = compute_voxel_auroc(amap, label, mask=body)
    assert res.value == pytest.approx(roc_auc_score(label[body], amap[body]), abs=1e-12)
    assert res.value != pytest.approx(compute_voxel_auroc(amap, label).value, abs=1e-9)
    assert compute_voxel_ap(amap, label, mask=body).value == pytest.approx(
        average_precision_score(label[body], amap[body]), abs=1e-12
    )
    # a list of cases is pooled
    amap2, label2, body2 = _volume(rng, (6, 8, 7))
    pooled_s = np.concatenate([amap[body], amap2[body2]])
    pooled_y = np.concatenate([label[body], label2[body2]])
    res = compute_voxel_auroc([amap, amap2], [label, label2], mask=[body, body2])
    assert res.value == pytest.approx(roc_auc_score(pooled_y, pooled_s))


def test_voxel_undefined_and_shape_errors():
    amap = np.random.default_rng(1).random((4, 4, 4))
    empty = np.zeros((4, 4, 4))
    for res in (compute_voxel_auroc(amap, empty), compute_voxel_ap(amap, empty), compute_best_dice(amap, empty)):
        assert res.value is None and res.reason
    assert compute_dice_at_threshold(amap, empty, 0.5).value is None
    assert compute_aupro(amap, empty).value is None
    with pytest.raises(ValueError):
        compute_voxel_auroc(amap, np.zeros((4, 4, 3)))


def test_dice_by_hand():
    amap = np.array([[0.9, 0.8, 0.2], [0.7, 0.1, 0.3]])
    label = np.array([[1, 1, 0], [0, 0, 1]])
    # threshold 0.75 -> pred {0.9, 0.8}: TP=2, |pred|=2, |gt|=3 -> 4/5
    assert compute_dice_at_threshold(amap, label, 0.75).value == pytest.approx(0.8)
    # threshold 0.25 -> pred {.9,.8,.7,.3}: TP=3 -> 6/7
    assert compute_dice_at_threshold(amap, label, 0.25).value == pytest.approx(6 / 7)
    best = compute_best_dice(amap, label)
    assert best.value == pytest.approx(6 / 7) and best.threshold == pytest.approx(0.3)
    # region mask removes the 0.7 false positive: TP=3, |pred|=3 -> 1
    region = np.array([[1, 1, 1], [0, 1, 1]], dtype=bool)
    assert compute_dice_at_threshold(amap, label, 0.25, mask=region).value == pytest.approx(1.0)


def test_aupro_perfect_vs_random(rng):
    label = np.zeros((16, 16, 8), dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 1  # small lesion
    label[8:14, 8:14, 2:7] = 1  # large lesion
    perfect = label.astype(np.float32)
    assert compute_aupro(perfect, label).value == pytest.approx(1.0)
    noisy = rng.random(label.shape)
    assert compute_aupro(noisy, label).value < 0.5
    # a map detecting only the large lesion: PRO = 0.5 at FPR 0, then rises linearly from 0.5 to 1 over FPR [0, 1]
    partial = np.where(label[..., :] & (np.arange(16)[:, None, None] >= 8), 1.0, 0.0)
    expected = (0.5 * 0.3 + 0.5 * 0.3 * 0.3 / 2) / 0.3  # rect + triangle under PRO(FPR) = 0.5 + 0.5 FPR
    assert compute_aupro(partial, label).value == pytest.approx(expected, rel=1e-3)


def test_aupro_hand_made_2d():
    # two 1-voxel lesions and 3 normal voxels: scores order lesionA > normal > lesionB > normals
    amap = np.array([[0.9, 0.0, 0.8, 0.0, 0.5]])
    label = np.array([[1, 0, 0, 0, 1]])
    # curve: (0,0) -> (0, .5) -> (1/3, .5) -> (1/3, 1) ...; up to 0.3 area = 0.5*0.3 -> normalised 0.5
    assert compute_aupro(amap, label, max_fpr=0.3).value == pytest.approx(0.5)


def test_lesion_detection_rate_one_of_two_hit():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[1:3, 1:3, 1:3] = 1  # 8 voxels
    label[6:9, 6:9, 6:9] = 1  # 27 voxels
    pred = np.zeros_like(label)
    pred[1, 1, 1] = 1  # hits lesion 1 with 1 voxel
    pred[5, 0, 9] = 1  # a false positive component
    res = compute_lesion_detection_rate(pred, label, spacing=(2.0, 2.0, 2.0))
    assert res.value == pytest.approx(0.5) and res.n_lesions == 2 and res.n_detected == 1
    assert res.n_false_positive_components == 1
    rec = {r["n_voxels"]: r for r in res.lesions}
    assert rec[8]["detected"] and not rec[27]["detected"]
    assert rec[8]["overlap_fraction"] == pytest.approx(1 / 8)
    assert rec[27]["volume"] == pytest.approx(27 * 8.0)
    assert rec[27]["equivalent_diameter"] == pytest.approx((6 * 216 / np.pi) ** (1 / 3))
    assert rec[27]["extent"] == pytest.approx(6.0)
    json.dumps(res.lesions)
    # a fraction requirement turns the 1-voxel hit into a miss
    assert compute_lesion_detection_rate(pred, label, min_overlap_fraction=0.5).value == 0.0
    # anomaly map + threshold, region mask excluding lesion 2 -> 1 lesion, detected
    amap = pred.astype(np.float32) * 0.9
    region = np.zeros_like(label, dtype=bool)
    region[:5] = True
    res = compute_lesion_detection_rate(amap, label, mask=region, threshold=0.5)
    assert res.n_lesions == 1 and res.value == 1.0 and res.lesions[0]["max_score"] == pytest.approx(0.9)
    empty = compute_lesion_detection_rate(pred, np.zeros_like(label))
    assert empty.value is None and empty.reason
    with pytest.raises(ValueError):
        compute_lesion_detection_rate(pred, label, min_overlap_fraction=2.0)


def test_compute_all_metrics_json(rng):
    amap, label, body = _volume(rng)
    out = compute_all_metrics(
        sample_scores=[0.1, 0.4, 0.35, 0.8],
        sample_labels=[0, 0, 1, 1],
        sample_threshold=0.3,
        anomaly_maps=[amap],
        lesion_masks=[label],
        region_masks=[body],
        voxel_threshold=1.0,
        include_lesions=True,
    )
    json.loads(json.dumps(out, allow_nan=False))
    assert out["sample_auroc"] == pytest.approx(0.75)
    assert out["voxel_auroc"] == pytest.approx(compute_voxel_auroc(amap, label, body).value)
    assert out["voxel_ap"] == pytest.approx(compute_voxel_ap(amap, label, body).value)
    assert out["best_dice"] == pytest.approx(compute_best_dice(amap, label, body).value)
    assert out["aupro"] == pytest.approx(compute_aupro(amap, label, body).value)
    assert out["dice_at_threshold"] == pytest.approx(compute_dice_at_threshold(amap, label, 1.0, body).value)
    assert out["n_lesions"] == 2 and len(out["lesions"]) == 2
    # undefined metrics are null with a reason
    out = compute_all_metrics(sample_scores=[0.1, 0.2], sample_labels=[0, 0])
    assert out["sample_auroc"] is None and "positive" in out["sample_auroc_reason"]
    assert out["voxel_auroc"] is None and out["voxel_auroc_reason"]
    json.dumps(out, allow_nan=False)


def test_cumulative_metrics_match_functions(rng):
    amap, label, body = _volume(rng)
    amap2, label2, body2 = _volume(rng)
    m_auc, m_ap, m_dice = VoxelAUROCMetric(), VoxelAPMetric(), VoxelBestDiceMetric()
    batch = torch.as_tensor(np.stack([amap, amap2])[:, None])
    lab = torch.as_tensor(np.stack([label, label2])[:, None])
    msk = torch.as_tensor(np.stack([body, body2])[:, None])
    for m in (m_auc, m_ap, m_dice):
        m(batch[:1], lab[:1], mask=msk[:1])  # batch-first
        m([batch[1]], [lab[1]], mask=[msk[1]])  # list of channel-first
    args = ([amap, amap2], [label, label2], [body, body2])
    assert m_auc.aggregate().value == pytest.approx(compute_voxel_auroc(*args).value)
    assert m_ap.aggregate().value == pytest.approx(compute_voxel_ap(*args).value)
    assert m_dice.aggregate().threshold == pytest.approx(compute_best_dice(*args).threshold)
    m_auc.reset()
    assert m_auc.aggregate().value is None

    scores, y = rng.random(30), rng.integers(0, 2, 30)
    s_auc, s_ap, s_f1 = SampleAUROCMetric(), SampleAPMetric(), SampleF1Metric(threshold=0.5)
    for m in (s_auc, s_ap, s_f1):
        m(torch.as_tensor(scores[:10, None]), torch.as_tensor(y[:10, None]))
        m(torch.as_tensor(scores[10:]), torch.as_tensor(y[10:]))
    assert s_auc.aggregate().value == pytest.approx(roc_auc_score(y, scores))
    assert s_ap.aggregate().value == pytest.approx(average_precision_score(y, scores))
    assert s_f1.aggregate().value == pytest.approx(f1_score(y, scores >= 0.5))
    with pytest.raises(ValueError):
        SampleAUROCMetric()(torch.rand(4, 2), torch.ones(4, 2))
